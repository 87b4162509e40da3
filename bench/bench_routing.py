"""Benchmark: route computation and installation per step, for every centralised routing protocol,
on starlink-shell1 (1,584 satellites) with the 100 most populous cities as gateways (one host each).

    .venv/bin/python bench/bench_routing.py                  # computation only without root
    sudo .venv/bin/python bench/bench_routing.py --steps 30  # plus installation in a live emulation
    options: --steps N  --protocols a,b  --no-install

Computation: ``protocol.compute(timeline, k)`` for steps 1..N of a planned timeline (pure, no root),
wall time per step, median and p95.

Installation (root): one Emulation with a shaper that shapes nothing (as bench_emulator.py's null
shaper: shaping cost is not what is measured here) is built once; each protocol in turn drives
steps 1..N through ``apply_step``. Installation per step = the step's route phase (compute, diff
against what is installed, netlink batches) minus that step's compute time. To share one build,
every protocol's table is given the same width (single-path tables padded with -1 next hops to the
widest protocol's width), and the first step after switching protocol (a wholesale route change)
is not counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.base import PROTOCOLS, RouteTable, RoutingProtocol, get_protocol
from topologies.timeline import Snapshot, Timeline


def plan(steps: int) -> Timeline:
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    sc = parse_scenario(f"""
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {steps + 1}
step_s = 1.0
[constellation]
preset = "starlink-shell1"
[ground]
cities = 100
""", "<bench_routing>")
    return plan_scenario(sc)


def central_protocols() -> list[str]:
    get_protocol("shortest-delay")  # loads the built-ins
    return sorted(n for n, c in PROTOCOLS.items() if getattr(c, "kind", "central") != "daemon")


def stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"median {np.median(a):8.1f} ms   p95 {np.percentile(a, 95):8.1f} ms"


class Timed(RoutingProtocol):
    """Delegates to a protocol that can be switched, records compute times, pads to ``width``."""

    name = "bench-timed"

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.inner: RoutingProtocol | None = None
        self.last_ms = 0.0

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        assert self.inner is not None
        t = time.perf_counter()
        table = self.inner.compute(timeline, step, snapshot)
        self.last_ms = (time.perf_counter() - t) * 1e3
        if table.width == self.width:
            return table
        nh = np.full(table.next_hop.shape + (self.width,), -1, np.int32)
        lk = np.full_like(nh, -1)
        nh[:, :, :table.width] = table.next_hops_wide()
        lk[:, :, :table.width] = table.links_wide()
        return RouteTable(table.step, table.destinations, table.next_hop, table.link, table.dist, nh, lk)


def bench_install(tl: Timeline, names: list[str], steps: int) -> dict[str, tuple[list[float], list[int]]]:
    from emulator.network import Emulation

    class NullShaper:
        name = "null"

        def prepare_node(self, node, ns_path, ipr): pass

        def set(self, items, ipr_of): pass

        def forget(self, port): pass

        def close(self): pass

    protos = {n: get_protocol(n) for n in names}
    width = max(p.compute(tl, 0).width for p in protos.values())
    timed = Timed(width)
    timed.inner = protos[names[0]]
    emu = Emulation(tl, NullShaper(), timed, run_id=f"benchrt-{os.getpid()}")
    out: dict[str, tuple[list[float], list[int]]] = {}
    try:
        t = time.perf_counter()
        emu.build()
        print(f"emulation built in {time.perf_counter() - t:.1f} s "
              f"({', '.join(f'{k} {v:.0f} ms' for k, v in emu.build_timings_ms.items())})")
        for i, n in enumerate(names):
            timed.inner = protos[n]
            install, changed = [], []
            for k in range(0 if i else 1, steps + 1):
                s = emu.apply_step(k)
                if i and k == 0:
                    continue  # the switch from the previous protocol
                # the emulator computes routes while the kernel moves handed-over antennas
                # ("compute_overlapped"); its "routes" phase is then installation alone
                routes_ms = s.timings_ms["routes"]
                install.append(routes_ms if "compute_overlapped" in s.timings_ms else routes_ms - timed.last_ms)
                changed.append(s.routes_changed + s.routes_deleted)
            out[n] = (install, changed)
    finally:
        emu.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--protocols", default=None, help="comma-separated names (default: every centralised one)")
    ap.add_argument("--no-install", action="store_true", help="computation only")
    a = ap.parse_args()
    names = a.protocols.split(",") if a.protocols else central_protocols()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, kernel {platform.release()}, load {os.getloadavg()[0]:.1f}")
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    t = time.perf_counter()
    tl = plan(a.steps)
    n_dest = len(get_protocol("shortest-delay").compute(tl, 0).destinations)
    print(f"timeline: starlink-shell1 + 100 cities, {len(tl.nodes)} nodes, {tl.n_links} links, "
          f"{tl.n_steps} steps (planned in {time.perf_counter() - t:.1f} s), {n_dest} destinations")
    print("\ncomputation per step (pure):")
    for n in names:
        proto = get_protocol(n)
        ms, multi = [], 0
        for k in range(1, a.steps + 1):
            t = time.perf_counter()
            table = proto.compute(tl, k)
            ms.append((time.perf_counter() - t) * 1e3)
            multi = int(((table.links_wide() >= 0).sum(axis=2) > 1).sum())
        print(f"  {n:16s} {stats(ms)}   (last step: {multi} routes with >1 next hop)")
    if a.no_install:
        return
    if os.geteuid() != 0:
        print("\ninstallation: skipped (needs root)")
        return
    print("\ninstallation per step (netlink, live emulation, route installation phase):")
    for n, (ms, changed) in bench_install(tl, names, a.steps).items():
        print(f"  {n:16s} {stats(ms)}   routes changed+deleted per step: median {int(np.median(changed))}, "
              f"max {max(changed)}")


if __name__ == "__main__":
    main()
