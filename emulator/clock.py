"""Real-time playback of a timeline: apply each step's diff at its time and record how late it was."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: longest wait, s, before a clock other than the monotonic one is read again (:class:`Playback`)
WAIT_SLICE_S = 0.25


def wall_offset_s(tries: int = 5) -> float:
    """The wall clock less the monotonic one (``time.time() - time.monotonic()``), s: read between two
    monotonic reads, the closest of ``tries`` pairs, each at its midpoint, so that a preemption between the
    reads does not move it (a few us here). Constant while no one sets the wall clock (NTP slews both clocks
    alike): a change in it is a step of the wall clock."""
    best_gap, best = math.inf, 0.0
    for _ in range(tries):
        a = time.monotonic()
        wall = time.time()
        b = time.monotonic()
        if b - a < best_gap:
            best_gap, best = b - a, wall - (a + b) / 2
        if best_gap < 20e-6:
            break
    return best


def _enter_rt(priority: int) -> tuple[int, int] | None:
    """Put the calling thread (Linux: ``sched_setscheduler`` on pid 0 is this thread only) at SCHED_FIFO
    ``priority``; return its policy and priority before, or None (and say why) where it is refused."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        log.warning("the clock plays at normal priority: SCHED_FIFO %d refused (%s)", priority, e.strerror)
        return None
    return before


