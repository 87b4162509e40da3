"""Benchmark: how plan, bring-up, step application, teardown and memory grow with the constellation.

    sudo .venv/bin/python bench/bench_scale.py                       # 1.6k, 4.4k, 7k and 10.7k satellites
    sudo .venv/bin/python bench/bench_scale.py --sizes 1.6k,4.4k --steps 30 --plot scale.png

Each size is a real planned scenario (SGP4 orbits, +Grid and cross-shell lasers, 100 gateways in the 100 most
populous cities, a host behind each), played in real time with the
userspace shaper as ``satnetem run`` plays it, the next step's routes and antenna moves prepared between
steps:

* 1.6k: Starlink's first shell (72 x 22 at 550 km, 53 deg), a Walker preset;
* 4.4k: the five Starlink Phase I shells as Walker shells (1,584 + 1,584 + 720 + 348 + 172);
* 7k: those five plus a 43 deg shell at 485 km (72 x 36), as in the 2026 constellation;
* 10.7k: the real August 2026 TLE set, every satellite a node (``include_transient``).

Printed per size: plan time; bring-up per phase; step application median/p95/max (the time to have a
step's state in the kernel after it is due); between-steps work; teardown; MemAvailable's fall from
before the build to steady state, the kernel's Slab growth and the run's PSS; a London - New York ping.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_emulator import _cpu_model, _mem_total_gb, bench_satnetem, settle  # noqa: E402

PHASE1 = """
[[constellation.shells]]
name = "a"
altitude_km = 550
inclination_deg = 53.0
planes = 72
sats_per_plane = 22
phasing = 17
[[constellation.shells]]
name = "b"
altitude_km = 540
inclination_deg = 53.2
planes = 72
sats_per_plane = 22
phasing = 17
[[constellation.shells]]
name = "c"
altitude_km = 570
inclination_deg = 70.0
planes = 36
sats_per_plane = 20
phasing = 11
[[constellation.shells]]
name = "d"
altitude_km = 560
inclination_deg = 97.6
planes = 6
sats_per_plane = 58
phasing = 1
[[constellation.shells]]
name = "e"
altitude_km = 560
inclination_deg = 97.6
planes = 4
sats_per_plane = 43
phasing = 1
"""

SHELL43 = """
[[constellation.shells]]
name = "f"
altitude_km = 485
inclination_deg = 43.0
planes = 72
sats_per_plane = 36
phasing = 13
"""

GROUND = """
[ground]
cities = 100
"""


SIZES = {
    "1.6k": '[constellation]\npreset = "starlink-shell1"\n',
    "4.4k": PHASE1,
    "7k": PHASE1 + SHELL43,
    "10.7k": f'[constellation]\ntle = "{REPO / "topologies/data/starlink-2026-08-21.tle"}"\n'
             'include_transient = true\n',
}


def scenario_text(size: str, steps: int) -> str:
    return (f'name = "scale-{size.replace(".", "-")}"\nseed = 1\n[time]\nstart = "2026-08-21T12:00:00Z"\n'
            f"duration_s = {steps + 1}\nstep_s = 1.0\n{SIZES[size]}{GROUND}")


def meminfo_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])
    return out


def run_size(size: str, steps: int, shaper: str, route_switch: str = "in-place") -> dict:
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    t0 = time.perf_counter()
    tl = plan_scenario(parse_scenario(scenario_text(size, steps), f"<bench {size}>"))
    plan_s = time.perf_counter() - t0
    print(f"{size:>6s}: planned {len(tl.nodes)} nodes, {tl.n_links} link slots in {plan_s:.1f} s; building",
          flush=True)
    settle()
    before = meminfo_kb()
    peak: dict[str, int] = {}

    def sample() -> None:  # steady state: after the build, while steps play
        m = meminfo_kb()
        if not peak or m["MemAvailable"] < peak["MemAvailable"]:
            peak.update(m)

    r = bench_satnetem(tl, shaper, steps, 1.0, ping_pair=("h-london", "h-new-york-newark"), on_step=sample,
                       route_switch=route_switch)
    r.update(plan_s=plan_s, sats=len(tl.nodes_of("sat")), nodes=len(tl.nodes), links=tl.n_links,
             mem_fall_gb=(before["MemAvailable"] - peak["MemAvailable"]) / 2**20,
             slab_gb=(peak["Slab"] - before["Slab"]) / 2**20)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=60, help="steps played in real time per size")
    p.add_argument("--shaper", default="userspace", choices=("null", "userspace", "netem", "auto"))
    p.add_argument("--plot", help="write the scaling curve to this PNG")
    p.add_argument("--route-switch", default="in-place", choices=("in-place", "epoch"),
                   help="how steps change routes ([emulation] route_switch)")
    args = p.parse_args()
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or args.steps < 2:
        sys.exit(f"bench_scale: unknown size(s) {', '.join(unknown)}; known: {', '.join(SIZES)}" if unknown
                 else "bench_scale: --steps must be >= 2")
    if os.geteuid() != 0:
        sys.exit("bench_scale needs root (it builds network namespaces)")
    import platform

    print(f"machine: {platform.node()} {_cpu_model()}, {os.cpu_count()} cores, {_mem_total_gb():.1f} GB, "
          f"kernel {platform.release()}, python {platform.python_version()}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    rows = []
    for size in sizes:
        r = run_size(size, args.steps, args.shaper, args.route_switch)
        s = np.array(r["steps_ms"])
        rows.append((size, r, s))
        print(f"{size:>6s}: {r['sats']} satellites, {r['nodes']} nodes, {r['links']} link slots; plan "
              f"{r['plan_s']:.1f} s; bring-up {r['bringup_s']:.1f} s "
              f"({', '.join(f'{k} {v / 1e3:.1f}' for k, v in r['build_ms'].items())} s); step apply median "
              f"{np.median(s):.0f} ms, p95 {np.percentile(s, 95):.0f} ms, max {s.max():.0f} ms; between steps "
              f"median {np.median(r['ahead_ms']) if r['ahead_ms'] else 0:.0f} ms; teardown {r['teardown_s']:.1f} s "
              f"(+ kernel {r['kernel_cleanup_s']:.0f} s); MemAvailable fall {r['mem_fall_gb']:.1f} GB, Slab "
              f"+{r['slab_gb']:.1f} GB, PSS {r['pss_mb'] / 1024:.1f} GB; ping London - New York "
              f"{'ok' if r['ping_ok'] else 'FAILED'}")
        print(f"        step phases, median (ms): {', '.join(f'{k} {v:.1f}' for k, v in r['phases_ms'].items())}")
        print(f"        mean per step (links up, down, handovers, antenna moves in the step, param changes, routes "
              f"changed at the step, routes sent ahead): {r['counts']}")
        for t in r["slowest"]:
            print(f"        a slowest step (ms): {', '.join(f'{k} {v:.1f}' for k, v in t.items())}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        n = [r["sats"] for _, r, _ in rows]
        a1.plot(n, [r["bringup_s"] for _, r, _ in rows], "o-", label="bring-up (s)")
        a1.plot(n, [r["teardown_s"] for _, r, _ in rows], "s-", label="teardown (s)")
        a1.plot(n, [r["mem_fall_gb"] for _, r, _ in rows], "^-", label="MemAvailable fall (GB)")
        a1.set_xlabel("satellites")
        a1.legend()
        a2.plot(n, [np.median(s) for _, _, s in rows], "o-", label="step apply median")
        a2.plot(n, [np.percentile(s, 95) for _, _, s in rows], "s-", label="step apply p95")
        a2.axhline(100, color="grey", ls="--", lw=0.8)
        a2.set_xlabel("satellites")
        a2.set_ylabel("ms")
        a2.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
