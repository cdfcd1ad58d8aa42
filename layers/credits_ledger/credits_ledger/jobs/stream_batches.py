"""How the stream functions take a DynamoDB stream batch: record by record, failures reported per record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse


def process_stream_batch(
    event: dict[str, Any], context: Any, handle: Callable[[Any], Any]
) -> PartialItemFailureResponse:
    """Each record of the batch through ``handle``; the answer names the records that failed
    (``ReportBatchItemFailures``), so Lambda retries from the first of them, then sends the rest of the batch
    to the function's OnFailure queue."""
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
    return process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
