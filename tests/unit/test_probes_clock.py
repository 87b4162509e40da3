"""Ping output parsing and the playback clock (no root)."""

import time

import numpy as np

from emulator.clock import Playback
from emulator.probes import parse_ping

PING = """PING 10.1.0.3 (10.1.0.3) 56(84) bytes of data.
[1700000000.120000] 64 bytes from 10.1.0.3: icmp_seq=1 ttl=58 time=20.0 ms
[1700000000.330000] 64 bytes from 10.1.0.3: icmp_seq=2 ttl=58 time=30.0 ms
[1700000000.720000] 64 bytes from 10.1.0.3: icmp_seq=4 ttl=58 time=20.5 ms

--- 10.1.0.3 ping statistics ---
5 packets transmitted, 3 received, 40% packet loss, time 801ms
"""


def test_parse_ping_marks_lost_requests_and_send_times():
    s = parse_ping(PING, start_unix_s=1700000000.1, interval_s=0.2)
    assert s.seq.tolist() == [1, 2, 3, 4, 5]
    assert s.lost == 2
    assert np.isnan(s.rtt_ms[2]) and np.isnan(s.rtt_ms[4])
    assert s.rtt_ms[1] == 30.0
    assert abs(s.sent_unix_s[0] - 1700000000.100) < 1e-6  # reply time minus RTT
    assert abs(s.sent_unix_s[2] - (1700000000.1 + 2 * 0.2)) < 1e-6  # lost: from the schedule


def test_playback_applies_every_step_on_time_and_records_lateness():
    """Each step's lateness as the test measures it (when ``apply`` returned, against t0 + k x step) bounds
    the clock's record from below; the record may exceed it only by the clock's own bookkeeping. Steps 2
    and 5 take 30 ms to apply, so a record taken when the step began (not when it was applied) shows."""
    applied = []
    work_s = {2: 0.03, 5: 0.03}

    def apply(k):
        t = time.monotonic()
        time.sleep(work_s.get(k, 0.0))
        applied.append((k, t, time.monotonic()))
        return {}

    step_s = 0.05
    pb = Playback(step_s=step_s, first=0, last=6, apply=apply)
    t0 = time.monotonic()
    pb.run(t0)
    assert [k for k, _, _ in applied] == [1, 2, 3, 4, 5, 6]
    mine_ms = []
    for k, begin, end in applied:
        assert begin >= t0 + k * step_s - 1e-3  # never early
        mine_ms.append((end - (t0 + k * step_s)) * 1e3)
    rec = {r.step: r.late_ms for r in pb.records}
    for (k, _, _), mine in zip(applied, mine_ms):
        assert mine <= rec[k] <= mine + 5.0, (k, mine, rec[k])
    assert min(rec[2], rec[5]) >= 30.0 - 1.0  # the sleep itself (monotonic sleep never returns early)
    s = pb.lateness_summary()
    assert s["steps"] == 6
    assert float(np.median(mine_ms)) <= s["late_ms_median"] <= float(np.median(mine_ms)) + 5.0
    assert max(mine_ms) <= s["late_ms_max"] <= max(mine_ms) + 5.0


def test_playback_speed_and_stop():
    pb = Playback(step_s=1.0, first=0, last=1000, apply=lambda k: {}, speed=20.0)
    pb.on_step = lambda rec: pb.stop() if rec.step == 3 else None
    t = time.monotonic()
    pb.run()
    assert [r.step for r in pb.records] == [1, 2, 3]
    assert time.monotonic() - t < 1.0  # 3 steps of 1 s at speed 20 = 0.15 s


def test_playback_prepares_ahead_between_steps_off_the_clock():
    calls = []

    def ahead(k, until):
        calls.append((k, until, time.monotonic()))
        time.sleep(0.02)  # work between steps: must not make the next step late

    pb = Playback(step_s=0.1, first=0, last=4, apply=lambda k: {}, ahead=ahead)
    t0 = time.monotonic()
    pb.run(t0)
    assert [k for k, _, _ in calls] == [0, 1, 2, 3]  # before the first step, after each but the last
    for k, until, at in calls:
        assert abs(until - (t0 + (k + 1) * 0.1)) < 1e-6 and at < until  # the next step's due time
    assert all(r.ahead_ms >= 19 for r in pb.records[:-1]) and pb.records[-1].ahead_ms == 0


