"""DynamoDB stream event sources of the template (``Type: DynamoDB`` events), locally: one poller thread per
event source reads the table's stream from the local engine and invokes the function with batches in the
shape Lambda's event source mapping sends (``{"Records": [...]}``).

* Position: like an event source mapping, each poller remembers how far it got, per stream and shard, in
  ``<state dir>/streams.json``, so a restart resumes after the last delivered record (what was written
  while the stack was down is delivered then). A stream it never read starts at the template's
  ``StartingPosition`` (``TRIM_HORIZON`` or ``LATEST``); shards that appear later start at their beginning.
* ``FilterCriteria`` patterns are applied (records that match no filter are dropped, as in AWS).
* A failed batch (the function raised) is retried with a growing pause, at most ``MaximumRetryAttempts``
  times (AWS's default, -1, retries until it works: so does this), then skipped with a log line.
  With ``ReportBatchItemFailures``, processing resumes at the first reported item.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from credits_dev.local.patterns import matches
from credits_dev.local.template import REGION, Function, StreamSource

POLL_SECONDS = 0.5


class BatchFailed(Exception):
    """The function failed the batch; ``first_failed_sequence`` from ``batchItemFailures`` if reported."""

    def __init__(self, message: str, first_failed_sequence: str | None = None) -> None:
        super().__init__(message)
        self.first_failed_sequence = first_failed_sequence


def _streams_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "dynamodbstreams",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        aws_session_token="local",
        config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10),
    )


def _attribute_value(value: Any) -> Any:
    """DynamoDB Local's stream gives an empty map as ``{}`` where AWS gives ``{"M": {}}`` (a type-less value
    that no deserializer accepts: the ledger stream failed on every account item with no live grants)."""
    if not isinstance(value, dict):
        return value
    if not value:
        return {"M": {}}
    if "M" in value and isinstance(value["M"], dict):
        return {"M": {k: _attribute_value(v) for k, v in value["M"].items()}}
    if "L" in value and isinstance(value["L"], list):
        return {"L": [_attribute_value(v) for v in value["L"]]}
    return value


def to_lambda_record(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    ddb = dict(out.get("dynamodb") or {})
    for image in ("Keys", "NewImage", "OldImage"):
        if isinstance(ddb.get(image), dict):
            ddb[image] = {name: _attribute_value(v) for name, v in ddb[image].items()}
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, dt.datetime):
        ddb["ApproximateCreationDateTime"] = int(created.timestamp())
    out["dynamodb"] = ddb
    out.setdefault("awsRegion", REGION)
    out.setdefault("eventSource", "aws:dynamodb")
    return out


class Checkpoints:
    """``{poller label: {stream ARN: {shard id: last delivered sequence number}}}`` in a JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, dict[str, dict[str, str]]] = {}
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.data = {}

    def get(self, label: str, arn: str, shard: str) -> str | None:
        with self.lock:
            return self.data.get(label, {}).get(arn, {}).get(shard)

    def known(self, label: str, arn: str) -> bool:
        with self.lock:
            return arn in self.data.get(label, {})

    def set(self, label: str, arn: str, shard: str, sequence: str | None) -> None:
        with self.lock:
            shards = self.data.setdefault(label, {}).setdefault(arn, {})
            if sequence is not None:
                shards[shard] = sequence
            if self.path is not None:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data, indent=1))
                tmp.replace(self.path)


