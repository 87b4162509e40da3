"""Benchmark: plan starlink-shell1 with the 100 most populous cities as gateways, 600 steps of 1 s.

Prints wall time per phase and peak memory (max RSS of this process) for each run, then medians.
Target on the 2-core development machine: at most 10 s and 2 GB.

    .venv/bin/python bench/bench_plan.py [--runs 3] [--steps 600]
    .venv/bin/python bench/bench_plan.py --scenario examples/starlink-2026.toml [--runs 3]

With ``--scenario`` each run is the whole ``satnetem plan SCENARIO`` command as a user runs it (TLE
parsing, planning and the printed summary: paths, connectivity, what a run needs), timed from outside
with its peak RSS; the target for examples/starlink-2026.toml (10,744 satellites, 100 gateways, 600 steps)
is at most 60 s and 8 GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def one_run(steps: int) -> tuple[float, float, dict]:
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    sc = parse_scenario(f"""
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {steps}
step_s = 1.0
[constellation]
preset = "starlink-shell1"
[ground]
cities = 100
""", "<bench>")
    t = time.perf_counter()
    tl = plan_scenario(sc)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return wall, peak_mb, {"links": tl.n_links, "steps": tl.n_steps, **tl.report.get("timings_s", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--scenario", help="time `satnetem plan SCENARIO` instead (its own duration)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.scenario:
        plan_command(a.scenario, a.runs)
        return
    if a.child:
        wall, peak, info = one_run(a.steps)
        print(f"{wall:.3f} {peak:.1f} " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in info.items()))
        return
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, kernel {platform.release()}")
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    walls, peaks = [], []
    for i in range(a.runs):
        # each run in a fresh process so peak memory is that run's own
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(a.steps)], check=True,
                             capture_output=True, text=True).stdout.split()
        walls.append(float(out[0]))
        peaks.append(float(out[1]))
        print(f"run {i + 1}: plan {float(out[0]):.2f} s, peak RSS {float(out[1]):.0f} MB  ({' '.join(out[2:])})")
    print(f"median over {a.runs} runs: plan {statistics.median(walls):.2f} s (target <= 10 s), "
          f"peak RSS {statistics.median(peaks):.0f} MB (target <= 2048 MB)")


def plan_command(scenario: str, runs: int) -> None:
    """Median wall time and peak RSS of ``satnetem plan SCENARIO`` over ``runs`` runs, each a fresh process."""
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, kernel {platform.release()}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    walls, peaks = [], []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for i in range(runs):
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "emulator.cli", "plan", scenario], cwd=root,
                             stdout=subprocess.PIPE, text=True)
        out = p.stdout.read() if p.stdout else ""
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"bench_plan: satnetem plan {scenario} failed (exit {p.returncode})")
        walls.append(wall)
        peaks.append(usage.ru_maxrss / 1024)
        print(f"run {i + 1}: {wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU, peak RSS "
              f"{usage.ru_maxrss / 1024:.0f} MB")
        if i == 0:
            print("  " + "\n  ".join(line for line in out.splitlines() if "->" in line or "~" in line
                                      or "needs" in line))
    print(f"median over {runs} runs: {statistics.median(walls):.1f} s, peak RSS {statistics.median(peaks):.0f} MB "
          "(target for examples/starlink-2026.toml: <= 60 s, <= 8192 MB)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
