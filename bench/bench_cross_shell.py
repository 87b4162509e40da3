"""Benchmark: the laser layer of a large multi-shell constellation, phase by phase.

    .venv/bin/python bench/bench_cross_shell.py                 # Starlink Phase I, 5 shells, 4,408 sats
    .venv/bin/python bench/bench_cross_shell.py --steps 60      # a quick run
    options: --steps 600 --step-s 1 --terminals 3 --share 0.25 --min-hold-s 60

Builds the five Starlink Phase I Walker shells (72x22 at 550 km/53.0 deg, 72x22 at 540 km/53.2 deg,
36x20 at 570 km/70 deg, 6x58 and 4x43 at 560 km/97.6 deg), propagates them, and times the +Grid table,
the +Grid link states and the cross-shell links (k-d tree per step, greedy matching), printing the
cross-shell figures the plan prints and the peak resident memory. Target: the cross-shell search a
small part of the 60 s a 10,744-satellite, 600-step plan may take.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topologies.constellation import Shell  # noqa: E402
from topologies.crossshell import cross_shell_links  # noqa: E402
from topologies.isl import IslConfig, isl_states, plus_grid  # noqa: E402
from topologies.propagate import propagate  # noqa: E402
from topologies.walker import walker_constellation  # noqa: E402

PHASE_1 = [
    Shell("s1", "delta", 550.0, 53.0, 72, 22, 39),
    Shell("s2", "delta", 540.0, 53.2, 72, 22, 39),
    Shell("s3", "delta", 570.0, 70.0, 36, 20, 11),
    Shell("s4", "delta", 560.0, 97.6, 6, 58, 1),
    Shell("s5", "delta", 560.0, 97.6, 4, 43, 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--step-s", type=float, default=1.0)
    ap.add_argument("--terminals", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.25)
    ap.add_argument("--min-hold-s", type=float, default=60.0)
    args = ap.parse_args()
    start = datetime(2026, 8, 21, 12, 0, tzinfo=UTC)
    cfg = IslConfig(terminals=args.terminals, cross_shell_share=args.share, min_hold_s=args.min_hold_s)
    t = time.perf_counter()
    const = walker_constellation(PHASE_1, start)
    eph = propagate(const, start, args.step_s, args.steps)
    t_prop = time.perf_counter() - t
    t = time.perf_counter()
    topo = plus_grid(const, cfg)
    t_table = time.perf_counter() - t
    t = time.perf_counter()
    isl_states(topo, eph, cfg)
    t_states = time.perf_counter() - t
    t = time.perf_counter()
    xs = cross_shell_links(topo.spare, const.shell, [s.altitude_km for s in const.shells], eph, cfg)
    t_cross = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{const.n_sats} satellites in {len(PHASE_1)} shells, {args.steps} steps of {args.step_s:g} s, "
          f"{args.terminals} terminals, cross_shell_share {args.share:g}")
    print(f"  +Grid          {topo.n_isl} links, {topo.stats['spare_terminals']} spare terminals "
          f"({topo.stats['cross_shell_reserved']} reserved)")
    s = xs.stats
    print(f"  cross-shell    {xs.n_slots} slots, {s['links']} links, {s['with_partner_mean']:g} with a partner "
          f"per step, median lifetime {s['lifetime_median_s']} s, "
          f"{s['acquisitions_per_terminal_day']} acquisitions per terminal per day, "
          f"acquiring share {s['acquiring_share']}")
    print(f"  seconds        propagate {t_prop:.2f}, +Grid table {t_table:.2f}, +Grid states {t_states:.2f}, "
          f"cross-shell {t_cross:.2f}; peak RSS {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