def normal_priority() -> None:
    """Put the calling thread at normal priority (SCHED_OTHER) if it runs at a real-time one. For bulk kernel
    work started from the clock's thread (a thread inherits its creator's policy): at SCHED_FIFO it kept the
    host's ordinary threads, the kernel's RCU and softirq workers among them, off the CPUs."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as e:
        log.warning("a thread of bulk kernel work stays at a real-time priority: %s", e.strerror)


def _leave_rt(before: tuple[int, int]) -> None:
    try:
        os.sched_setscheduler(0, before[0], os.sched_param(before[1]))
    except OSError as e:  # a thread left at SCHED_FIFO does its teardown there: said, not fatal
        log.warning("the clock's thread stays at SCHED_FIFO: %s", e.strerror)


@dataclass
class StepRecord:
    step: int
    due_s: float  # wall-clock seconds after playback start when the step was due
    late_ms: float  # how much later than due the step was fully applied
    apply_ms: float  # time spent applying it
    ahead_ms: float = 0.0  # time spent preparing later steps after it (off the clock, before the next one)
    #: what ``apply`` returned: read with ``.get(key, default)`` (the emulation's StepStats, or a dict)
    stats: Any = field(default_factory=dict)


@dataclass
class Playback:
    """Plays steps ``first..last`` of a timeline in real time (scaled by ``speed``).

    ``apply(step)`` is called at each step's due time and returns a dict of statistics. After it,
    ``settle(speed)`` (optional) ends what the step began for less than a step (the handover gaps of
    :meth:`emulator.network.Emulation.settle`, scaled by the speed), then ``ahead(step, next_due)``
    (optional) may prepare later steps until ``next_due`` (``time.monotonic()`` of the next step's due
    time); ``ahead`` is called once before the first step too. Stop early with :meth:`stop` (thread-safe):
    the loop returns at once.

    The steps are due by ``clock``: ``time.monotonic`` (one host: a step of the wall clock cannot move them),
    or ``time.time`` (a cluster's hosts, which share only the wall clock: each applies step k at its start +
    k x step by its own). A clock other than the monotonic one is waited for in slices of at most
    :data:`WAIT_SLICE_S`, read again after each, so that a step of it moves the due times with it.
    """

    step_s: float
    first: int
    last: int
    apply: Callable[[int], Any]  # returns statistics with .get (StepStats, a dict) or None
    speed: float = 1.0
    on_step: Callable[[StepRecord], None] | None = None
    ahead: Callable[[int, float], Any] | None = None
    records: list[StepRecord] = field(default_factory=list)
    settle: Callable[[float], Any] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    keep_records: bool = True
    _late_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _apply_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _n: int = 0
    #: 1-99: the thread that calls :meth:`run` plays at SCHED_FIFO with this priority (restored after); 0: as
    #: it is. Below the delay daemon's shards, it preempts only the host's ordinary work
    rt_priority: int = 0
    #: after the last step, :meth:`run` returns only at the end of it (a step later, or when stopped): a run of
    #: n steps lasts n steps; False: at once after the last apply
    hold_last: bool = False
    #: the clock the steps are due by (seconds; ``started_at``, ``run``'s ``t0`` and ``StepRecord`` times are on
    #: it): ``time.monotonic`` or ``time.time``
    clock: Callable[[], float] = time.monotonic
    _rt_before: tuple[int, int] | None = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self, t0: float | None = None) -> list[StepRecord]:
        """Play; ``t0`` (on :attr:`clock`) is the moment step ``first`` counts as applied."""
        before = _enter_rt(self.rt_priority) if self.rt_priority else None
        self._rt_before = before
        try:
            return self._run(t0)
        finally:
            self._rt_before = None
            if before is not None:
                _leave_rt(before)

    def _ahead(self, step: int, until: float) -> None:
        """``ahead`` at the thread's priority before :meth:`run` (normal): its work between steps is bulk
        kernel work (spare moves, routes sent ahead, from threads it starts, which inherit the policy); at
        SCHED_FIFO it kept the host's ordinary threads, the kernel's RCU and softirq workers among them, off a
        CPU for most of each step (README, "The thread that applies the steps")."""
        assert self.ahead is not None
        before = self._rt_before
        if before is not None:
            _leave_rt(before)
        try:
            self.ahead(step, until)
        finally:
            if before is not None and _enter_rt(self.rt_priority) is None:
                self._rt_before = None

    def _wait_until(self, t: float) -> bool:
        """Wait until :attr:`clock` reads ``t``; True when stopped (before or while waiting)."""
        while True:
            left = t - self.clock()
            if left <= 0 or self.clock is time.monotonic:
                return self._stop.wait(max(0.0, left))
            if self._stop.wait(min(left, WAIT_SLICE_S)):
                return True

    def _monotonic(self, t: float) -> float:
        """``t`` on :attr:`clock` as ``time.monotonic()`` (``ahead``'s deadline is on that clock)."""
        return t if self.clock is time.monotonic else time.monotonic() + (t - self.clock())

    def _run(self, t0: float | None) -> list[StepRecord]:
        now = self.clock
        self.started_at = t0 = now() if t0 is None else t0
        wall_step = self.step_s / self.speed
        n = max(0, self.last - self.first)
        if len(self._late_ms) < self._n + n:  # a second run() keeps the first one's steps in the summary
            self._late_ms = np.concatenate([self._late_ms[:self._n], np.zeros(n)])
            self._apply_ms = np.concatenate([self._apply_ms[:self._n], np.zeros(n)])
        if self.ahead is not None and self.last > self.first:
            self._ahead(self.first, self._monotonic(t0 + wall_step))
        for k in range(self.first + 1, self.last + 1):
            due = t0 + (k - self.first) * wall_step
            if self._wait_until(due):
                break
            begin = now()
            stats = self.apply(k) or {}
            end = now()
            if self.settle is not None:
                self.settle(self.speed)
            ahead_ms = 0.0
            if self.ahead is not None and k < self.last and not self._stop.is_set():
                t_ahead = time.monotonic()
                self._ahead(k, self._monotonic(due + wall_step))
                ahead_ms = (time.monotonic() - t_ahead) * 1e3
            rec = StepRecord(step=k, due_s=due - t0, late_ms=(end - due) * 1e3,
                             apply_ms=(end - begin) * 1e3, ahead_ms=ahead_ms, stats=stats)
            self._late_ms[self._n] = rec.late_ms
            self._apply_ms[self._n] = rec.apply_ms
            self._n += 1
            if self.keep_records:
                self.records.append(rec)
            if self.on_step:
                self.on_step(rec)
        if self.hold_last and not self._stop.is_set():  # the last step lasts a step too
            self._wait_until(t0 + (self.last - self.first + 1) * wall_step)
        return self.records

    def lateness_summary(self) -> dict[str, float | int | None]:
        late = self._late_ms[:self._n]
        app = self._apply_ms[:self._n]
        if not len(late):
            return {"steps": 0, "late_ms_median": None, "late_ms_p95": None, "late_ms_max": None,
                    "apply_ms_median": None, "apply_ms_p95": None}
        return {"steps": int(len(late)),
                "late_ms_median": float(np.median(late)), "late_ms_p95": float(np.percentile(late, 95)),
                "late_ms_max": float(late.max()),
                "apply_ms_median": float(np.median(app)), "apply_ms_p95": float(np.percentile(app, 95))}
