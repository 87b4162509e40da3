"""Benchmark: memory and start time of the compute services of many compute nodes (issue 14: <= 5 MB each,
so that every satellite of a 1,584-satellite shell can be one).

    sudo .venv/bin/python bench/bench_compute.py                    # 1,584 nodes
    sudo .venv/bin/python bench/bench_compute.py --count 50 --binary /tmp/computed-dyn

Creates ``--count`` namespaces in a holder (loopback up; each service binds 127.0.0.1 of its namespace, as a
run's binds the node's address), starts :class:`emulator.traffic.compute.ComputeServices` on all of them
(each in its own cgroups, as ``nobody``), sends one request to a few of them from inside their namespaces,
and prints the RSS and PSS per service (from ``/proc/<pid>/smaps_rollup``) and their totals. PSS divides
each shared page among the processes mapping it, so the PSS total is what the services cost together;
RSS counts the shared pages in every process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulator.kernel.holder import Holder  # noqa: E402
from emulator.netns import iproute_in  # noqa: E402
from emulator.traffic.compute import BINARY, ComputeServices, NodeService, memory_kb  # noqa: E402


def _request(ns_path: str) -> float:
    """ms for one GET /compute on the namespace's own service, from a socket made inside it."""
    out: list[float] = []

    def go() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(ns_path, os.O_RDONLY)
        libc.setns(fd, 0x40000000)
        os.close(fd)
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", 8080), timeout=10) as s:
            s.sendall(b"GET /compute?id=1&work_ms=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(4096):
                pass
        out.append((time.perf_counter() - t0) * 1e3)

    t = threading.Thread(target=go)
    t.start()
    t.join()
    return out[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1584)
    p.add_argument("--binary", type=Path, default=BINARY)
    a = p.parse_args()
    run_id = f"bench-compute-{os.getpid()}"
    holder = Holder(run_id)
    names = [f"dc{i}" for i in range(a.count)]
    svc = None
    try:
        holder.start()
        t = time.monotonic()
        holder.create(names)
        for n in names:
            ipr = iproute_in(holder.path(n), n)
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.close()
        print(f"{a.count} namespaces with loopback up in {time.monotonic() - t:.1f} s")
        svc = ComputeServices(run_id, work_ms=1.0, binary=a.binary)
        print(svc.describe())
        t = time.monotonic()
        svc.start([NodeService(n, holder.path(n), "127.0.0.1", cpu_share=0.05, memory_mb=16) for n in names])
        print(f"{a.count} services started in {time.monotonic() - t:.2f} s ({a.binary.name})")
        ms = [_request(holder.path(n)) for n in names[:: max(1, a.count // 5)]]
        print(f"one request each to {len(ms)} nodes: {', '.join(f'{x:.1f}' for x in ms)} ms")
        mem = svc.memory()
        rss = [r for r, _ in mem.values()]
        pss = [p for _, p in mem.values()]
        assert svc.proc is not None
        prss, ppss = memory_kb(svc.proc.pid)
        print(f"per service RSS kB: min {min(rss)}, median {statistics.median(rss):.0f}, max {max(rss)}; "
              f"PSS kB median {statistics.median(pss):.0f}")
        print(f"total of {len(mem)} services: RSS {sum(rss) / 1024:.1f} MB, PSS {sum(pss) / 1024:.1f} MB; "
              f"their parent: RSS {prss} kB, PSS {ppss} kB")
    finally:
        if svc is not None:
            left = svc.stop()
            print(f"stopped; cgroups left: {left or 'none'}")
        holder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
