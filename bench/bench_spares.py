#!/usr/bin/env python3
"""What a spare pair's trip to its next satellite costs the rest of the host: moved, or remade.

Why: at each 15 s slot boundary of the access example some 400 antennas hand over, and each spare pair
then goes to its antenna's next satellite. Moving its far end (IFLA_NET_NS_FD) waits for an RCU barrier
under the kernel's rtnl lock; every other rtnetlink request of the host (the step's routes) waits with
it. The emulator now deletes the pair and makes it again there (emulator/spares.py), whose deletion waits
for its barrier after the lock is released. This prints, for each way, how long --pairs trips take and
how long a route replace in another namespace takes meanwhile (a probe thread replacing one route every
0.5 ms through the product's rtnetlink socket), and the remaker's throughput by worker threads.

Scratch namespaces (sp-*), removed at the end. Root only.

    sudo .venv/bin/python bench/bench_spares.py --pairs 40 --threads 1,3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator import rtnl  # noqa: E402
from emulator.spares import Remaker, remake_job  # noqa: E402

NS = ("sp-gw", "sp-sat-a", "sp-sat-b", "sp-probe")
PLEN = 31
PROBE_IF = 50  # the probe's interface in sp-probe


def path(ns: str) -> str:
    return f"/run/netns/{ns}"


def ends(i: int) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
    """Pair i's (name, ifindex, address) near and far (10.77.0.0/16, a /31 each)."""
    base = (10 << 24) | (77 << 16) | (2 * i)
    return (f"ant{i}", 1000 + i, base), (f"g{i}", 3000 + i, base + 1)


def make_pairs(n: int, gw: rtnl.Rtnl) -> None:
    fd = os.open(path("sp-sat-a"), os.O_RDONLY)
    try:
        b = rtnl.Batch()
        for i in range(n):
            (n0, i0, _), (n1, i1, _) = ends(i)
            b.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, rtnl.veth_body(n0, i0, None, n1, i1, fd),
                  f"veth {n0}")
        gw.check(b, "create")
    finally:
        os.close(fd)


class Probe:
    """Replaces one route in sp-probe every 0.5 ms and keeps each request's time."""

    def __init__(self) -> None:
        self.rt = rtnl.Rtnl(path("sp-probe"), "sp-probe", private=True)
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        gws = [(10 << 24) | (88 << 16) | 2, (10 << 24) | (88 << 16) | 3]
        k = 0
        while not self.stop.is_set():
            b = rtnl.Batch()
            b.add(rtnl.RTM_NEWROUTE, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
                  rtnl.route_body((10 << 24) | (99 << 16), 16, gws[k % 2], PROBE_IF), "route")
            t = time.perf_counter()
            self.rt.check(b, "probe")
            self.times.append(time.perf_counter() - t)
            k += 1
            time.sleep(0.0005)

    def __enter__(self) -> Probe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.rt.close()

    def line(self) -> str:
        t = np.array(self.times) * 1e3
        return (f"route replace beside: n {len(t)}, p50 {np.percentile(t, 50):.3f} ms, "
                f"p99 {np.percentile(t, 99):.2f} ms, max {t.max():.1f} ms")


def moves(n: int, gw: rtnl.Rtnl, to: str) -> None:
    """Move the far ends of pairs 0..n-1 to ``to``, one request each, from the namespace holding them."""
    src = "sp-sat-a" if to == "sp-sat-b" else "sp-sat-b"
    rt = rtnl.Rtnl(path(src), src, private=True)
    fd = os.open(path(to), os.O_RDONLY)
    try:
        for i in range(n):
            b = rtnl.Batch()
            b.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(ends(i)[1][1], False, ns_fd=fd), "move")
            rt.check(b, "move")
    finally:
        os.close(fd)
        rt.close()


def remakes(n: int, threads: int, to: str) -> None:
    """Remake pairs 0..n-1 with their far ends at ``to`` through the product's Remaker."""
    old = "sp-sat-a" if to == "sp-sat-b" else "sp-sat-b"
    r = Remaker(threads=threads)
    try:
        jobs = [remake_job(i, 0, -1, (0, "sp-gw", path("sp-gw")), (1, old), (2, to, path(to)), ends(i), PLEN,
                           (True, True), (0, 0)) for i in range(n)]
        for j in jobs:
            r.submit(j)
        for j in jobs:
            j.done.wait()
            if j.error is not None:
                raise j.error
    finally:
        r.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--threads", default="1,3", help="remaker worker threads to try, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("root only", file=sys.stderr)
        return 2
    for ns in NS:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", "sp-probe", "link", "add", "name", "pr0", "index", str(PROBE_IF), "type", "veth",
                        "peer", "name", "pr1"], check=True)
        subprocess.run(["ip", "-n", "sp-probe", "addr", "add", "10.88.0.1/24", "dev", "pr0"], check=True)
        for dev in ("pr0", "pr1"):
            subprocess.run(["ip", "-n", "sp-probe", "link", "set", dev, "up"], check=True)
        gw = rtnl.Rtnl(path("sp-gw"), "sp-gw", private=True)
        make_pairs(args.pairs, gw)
        with Probe() as p:
            time.sleep(0.5)
        print(f"nothing beside: {p.line()}")
        trials = [("moves", lambda to: moves(args.pairs, gw, to))]
        for threads in [int(x) for x in args.threads.split(",")]:
            trials.append((f"remakes on {threads} thread(s)", lambda to, k=threads: remakes(args.pairs, k, to)))
        at = "sp-sat-a"
        for rnd in range(args.rounds):
            for label, trip in trials:
                to = "sp-sat-b" if at == "sp-sat-a" else "sp-sat-a"
                with Probe() as p:
                    t = time.perf_counter()
                    trip(to)
                    el = time.perf_counter() - t
                at = to
                each = el / args.pairs * 1e3
                print(f"round {rnd + 1}: {args.pairs} {label} in {el * 1e3:.0f} ms ({each:.1f} ms each); {p.line()}")
        gw.close()
    finally:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
