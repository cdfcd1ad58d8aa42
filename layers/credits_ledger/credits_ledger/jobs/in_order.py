"""Stream batches handled in order: once a record fails, every later record of the batch is left for the
retry (partial batch response), so a retry starts at the first failure and each account keeps its order.
The ledger stream and the billing sync consume the same stream this way."""

from __future__ import annotations

from typing import Any

from credits_ledger.domain.errors import CreditsError


class SkippedAfterEarlierFailure(CreditsError):
    """Not processed: an earlier record of the batch failed and the retry starts there."""


class InOrderBatch:
    """Subclasses implement ``_handle``; Powertools' BatchProcessor calls ``handle`` once per record, in order."""

    _failed = False

    def handle(self, record: Any) -> None:
        if self._failed:
            raise SkippedAfterEarlierFailure(f"record {record.event_id} left for the retry")
        try:
            self._handle(record)
        except Exception:
            self._failed = True
            raise

    def _handle(self, record: Any) -> None:
        raise NotImplementedError
