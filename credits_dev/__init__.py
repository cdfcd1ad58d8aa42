"""Developer and operator tooling of the credits ledger: the local stack (``python -m credits_dev.local``,
``make dev``) and the ``credits`` command-line client. Not part of the Lambda layer."""
