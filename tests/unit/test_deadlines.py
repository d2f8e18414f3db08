"""The run watchdog reuses the RunOptions of runs that ended normally, and never those it cancelled."""

from __future__ import annotations

import time

import pytest
from modelship.core.deadlines import DEADLINE, RunWatchdog

pytestmark = pytest.mark.unit


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_options_of_a_finished_run_are_reused_uncancelled() -> None:
    watchdog = RunWatchdog()
    with watchdog.run(5) as first:
        assert watchdog.in_flight() == 1
    assert watchdog.in_flight() == 0
    with watchdog.run(5) as second:
        assert second.options is first.options
        assert second.options.terminate is False and second.reason is None


def test_options_of_a_cancelled_run_are_never_reused() -> None:
    clock = ManualClock()
    watchdog = RunWatchdog(clock)
    with watchdog.run(5) as late:
        clock.now = 10.0
        deadline = time.monotonic() + 10  # the watchdog ticks every 50 ms
        while late.reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert late.reason == DEADLINE and late.options.terminate is True
    with watchdog.run(5) as fresh:
        assert fresh.options is not late.options
        assert fresh.options.terminate is False and fresh.reason is None


def test_runs_after_cancel_all_start_cancelled_and_their_options_stay_out_of_reuse() -> None:
    watchdog = RunWatchdog()
    with watchdog.run(5) as in_flight:
        assert watchdog.cancel_all("stopping") == 1
        assert in_flight.reason == "stopping" and in_flight.options.terminate is True
    with watchdog.run(5) as later:
        assert later.reason == "the server is shutting down" and later.options.terminate is True
        assert later.options is not in_flight.options
