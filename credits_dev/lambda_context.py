"""The one fake Lambda context, used by the local stack, the tests and ``make bench``: what the Lambda Python
runtime passes as ``context`` (the attributes Powertools and the jobs read).

    FakeLambdaContext("ApiFunction")                           # remaining time counts down from timeout_s
    FakeLambdaContext(remaining_ms=[900_000, 900_000, 1_000])   # one value per call (the last repeats)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


def function_arn(function_name: str, region: str = REGION) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"


class FakeLambdaContext:
    """``remaining_ms`` (a constant or a list consumed one value per call, the last repeating) simulates the
    deadline approaching after a number of checks; without it the time left counts down from ``timeout_s``.
    ``calls`` counts the deadline checks."""

    def __init__(
        self,
        function_name: str = "credits-test",
        *,
        memory_limit_in_mb: int = 512,
        timeout_s: float = 900,
        remaining_ms: int | Sequence[int] | None = None,
        request_id: str | None = None,
        arn: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = arn or function_arn(function_name)
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d") + "/[$LATEST]" + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = time.monotonic() + timeout_s
        self._remaining = [remaining_ms] if isinstance(remaining_ms, int) else list(remaining_ms or [])
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:
        self.calls += 1
        if not self._remaining:
            return max(0, int((self._deadline - time.monotonic()) * 1000))
        return self._remaining.pop(0) if len(self._remaining) > 1 else self._remaining[0]
