"""``python -m credits_dev.local``: the whole system on http://127.0.0.1:${PORT:-3000} until Ctrl-C."""

from credits_dev.local.stack import main

raise SystemExit(main())
