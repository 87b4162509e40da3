"""Samples taken while a deliberate CPU hog makes steps late are marked invalid, and the samples before it
valid (issue 16).

`satnetem run` plays a 12 s scenario with a ping at 20 per second. Once the flows run, the test pins the
run's main thread (the one that applies the steps; the ping processes are already started and keep every
CPU) to one CPU and runs a busy loop at real-time priority (SCHED_FIFO 1) pinned to that CPU from 4.5 s to
8.5 s after the run's start, timing it itself: on that CPU, ordinary tasks then get only the kernel's
reserve for them (50 ms a second). Busy loops at nice -20 were not enough: the step thread, asleep until
each step, still woke within 10 ms of the first step due under them. Steps due in that window cannot be applied before the hog ends, so every
sample sent from the first step due after the hog's start until the hog's end must be marked invalid,
and the samples back before the hog began valid. Only the step-lateness check is judged here (the CPU-wait and
release checks are set off): the machine is shared, and other work on it may legitimately make the CPU
check fail before the hog; those checks are tested on hand-built records in tests/unit/test_validity.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]

SCENARIO = """
name = "validity-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 12
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 12
sats_per_plane = 12
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[traffic]]
kind = "ping"
src = "h-london"
dst = "h-new-york"
rate_pps = 20
[emulation]
valid_step_late_ms = 100
valid_release_late_ms = 10000
valid_cpu_wait_pct = 100
"""
HOG_FROM_S, HOG_TO_S = 4.5, 8.5  # mid-step: the first late step is due 0.5 s in
#: a busy loop that ends itself (a real-time loop left behind would starve its CPU)
HOG = f"import time\nend = time.monotonic() + {HOG_TO_S - HOG_FROM_S + 2}\nwhile time.monotonic() < end:\n    pass\n"


def _pin_realtime(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


def _wait_for(path: Path, timeout_s: float, proc: subprocess.Popen[str], min_lines: int = 0) -> None:
    """Until ``path`` has something and at least ``min_lines`` newlines (the run still going)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        if path.is_file() and (text := path.read_text()) and text.count("\n") >= min_lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} not written within {timeout_s} s (run exit status {proc.poll()})")


def test_samples_during_a_cpu_hog_are_invalid(tmp_path):
    scenario = tmp_path / "validity.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "results"
    cpu = max(os.sched_getaffinity(0))
    run = subprocess.Popen([sys.executable, "-m", "emulator.cli", "run", str(scenario), "-o", str(out)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hogs: list[subprocess.Popen[bytes]] = []
    hog_start = hog_end = math.nan
    try:
        _wait_for(out / "run.json", 240, run)
        t0_unix = json.loads((out / "run.json").read_text())["t0_unix"]
        _wait_for(out / "steps.csv", 20, run, min_lines=3)  # two steps applied: the flows started before step 1
        os.sched_setaffinity(run.pid, {cpu})  # the main thread only (its tid is the pid): it plays the steps
        time.sleep(max(0.0, t0_unix + HOG_FROM_S - time.time()))
        hog_start = time.time()
        hogs = [subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=lambda: _pin_realtime(cpu))]
        time.sleep(max(0.0, t0_unix + HOG_TO_S - time.time()))
    finally:
        for h in hogs:
            h.kill()
        for h in hogs:
            h.wait()
        hog_end = time.time()
        try:
            stdout, _ = run.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            run.kill()
            stdout, _ = run.communicate()
    assert run.returncode == 0, stdout[-3000:]
    assert "valid samples:" in stdout, stdout[-3000:]
    with open(out / "samples.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "ping"]
    # the test's own times, on the run's clock (timeline seconds at speed 1)
    start_s, end_s = hog_start - t0_unix, hog_end - t0_unix
    first_due_s = math.ceil(start_s)  # the first step due after the hog began (1 s steps)
    # before: back (or lost) before the hog began; a sample is taken over its whole time in flight
    before = [r for r in rows if float(r["t_s"]) + float(r["measured_ms"] or 0) / 1e3 < start_s]
    during = [r for r in rows if first_due_s <= float(r["t_s"]) <= end_s - 0.05]
    assert len(before) >= 40 and len(during) >= 20, (len(before), len(during), start_s, end_s)
    # before the hog, a step may still be late beyond the bound from other work on this shared machine (seen:
    # step 4 woke 110 ms late at load 40, and the samples then read 330 ms for 67): those samples, and only
    # those, may be invalid; the clock's own record (steps.csv) says which steps were late
    with open(out / "steps.csv", newline="") as f:
        # a late step: from its due time to the next step's, or to when it was applied if later
        late = [(float(r["due_s"]), float(r["due_s"]) + max(1.0, float(r["late_ms"]) / 1e3))
                for r in csv.DictReader(f) if float(r["late_ms"]) > 100]

    def in_late_step(r: dict[str, str]) -> bool:
        t = float(r["t_s"])
        return any(a <= t + float(r["measured_ms"] or 0) / 1e3 and t <= b for a, b in late)

    wrong = [(r["t_s"], r["measured_ms"], r["valid"]) for r in before if (r["valid"] == "1") == in_late_step(r)]
    assert not wrong, f"samples before the hog (from {start_s:.2f} s) marked wrongly: {wrong[:10]}; late {late}"
    assert sum(r["valid"] == "1" for r in before) >= len(before) / 2, "most samples before the hog are valid"
    good_during = [(r["t_s"], r["measured_ms"]) for r in during if r["valid"] != "0"]
    assert not good_during, (f"samples during the hog ({first_due_s} to {end_s:.2f} s) marked valid: "
                             f"{good_during[:10]}")
    summary = json.loads((out / "summary.json").read_text())
    [flow] = [f for f in summary["flows"] if f["kind"] == "ping"]
    assert flow["valid"]["samples"] == sum(r["valid"] == "1" for r in rows) < flow["sent"]
