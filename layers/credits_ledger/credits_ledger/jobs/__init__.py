"""Scheduled and stream-driven jobs (expiry, reminders, ledger events, alerts, reconciliation).

Each job is a plain class over repositories and the event bus, so the Lambda handlers in ``functions/`` stay
a few lines and the jobs run the same in tests, in the benchmark and in ``make dev``.
"""