class StreamPoller:
    def __init__(
        self,
        function: Function,
        source: StreamSource,
        table_name: str,
        endpoint: str,
        ddb_client: Any,
        invoke: Callable[[Function, Any], Any],
        log: Callable[[str], None] = print,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.function = function
        self.source = source
        self.table_name = table_name
        self.endpoint = endpoint
        self.ddb = ddb_client
        self.invoke = invoke
        self.log = log
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.iterators: dict[str, str | None] = {}  # shard id -> iterator (None: closed and drained)
        self.delivered = 0
        self.checkpoints = checkpoints or Checkpoints(None)

    @property
    def label(self) -> str:
        return f"{self.function.logical_id}.{self.source.name}"

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"stream-{self.label}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        try:
            client = _streams_client(self.endpoint)
            arn = self.ddb.describe_table(TableName=self.table_name)["Table"].get("LatestStreamArn")
        except Exception as exc:
            self.log(f"stream {self.label}: cannot read the stream of {self.table_name}: {exc}")
            return
        if not arn:
            self.log(f"stream {self.label}: table {self.table_name} has no stream; not polled")
            return
        start = self.source.starting_position.upper()
        first = (
            "LATEST" if start == "LATEST" and not self.checkpoints.known(self.label, arn) else "TRIM_HORIZON"
        )
        self.checkpoints.set(self.label, arn, "", None)  # from now on this stream is known
        while not self.stopping.is_set():
            try:
                self._discover(client, arn, first)
                first = "TRIM_HORIZON"
                busy = self._poll(client, arn)
            except Exception as exc:  # the engine may be restarting: retry later
                self.log(f"stream {self.label}: {exc.__class__.__name__}: {exc}")
                busy = False
                self.stopping.wait(2)
            if not busy:
                self.stopping.wait(POLL_SECONDS)

    def _discover(self, client: Any, arn: str, position: str) -> None:
        shards: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            kwargs = {"StreamArn": arn, **({"ExclusiveStartShardId": start} if start else {})}
            desc = client.describe_stream(**kwargs)["StreamDescription"]
            shards += desc.get("Shards", [])
            start = desc.get("LastEvaluatedShardId")
            if not start:
                break
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id in self.iterators:
                continue
            closed = "EndingSequenceNumber" in (shard.get("SequenceNumberRange") or {})
            kind = position
            after = self.checkpoints.get(self.label, arn, shard_id)
            if after is not None:
                try:
                    self.iterators[shard_id] = client.get_shard_iterator(
                        StreamArn=arn,
                        ShardId=shard_id,
                        ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                        SequenceNumber=after,
                    )["ShardIterator"]
                    continue
                except Exception as exc:  # trimmed or unknown: from the oldest record kept
                    self.log(f"stream {self.label}: cannot resume shard {shard_id} ({exc}); from its start")
                    kind = "TRIM_HORIZON"
            if closed and kind == "LATEST":
                self.iterators[shard_id] = None  # history from before the start: not replayed
                continue
            self.iterators[shard_id] = client.get_shard_iterator(
                StreamArn=arn, ShardId=shard_id, ShardIteratorType=kind
            )["ShardIterator"]

    def _poll(self, client: Any, arn: str) -> bool:
        busy = False
        for shard_id, iterator in list(self.iterators.items()):
            if iterator is None or self.stopping.is_set():
                continue
            answer = client.get_records(ShardIterator=iterator, Limit=self.source.batch_size)
            records = [to_lambda_record(r) for r in answer.get("Records", [])]
            for record in records:
                record["eventSourceARN"] = arn
            if records:
                busy = True
                if not self._deliver(records):
                    return busy  # stopping: this batch was not delivered, keep the position
                self.checkpoints.set(self.label, arn, shard_id, records[-1]["dynamodb"].get("SequenceNumber"))
            self.iterators[shard_id] = answer.get("NextShardIterator")
        return busy

    def _deliver(self, records: list[dict[str, Any]]) -> bool:
        """True when the batch is done with (delivered, filtered out, or skipped after its retries)."""
        if self.source.filters:
            records = [r for r in records if any(matches(p, r) for p in self.source.filters)]
        attempt = 0
        while records:
            if self.stopping.is_set():
                return False
            try:
                self.invoke(self.function, {"Records": records})
                self.delivered += len(records)
                return True
            except BatchFailed as failed:
                if failed.first_failed_sequence is not None and self.source.report_batch_item_failures:
                    cut = next(
                        (
                            i
                            for i, r in enumerate(records)
                            if r["dynamodb"].get("SequenceNumber") == failed.first_failed_sequence
                        ),
                        0,
                    )
                    records = records[cut:]
                attempt += 1
                limit = self.source.maximum_retry_attempts
                if 0 <= limit < attempt:
                    self.log(f"stream {self.label}: batch of {len(records)} failed {attempt} times: skipped")
                    return True
                pause = min(30.0, 0.5 * 2 ** min(attempt, 6))
                self.log(f"stream {self.label}: batch failed ({failed}); retry {attempt} in {pause:.1f}s")
                self.stopping.wait(pause)
        return True
