"""Faults injected into DynamoDB writes: through a boto3 client's event hooks (botocore's ``after-call``,
``needs-retry``), or at a repository's commit (a race lost every time, or the first time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ReadTimeoutError


def read_timeout() -> ReadTimeoutError:
    """What the caller sees when the answer of a call that reached DynamoDB never arrives."""
    return ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com/")


def fail_after_commit(
    client: Any, operation: str, make_error: Callable[[], Exception] = read_timeout
) -> Callable[..., None]:
    """The first successful ``operation`` of ``client`` commits, then its caller gets ``make_error()``
    (once): a write that happened although the caller was told it failed. Returns the hook."""
    raised: list[bool] = []

    def hook(http_response: Any, **_: Any) -> None:
        if not raised and http_response.status_code == 200:
            raised.append(True)
            raise make_error()

    client.meta.events.register(f"after-call.dynamodb.{operation}", hook)
    return hook


def resend_after_commit(client: Any, operation: str) -> list[int]:
    """botocore sends the first successful ``operation`` of ``client`` again (the same request, the same
    ClientRequestToken), as its retry does when an answer is lost. Returns the list that records the attempt
    the re-send followed (``[1]`` once it happened)."""
    forced: list[int] = []

    def resend_once(response: Any, attempts: int, **_: Any) -> float | None:
        if not forced and response is not None and response[0].status_code == 200:
            forced.append(attempts)
            return 0  # "retry after 0 s": the same request goes out again
        return None

    client.meta.events.register_first(f"needs-retry.dynamodb.{operation}", resend_once)
    return forced


def before_first_call(client: Any, operation: str, action: Callable[[], Any]) -> list[Any]:
    """Run ``action`` once, just before the first ``operation`` call through ``client`` (another writer acting
    between a read and the write that depends on it). Returns a list that holds its result once it ran."""
    results: list[Any] = []
    started: list[bool] = []

    def act_once(**_: Any) -> None:
        if not started:  # once, even when the action itself makes the same call
            started.append(True)
            results.append(action())

    client.meta.events.register(f"before-call.dynamodb.{operation}", act_once)
    return results


def first_race_loser(accounts: Any) -> tuple[list[int], Callable[..., None]]:
    """A stand-in for ``accounts.commit`` (an AccountRepository's) whose first call loses its race (another
    writer moved the account's version) and whose later calls commit for real; and a list that holds one
    element once the race was lost. The caller installs it (monkeypatch, or set and delete)."""
    from credits_ledger.dal.accounts import VersionConflict

    real = accounts.commit
    lost: list[int] = []

    def commit(change: Any, **kwargs: Any) -> None:
        if not lost:
            lost.append(1)
            raise VersionConflict(None)
        real(change, **kwargs)

    return lost, commit


def lose_every_race(monkeypatch: Any, accounts: Any) -> list[str]:
    """Every commit through ``accounts`` (an AccountRepository) loses its race: another writer moved the
    account's version. Returns the account of each commit tried, in order."""
    from credits_ledger.dal.accounts import VersionConflict

    tried: list[str] = []

    def lose(change: Any, **_: Any) -> None:
        tried.append(change.state.account_id)
        raise VersionConflict(None)

    monkeypatch.setattr(accounts, "commit", lose)
    return tried
