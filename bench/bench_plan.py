"""Benchmark: plan starlink-shell1 with the 100 most populous cities as gateways, 600 steps of 1 s.

Prints wall time per phase and peak memory (max RSS of this process) for each run, then medians.
Target on the 2-core development machine: at most 10 s and 2 GB.

    .venv/bin/python bench/bench_plan.py [--runs 3] [--steps 600]
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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
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


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
