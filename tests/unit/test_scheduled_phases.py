"""jobs/scheduled.run_phases: the one loop of the scheduled jobs (expiry, reconcile) over their phases, and
where a continuation resumes it."""

from __future__ import annotations

from collections.abc import Callable

from credits_ledger.jobs.scheduled import Continuation, run_phases

PHASES = ("first", "second", "third")


def recorder(
    stop_in: dict[str, str],
) -> tuple[list[tuple[str, str | None]], Callable[[str, str | None], str | None]]:
    """A phase runner that records its calls and stops in the phases of ``stop_in`` at their cursor."""
    calls: list[tuple[str, str | None]] = []

    def run_phase(phase: str, cursor: str | None) -> str | None:
        calls.append((phase, cursor))
        return stop_in.get(phase)

    return calls, run_phase


def test_a_fresh_run_goes_through_every_phase_and_needs_no_continuation() -> None:
    calls, run_phase = recorder({})
    assert run_phases(PHASES, None, run_phase) is None
    assert calls == [("first", None), ("second", None), ("third", None)]


def test_a_phase_that_stops_gives_the_continuation_of_the_next_invocation() -> None:
    calls, run_phase = recorder({"second": "cursor-7"})
    assert run_phases(PHASES, None, run_phase) == Continuation(phase="second", cursor="cursor-7", hop=2)
    assert calls == [("first", None), ("second", None)]
    # stopped before the phase read anything: resumed from its start (no cursor)
    calls, run_phase = recorder({"first": ""})
    assert run_phases(PHASES, None, run_phase) == Continuation(phase="first", cursor=None, hop=2)


def test_a_continuation_resumes_its_phase_at_its_cursor_and_counts_the_hop() -> None:
    calls, run_phase = recorder({"third": "c2"})
    resume = Continuation(phase="second", cursor="c1", hop=4)
    assert run_phases(PHASES, resume, run_phase) == Continuation(phase="third", cursor="c2", hop=5)
    assert calls == [("second", "c1"), ("third", None)]


def test_a_continuation_naming_no_phase_of_the_run_starts_from_the_first() -> None:
    calls, run_phase = recorder({})
    assert run_phases(PHASES, Continuation(phase="gone", cursor="c", hop=2), run_phase) is None
    assert calls == [("first", None), ("second", None), ("third", None)]