def test_playback_without_records_holds_nothing_per_step_and_summarises_every_step():
    """A long run (``keep_records=False``, as ``satnetem run`` plays): the memory the clock holds does not
    grow with the steps played (kept, each record with its statistics is ~0.8 kB: 3.2 MB over the 4,000
    steps measured here), and the lateness summary still covers every step, as computed from the records
    the run's ``on_step`` saw."""
    import tracemalloc

    from emulator.network import StepStats

    n = 5000
    late, app = np.full(n + 1, np.nan), np.full(n + 1, np.nan)  # what on_step saw; allocated before the run
    traced = {}

    def apply(k):
        s = StepStats(k, links_down=5, param_changes=1, routes_changed=24)
        s.timings_ms.update({"links_up": 1.0, "params": 2.0, "routes": 3.0, "links_down": 4.0, "total": 10.0})
        return s

    def on_step(rec):
        late[rec.step], app[rec.step] = rec.late_ms, rec.apply_ms
        if rec.step in (n // 5, n):
            traced[rec.step] = tracemalloc.get_traced_memory()[0]

    pb = Playback(step_s=1.0, first=0, last=n, apply=apply, speed=1e9, on_step=on_step, keep_records=False)
    tracemalloc.start()
    try:
        pb.run()
    finally:
        tracemalloc.stop()
    growth = traced[n] - traced[n // 5]
    assert pb.records == [] and np.isfinite(late[1:]).all()
    assert growth < 64 * 1024, f"the clock held {growth} B more after {n - n // 5} more steps"
    late, app = late[1:], app[1:]
    s = pb.lateness_summary()
    assert s["steps"] == n
    assert s["late_ms_median"] == np.median(late) and s["late_ms_p95"] == np.percentile(late, 95)
    assert s["late_ms_max"] == late.max() and s["apply_ms_median"] == np.median(app)
    assert s["apply_ms_p95"] == np.percentile(app, 95)


def _policy_of_this_thread() -> int:
    """This thread's scheduling policy as /proc reads it (field 41 of its stat line), not through Playback."""
    import threading

    stat = open(f"/proc/self/task/{threading.get_native_id()}/stat").read()
    return int(stat.rsplit(")", 1)[1].split()[38])


def test_playback_applies_at_the_real_time_priority_it_is_given_and_gives_it_back():
    import os
    import threading

    import pytest

    if os.geteuid() != 0:
        pytest.skip("SCHED_FIFO needs root (CAP_SYS_NICE)")
    seen: list[tuple[int, int]] = []

    def apply(k: int) -> dict:
        seen.append((_policy_of_this_thread(), os.sched_getparam(0).sched_priority))
        return {}

    ahead_seen: list[tuple[int, int, int]] = []
    spawned: list[int] = []

    def ahead(k: int, until: float) -> None:  # the bulk work between steps, and a thread it starts
        ahead_seen.append((k, _policy_of_this_thread(), os.sched_getparam(0).sched_priority))
        t = threading.Thread(target=lambda: spawned.append(_policy_of_this_thread()))
        t.start()
        t.join()

    before = _policy_of_this_thread()
    Playback(step_s=0.02, first=0, last=3, apply=apply, rt_priority=5, ahead=ahead).run()
    assert seen == [(os.SCHED_FIFO, 5)] * 3
    assert ahead_seen == [(k, os.SCHED_OTHER, 0) for k in range(3)]
    assert spawned == [os.SCHED_OTHER] * 3
    assert _policy_of_this_thread() == before == os.SCHED_OTHER
    seen.clear()
    Playback(step_s=0.02, first=0, last=2, apply=apply).run()  # 0: as it is
    assert seen == [(os.SCHED_OTHER, 0)] * 2


def test_playback_holds_the_last_step_for_a_step_unless_stopped():
    import threading

    t0 = time.monotonic()
    Playback(step_s=0.1, first=0, last=2, apply=lambda k: {}, hold_last=True).run(t0)
    assert time.monotonic() - t0 >= 0.3  # steps 0, 1 and 2 each last 0.1 s
    pb = Playback(step_s=5.0, first=0, last=1, apply=lambda k: {}, speed=2.5, hold_last=True)
    threading.Timer(2.5, pb.stop).start()  # in the last step's hold: step 1 is applied at 2 s and lasts to 4 s
    t0 = time.monotonic()
    pb.run(t0)
    took = time.monotonic() - t0
    assert 2.0 <= took < 3.8, took


class _SteppedClock:
    """A wall clock that is set ``by_s`` at ``at`` (``time.monotonic()``), as NTP setting it does."""

    def __init__(self, at: float, by_s: float) -> None:
        self.at, self.by_s = at, by_s

    def __call__(self) -> float:
        now = time.monotonic()
        return 1_800_000_000.0 + now + (self.by_s if now >= self.at else 0.0)


def test_playback_by_a_wall_clock_follows_a_step_of_it_back_and_forth():
    """A cluster's hosts play by the wall clock (each applies step k at start + k x step by its own): when it is
    set back 0.3 s, the steps after wait those 0.3 s more by the monotonic clock and none is applied before its
    due time by the wall clock; set forward 0.5 s, the steps it skipped are applied at once, within a wait
    slice, not 0.5 s later as a start turned into the monotonic clock once would have them."""
    from emulator.clock import WAIT_SLICE_S

    step_s = 0.1
    for by_s in (-0.3, 0.5):
        applied: list[tuple[int, float, float]] = []
        t0_mono = time.monotonic()
        clock = _SteppedClock(t0_mono + 0.35, by_s)  # between steps 3 and 4

        def apply(k: int, clock=clock, applied=applied) -> dict:
            applied.append((k, time.monotonic(), clock()))
            return {}

        t0 = clock()
        Playback(step_s=step_s, first=0, last=10, apply=apply, clock=clock).run(t0)
        assert [k for k, _, _ in applied] == list(range(1, 11))
        for k, _, wall in applied:
            assert wall >= t0 + k * step_s - 1e-6, (by_s, k)  # never early by the wall clock
        mono = {k: m - t0_mono for k, m, _ in applied}
        if by_s < 0:
            assert mono[3] < 0.35 and all(mono[k] >= k * step_s - by_s - 1e-3 for k in range(4, 11)), mono
        else:
            # steps 4 to 8 were due by the wall clock at or before 0.35 s + 0.5 s: applied at 0.35 s, not 0.4-0.8 s
            assert all(mono[k] <= 0.35 + WAIT_SLICE_S + 0.05 for k in range(4, 9)), mono
            assert all(mono[k] >= k * step_s - by_s - 1e-3 for k in (9, 10)), mono


def test_playback_by_a_wall_clock_is_stopped_within_a_slice():
    import threading

    from emulator.clock import WAIT_SLICE_S

    pb = Playback(step_s=5.0, first=0, last=3, apply=lambda k: {}, clock=time.time)
    threading.Timer(0.3, pb.stop).start()
    t = time.monotonic()
    pb.run()
    assert time.monotonic() - t < 0.3 + WAIT_SLICE_S, time.monotonic() - t


def test_route_sender_thread_runs_at_normal_priority_under_a_real_time_clock():
    # a step's routes go from a thread (emulator.network._Installer) that a SCHED_FIFO clock thread starts:
    # it must not inherit the real-time policy (bulk kernel work there kept the kernel's own workers off the CPUs)
    import os
    import threading

    import pytest

    from emulator.network import _Installer

    if os.geteuid() != 0:
        pytest.skip("SCHED_FIFO needs root (CAP_SYS_NICE)")
    seen: list[int] = []

    class Emu:
        def _install_routes(self, table, held):
            seen.append(_policy_of_this_thread())
            held()
            return 3, 0

    result: list[tuple[int, int]] = []

    def clock_thread() -> None:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
        seen.append(_policy_of_this_thread())
        result.append(_Installer(Emu(), None).join())

    t = threading.Thread(target=clock_thread)
    t.start()
    t.join()
    assert seen == [os.SCHED_FIFO, os.SCHED_OTHER] and result == [(3, 0)]
