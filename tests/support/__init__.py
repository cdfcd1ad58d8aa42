"""The one home of the tests' helpers (what needs pytest, a handler module or a test table). What the CLI,
the local stack and the tools also use lives in the installed ``credits_dev`` package instead.

- ``ledger``: a settable clock, a Ledger on a given client and table, grant specs, books checks
- ``expiry``: the expiry side on moto: captured bus events, stream records from table diffs, Lambda contexts
  whose time runs out
- ``faults``: faults injected into DynamoDB writes (a failure after the commit, a re-send of a committed
  request, a race lost every time)
- ``webhook``: deliver a signed Stripe event to the webhook handler
- ``subscription_events``: Stripe subscription events and invoices in Stripe's shapes
- ``billing``: the overage, top-up and billing-sync tests' pricing file and Stripe paths
- ``bus``: event bus stand-ins that keep or drop what a job publishes
- ``leading_keys``: what a function touches in the table, against its role's ``dynamodb:LeadingKeys``
"""
