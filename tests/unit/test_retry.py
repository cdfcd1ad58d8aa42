"""retry.py: the pause after a lost race, and the invocation's deadline that stops retrying in time."""

from __future__ import annotations

import pytest

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.domain.errors import ConcurrencyConflict
from credits_ledger.retry import (
    ANSWER_MARGIN_SECONDS,
    MAX_PAUSE_SECONDS,
    answering_by,
    ensure_time_for_an_attempt,
    pause_after_conflict,
    time_for,
    wait_after_conflict,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_pause_grows_with_the_attempt_and_is_capped() -> None:
    for attempt in range(60):
        pause = pause_after_conflict(attempt)
        assert 0 <= pause <= min(MAX_PAUSE_SECONDS, 0.002 * 2**attempt)


def test_without_an_invocation_there_is_always_time() -> None:
    assert time_for(10_000)


def test_the_deadline_is_the_contexts_end_less_the_margin_and_ends_with_the_block() -> None:
    clock = Clock()
    with answering_by(FakeLambdaContext(remaining_ms=5_000), monotonic=clock):
        assert time_for(5 - ANSWER_MARGIN_SECONDS)
        assert not time_for(5 - ANSWER_MARGIN_SECONDS + 0.01)
        clock.now += 3
        assert not time_for(5 - ANSWER_MARGIN_SECONDS - 2.9)
    assert time_for(10_000)  # a stale deadline never reaches the next invocation


def test_the_deadline_ends_even_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError), answering_by(FakeLambdaContext(remaining_ms=0)):
        assert not time_for(0.1)
        raise RuntimeError("handler failed")
    assert time_for(10_000)


class Unreadable:
    def get_remaining_time_in_millis(self) -> str:
        return "soon"


@pytest.mark.parametrize("context", [None, object(), Unreadable()])
def test_a_context_without_a_usable_remaining_time_sets_no_deadline(context: object) -> None:
    with answering_by(context):
        assert time_for(10_000)


def test_wait_after_conflict_pauses_only_when_the_pause_and_an_attempt_still_fit() -> None:
    clock, slept = Clock(), []
    with answering_by(FakeLambdaContext(remaining_ms=2_000), monotonic=clock):
        wait_after_conflict("cus_1", 3, slept.append)  # 1 s left: a pause of at most 16 ms and an attempt fit
        assert len(slept) == 1
        clock.now += 0.6  # 0.4 s left: not enough for one more attempt
        with pytest.raises(ConcurrencyConflict, match="4 conflicting writes, no time left"):
            wait_after_conflict("cus_1", 3, slept.append)
        assert len(slept) == 1


def test_no_attempt_starts_that_would_end_after_the_deadline() -> None:
    clock = Clock()
    ensure_time_for_an_attempt("cus_1")  # no invocation: always
    with answering_by(FakeLambdaContext(remaining_ms=2_000), monotonic=clock):
        ensure_time_for_an_attempt("cus_1")
        clock.now += 0.6
        with pytest.raises(ConcurrencyConflict, match="no time left"):
            ensure_time_for_an_attempt("cus_1")


def test_a_context_that_fails_to_say_its_time_sets_no_deadline() -> None:
    class Broken:
        def get_remaining_time_in_millis(self) -> int:
            raise RuntimeError("no runtime API")

    with answering_by(Broken()):
        assert time_for(10_000)
