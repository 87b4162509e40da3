"""Marking samples valid or not (emulator.validity) on hand-built step records, monitor rows and samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.report import summarise_samples_one
from emulator.shaping.delayd import LATE_BIN_NS, LATE_BINS, LATE_LOW_NS
from emulator.validity import Bounds, Interval, hist_p99_us, invalid_intervals, mark_valid, merged, read_monitor
from topologies.errors import ConfigError
from topologies.scenario import load_scenario


def _monitor(rows):
    cols = ("t_s", "interval_s", "cpu_busy_pct", "cpu_wait_pct", "release_p99_us", "released")
    return {c: np.array([r[i] for r in rows], float) for i, c in enumerate(cols)}


def test_late_steps_invalidate_the_step_and_their_stale_window():
    due = np.array([1.0, 2.0, 3.0, 4.0])
    late = np.array([5.0, 250.0, 1200.0, 100.0])  # 100 ms exactly is within the bound
    got = invalid_intervals(due, late, None, Bounds(step_late_ms=100.0), step_s=1.0)
    # the step until the next is due, or until it was applied if that is later
    assert [(i.start_s, i.end_s, i.reason) for i in got] == [(2.0, 3.0, "step-late"), (3.0, 4.2, "step-late")]
    # at speed 2 a wall second is two timeline seconds: 1 s steps are due every 0.5 s
    got2 = invalid_intervals(due / 2, late, None, Bounds(), step_s=1.0, speed=2.0)
    assert [(i.start_s, i.end_s) for i in got2] == [(2.0, 3.0), (3.0, 5.4)]


def test_monitor_rows_judged_against_their_bounds():
    mon = _monitor([
        (0.5, 0.5, 99.0, 20.0, 300.0, 10),       # busy but nothing waited, released on time: valid
        (1.0, 0.5, 99.0, 80.0, math.nan, 0),     # tasks waited 80 % of it: cpu
        (1.5, 0.5, 40.0, math.nan, 1500.0, 7),   # no PSI figure; p99 1.5 ms > 1 ms: release-late
        (2.0, 0.5, 40.0, 10.0, math.inf, 3),     # beyond the daemon's histogram: release-late
    ])
    got = invalid_intervals(np.array([]), np.array([]), mon, step_s=1.0, bounds=Bounds(release_late_ms=1.0, cpu_wait_pct=50.0))
    assert [(i.start_s, i.end_s, i.reason) for i in got] == [
        (0.5, 1.0, "cpu"), (1.0, 1.5, "release-late"), (1.5, 2.0, "release-late")]
    # cpu_wait_pct = 100 turns the CPU check off, even for a row at 100 %
    mon["cpu_wait_pct"][1] = 100.0
    off = invalid_intervals(np.array([]), np.array([]), mon, step_s=1.0, bounds=Bounds(release_late_ms=5.0, cpu_wait_pct=100.0))
    assert [(i.start_s, i.reason) for i in off] == [(1.5, "release-late")]
    # a bound beyond the daemon's 10 ms histogram cannot judge "beyond 10 ms" (inf): only measured figures
    mon["release_p99_us"][2] = 12_000.0
    far = invalid_intervals(np.array([]), np.array([]), mon, step_s=1.0, bounds=Bounds(release_late_ms=11.0, cpu_wait_pct=100.0))
    assert [(i.start_s, i.reason) for i in far] == [(1.0, "release-late")]


def _brute_valid(t, meas, intervals, speed):
    out = []
    for ti, m in zip(t, meas):
        end = ti + (0.0 if np.isnan(m) else m / 1e3 * speed)
        out.append(not any(iv.start_s <= end and ti <= iv.end_s for iv in intervals))
    return np.array(out)


def test_mark_valid_hand_cases():
    ivs = [Interval(2.0, 2.25, "step-late"), Interval(2.2, 2.6, "cpu"), Interval(5.0, 5.5, "release-late")]
    t = np.array([0.5, 1.95, 1.95, 2.1, 2.7, 4.99, 5.2, 5.6, 7.0])
    meas = np.array([40.0, 40.0, 60.0, 40.0, np.nan, np.nan, np.nan, 40.0, 40.0])
    want = np.array([True, True, False, False, True, True, False, True, True])
    np.testing.assert_array_equal(mark_valid(t, meas, ivs), want)
    np.testing.assert_array_equal(_brute_valid(t, meas, ivs, 1.0), want)  # the test's reading agrees


def test_mark_valid_random_against_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(50):
        starts = rng.uniform(0, 100, 8)
        ivs = [Interval(a, a + rng.uniform(0, 5), "cpu") for a in starts]
        t = rng.uniform(0, 110, 300)
        meas = np.where(rng.random(300) < 0.1, np.nan, rng.uniform(1, 800, 300))
        speed = float(rng.choice([0.5, 1.0, 3.0]))
        np.testing.assert_array_equal(mark_valid(t, meas, ivs, speed), _brute_valid(t, meas, ivs, speed))
    assert mark_valid(np.array([1.0]), np.array([1.0]), []).all()


def test_merged_union():
    u = merged([Interval(3, 4, "cpu"), Interval(0, 1, "cpu"), Interval(0.5, 2, "step-late"), Interval(4, 5, "cpu")])
    np.testing.assert_array_equal(u, [[0, 2], [3, 5]])


def test_release_p99_from_histogram_difference():
    def bin_of(us):
        return int((us * 1000 + LATE_LOW_NS) // LATE_BIN_NS)

    before = [0] * (LATE_BINS + 1)
    before[bin_of(2000)] = 1000  # an earlier interval's late packets must not count in this one
    after = list(before)
    after[bin_of(100)] += 990
    after[bin_of(3000)] += 10  # 1 % at 3 ms: the p99 is the last bin below it
    p99, n = hist_p99_us(before, after)
    assert n == 1000 and abs(p99 - 102.5) < 1e-9  # 100 us lies in the bin [100, 105) us, centre 102.5
    after[bin_of(3000)] += 20  # now 3 % at 3 ms
    assert abs(hist_p99_us(before, after)[0] - 3002.5) < 1e-9
    after[LATE_BINS] += 500  # beyond 10 ms
    assert hist_p99_us(before, after)[0] == math.inf
    assert math.isnan(hist_p99_us(after, after)[0])
    reset = [0] * (LATE_BINS + 1)
    reset[bin_of(50)] = 10  # read after a reset: fewer in a bin than before, so the new read is the interval
    assert hist_p99_us(after, reset) == (52.5, 10)


def test_summary_statistics_on_valid_samples():
    m = np.array([10.0, 11.0, np.nan, 500.0, 12.0, 900.0])
    p = np.full(6, 10.0)
    ok = np.array([True, True, True, False, True, False])
    s = summarise_samples_one({"metric": "rtt", "measured_ms": m, "predicted_ms": p, "best_ms": p, "valid": ok})
    assert s["sent"] == 6 and s["lost"] == 1 and s["measured_ms"]["max"] == 900.0
    v = s["valid"]
    assert v["samples"] == 4 and v["lost"] == 1 and v["pct"] == pytest.approx(66.67, abs=0.01)
    assert v["measured_ms"]["max"] == 12.0 and v["measured_ms"]["p50"] == 11.0
    assert v["error_ms"]["p50"] == 1.0


def test_read_monitor_cut_line(tmp_path):
    (tmp_path / "monitor.csv").write_text("t_s,interval_s,cpu_busy_pct,cpu_wait_pct,release_p99_us,released\n"
                                          "0.5,0.5,50.0,,inf,3\n1.0,0.5,60")
    mon = read_monitor(tmp_path)
    assert mon is not None and len(mon["t_s"]) == 1
    assert math.isnan(mon["cpu_wait_pct"][0]) and mon["release_p99_us"][0] == math.inf


@pytest.mark.parametrize("key,value", [("valid_step_late_ms", 0), ("valid_release_late_ms", -1.0),
                                       ("valid_cpu_wait_pct", 101), ("valid_step_late_ms", "nan")])
def test_scenario_rejects_bad_bounds(tmp_path, key, value):
    v = value if not isinstance(value, str) else "nan"
    f = tmp_path / "s.toml"
    f.write_text(f'name = "v"\n[emulation]\nspeed = 1.0\n{key} = {v}\n')
    with pytest.raises(ConfigError) as e:
        load_scenario(f)
    msg = str(e.value)
    assert key in msg and "s.toml:4" in msg, msg


def _write_run(folder, t0_unix, offset_s, rows):
    """A results folder's run.json and monitor.csv: ``rows`` of (seconds since the start, wall clock less the
    monotonic one then)."""
    import csv
    import json

    from emulator.validity import MONITOR_COLUMNS

    (folder / "run.json").write_text(json.dumps({"t0_unix": t0_unix, "speed": 1.0, "wall_offset_s": offset_s}))
    with open(folder / "monitor.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MONITOR_COLUMNS)
        for t_s, off in rows:
            w.writerow([f"{t_s:.3f}", "0.500", "20.0", "1.0", "", 0, f"{off:.6f}"])


def test_a_step_of_the_wall_clock_does_not_move_the_samples_onto_other_steps(tmp_path):
    """Samples are stamped by the wall clock and steps played by the monotonic one. The wall clock is set 5.4 s
    forward at 20 s of a run (an NTP step, a VM's clock set again): every sample after it is read against its own
    step, those before it are not moved, and a folder without the record (older, or a
    clustered run's) is read from the start as before."""
    from emulator.report import _rel_steps, load_run

    mono0, off0, jump_at, jump = 5_000.123456, 1_799_995_000.004321, 20.0, 5.4
    t0_unix = mono0 + off0

    def off(t_s):
        return off0 + (jump if t_s > jump_at else 0.0)

    _write_run(tmp_path, t0_unix, off0, [(0.5 * k, off(0.5 * k)) for k in range(1, 81)])
    run = load_run(tmp_path)

    class _Tl:  # what _rel_steps reads of a timeline
        step_s, n_steps = 1.0, 60

    sent = np.array([0.0004, 3.5, 19.2, 19.99995, 25.7, 39.1])  # when each probe was sent, by the run's clock
    stamps = t0_unix + sent + np.where(sent > jump_at + 0.5, jump, 0.0)  # the wall clock's stamps
    t, step = _rel_steps(stamps, run, _Tl)
    assert step.tolist() == [0, 3, 19, 19, 25, 39]
    assert np.abs(t - sent).max() < 1e-5  # 1e-5 s: the float of a wall-clock instant, not the record's rounding
    # without the record: every stamp after the jump lands 5 steps late (how a folder before it is read)
    _, step_old = _rel_steps(stamps, {k: v for k, v in run.items() if k != "wall_clock"}, _Tl)
    assert step_old.tolist() == [0, 3, 19, 19, 31, 44]
    # an older monitor.csv (no wall-clock column) and run.json: no record, read as before
    (tmp_path / "monitor.csv").write_text("t_s,interval_s,cpu_busy_pct,cpu_wait_pct,release_p99_us,released\n"
                                          "0.500,0.500,20.0,1.0,,0\n1.000,0.500,20.0,1.0,,0\n")
    mon = read_monitor(tmp_path)
    assert mon is not None and mon["cpu_busy_pct"].tolist() == [20.0, 20.0] and np.isnan(mon["wall_offset_s"]).all()
    assert load_run(tmp_path)["wall_clock"] is None


def test_the_monitors_record_of_the_wall_clock_moves_no_sample_where_the_clock_was_not_set(tmp_path):
    """The live record, as a run writes it: where no one set the wall clock, reading a stamp through it moves the
    stamp by less than the 0.1 ms the recovery figures are held to (a record rounded to 1 ms on either clock
    moved them by 1 ms)."""
    import json
    import time

    from emulator.clock import wall_offset_s
    from emulator.report import load_run, run_seconds
    from emulator.validity import HostMonitor

    t0 = time.monotonic()
    offset_s = wall_offset_s()
    (tmp_path / "run.json").write_text(json.dumps({"t0_unix": t0 + offset_s, "speed": 1.0,
                                                   "wall_offset_s": offset_s}))
    mon = HostMonitor(tmp_path / "monitor.csv", t0, interval_s=0.05)
    mon.start()
    time.sleep(0.6)
    mon.stop()
    run = load_run(tmp_path)
    assert run["wall_clock"] is not None and len(run["wall_clock"][0]) >= 5
    stamps = np.array([time.time() - 0.6 + 0.01 * k for k in range(60)])
    moved = run_seconds(stamps, run) - (stamps - run["t0_unix"])
    assert np.abs(moved).max() < 1e-4, moved
