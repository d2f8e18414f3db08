"""Deadlines for onnxruntime runs: one watchdog thread cancels whatever runs past its time.

onnxruntime checks ``RunOptions.terminate`` between kernels (and inside Loop and Scan bodies), so a run
can be cancelled from another thread. Each run in flight has its own ``RunOptions`` (reused once the run
has ended uncancelled); the watchdog wakes a few
times a second while runs are in flight, sets ``terminate`` on the late ones, and sleeps while there are
none. The same mechanism cancels every run at shutdown, so no thread is left inside onnxruntime when the
interpreter finalises (which aborts the process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import onnxruntime as ort

# How often the watchdog looks at the runs in flight: the precision of a deadline.
TICK_SECONDS: Final = 0.05
# How many ticks without a run the watchdog keeps ticking before it sleeps until the next run: waking a
# sleeping thread costs a context switch, which on one CPU is several times a small model's run, so a
# steady stream of requests must find the watchdog ticking, not asleep.
IDLE_TICKS: Final = 20
# The reason a ticket carries when its own deadline stopped it.
DEADLINE: Final = "deadline"


class CountsRuns(Protocol):
    """Whatever keeps a count of its runs in flight (a loaded model): the watchdog keeps it under its
    own lock, so a run takes one lock on the way in and one on the way out."""

    runs_in_flight: int


@dataclass(slots=True, eq=False)
class RunTicket:
    """One run's cancellation handle. ``reason`` says why it was cancelled, None while it was not."""

    options: ort.RunOptions
    deadline: float
    reason: str | None = field(default=None)
    counter: CountsRuns | None = field(default=None)


# Spare tickets kept for reuse, each with its RunOptions: creating both costs about a microsecond and a
# half, a tiny model's run about ten.
_SPARE_TICKETS: Final = 64


class _Run:
    """``RunWatchdog.run``'s context manager: a class, as a generator-based one costs a few microseconds
    more per run."""

    __slots__ = ("_seconds", "_ticket", "_watchdog")

    def __init__(self, watchdog: RunWatchdog, seconds: float) -> None:
        self._watchdog = watchdog
        self._seconds = seconds

    def __enter__(self) -> RunTicket:
        self._ticket = self._watchdog.start(self._seconds)
        return self._ticket

    def __exit__(self, *_exc: object) -> None:
        self._watchdog.finish(self._ticket)


class RunWatchdog:
    """Cancels onnxruntime runs at their deadline. Thread-safe; one per ``InferenceService``.

    The thread is started on the first run and is a daemon: it never keeps a process alive.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._runs: set[RunTicket] = set()
        self._spare: list[RunTicket] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        # True while the watchdog sleeps with no timeout: only then must a new run wake it.
        self._asleep = False

    def run(self, seconds: float) -> _Run:
        """A context manager giving a ticket whose ``options`` are passed to ``session.run``; the run is
        cancelled after ``seconds``."""
        return _Run(self, seconds)

    def start(self, seconds: float, counter: CountsRuns | None = None) -> RunTicket:
        """A run begins: its ticket, cancelled after ``seconds``. Every ``start`` needs its ``finish``
        (in a ``finally``); ``run`` is the context manager that pairs them. ``counter``'s
        ``runs_in_flight`` counts the run until it finishes."""
        deadline = self._clock() + seconds
        with self._lock:
            if self._spare:
                ticket = self._spare.pop()
                ticket.deadline = deadline
            else:
                options = ort.RunOptions()
                # A stopped run is reported by us, once, as a 504 or 503; onnxruntime's own error line
                # would only repeat it in the log.
                options.log_severity_level = 4
                ticket = RunTicket(options, deadline)
            if counter is not None:
                ticket.counter = counter
                counter.runs_in_flight += 1
            if self._closed:
                ticket.reason = "the server is shutting down"
                ticket.options.terminate = True
            self._runs.add(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="modelship-watchdog", daemon=True)
                self._thread.start()
            elif self._asleep:
                self._asleep = False
                self._wake.notify()
        return ticket

    def finish(self, ticket: RunTicket) -> None:
        with self._lock:
            self._runs.discard(ticket)
            counter = ticket.counter
            if counter is not None:
                counter.runs_in_flight -= 1
                ticket.counter = None
            # Only tickets whose options were never told to terminate go back: a cancelled one stays
            # cancelled.
            if ticket.reason is None and len(self._spare) < _SPARE_TICKETS:
                self._spare.append(ticket)

    def cancel_all(self, reason: str = "the server is shutting down") -> int:
        """Cancel every run in flight and every later one; returns how many were in flight."""
        with self._lock:
            self._closed = True
            for ticket in self._runs:
                ticket.reason = ticket.reason or reason
                ticket.options.terminate = True
            return len(self._runs)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._runs)

    def _watch(self) -> None:
        with self._lock:
            idle_ticks = 0
            while True:
                if self._runs:
                    idle_ticks = 0
                elif idle_ticks < IDLE_TICKS:
                    idle_ticks += 1
                else:
                    while not self._runs:
                        self._asleep = True
                        self._wake.wait()
                    self._asleep = False
                    idle_ticks = 0
                now = self._clock()
                for ticket in self._runs:
                    if ticket.reason is None and now >= ticket.deadline:
                        ticket.reason = DEADLINE
                        ticket.options.terminate = True
                self._wake.wait(TICK_SECONDS)
