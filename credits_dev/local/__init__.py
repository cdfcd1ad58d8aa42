"""The local stack: ``python -m credits_dev.local`` (what ``make dev`` runs). See :mod:`credits_dev.local.stack`."""
