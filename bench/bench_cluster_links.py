"""Benchmark: what a cross-host link costs against a local one, on two fake hosts (emulator.cluster.lab).

    sudo .venv/bin/python bench/bench_cluster_links.py                  # 300 links, 200 pings each way
    sudo .venv/bin/python bench/bench_cluster_links.py --links 1000 --pings 500

Bring-up: ``--links`` node namespaces on each of two fake hosts; then ``--links`` VXLAN ends made on each
host in one batch (:func:`emulator.cluster.vxlan.add_ends`, each directly in its node's namespace), against
``--links`` veth pairs between the same namespaces made the way the emulator makes them (one RTM_NEWLINK
each, both ends in their namespaces). Prints ms per link for each.

Delay: the underlay's added delay is 0 here, so what a ping over a VXLAN link costs beyond one over a
veth is the encapsulation, the underlay's veths and the bridge: min and median RTT over ``--pings`` pings
of each kind, and their difference (what an emulated link's delay would have to absorb besides the
underlay's own delay).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulator import rtnl  # noqa: E402
from emulator.cluster.lab import UNDERLAY_IFINDEX, FakeHosts, LabConfig  # noqa: E402
from emulator.cluster.vxlan import VxlanEnd, add_ends  # noqa: E402


def rtts(lab: FakeHosts, ns: str, addr: str, count: int) -> list[float]:
    r = lab.run(ns, ["ping", "-n", "-c", str(count), "-i", "0.005", addr], timeout_s=120)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", type=int, default=300)
    ap.add_argument("--pings", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    print(f"# {platform.node()} kernel {platform.release()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    n = args.links
    with FakeHosts(f"bench-xl-{os.getpid()}", LabConfig(n_hosts=2, delay_ms=0.0)) as lab:
        t0 = time.perf_counter()
        a = lab.namespaces([f"a{i}" for i in range(n)])
        b = lab.namespaces([f"b{i}" for i in range(n)])
        print(f"namespaces  {2 * n} in {time.perf_counter() - t0:.2f} s")
        # VXLAN: index 2 in each node, VNI i + 1
        t0 = time.perf_counter()
        for h, paths, other in ((0, a, 1), (1, b, 0)):
            host = rtnl.Rtnl(lab.host_path(h))
            try:
                add_ends(host, [(VxlanEnd("x0", 2, i + 1, lab.address(h), lab.address(other), UNDERLAY_IFINDEX), p)
                                for i, p in enumerate(paths)], up=False)
            finally:
                host.close()
        vx_ms = (time.perf_counter() - t0) * 1e3
        print(f"vxlan       {n} links (2 ends each) in {vx_ms:.0f} ms: {vx_ms / n:.2f} ms per link")
        # veth: index 3 in each node, both ends created in their namespaces by one request from the host's socket
        t0 = time.perf_counter()
        host = rtnl.Rtnl(lab.host_path(0))
        try:
            for lo in range(0, n, 256):
                fds = []
                batch = rtnl.Batch()
                for i in range(lo, min(n, lo + 256)):
                    fa, fb = os.open(a[i], os.O_RDONLY), os.open(b[i], os.O_RDONLY)
                    fds += [fa, fb]
                    batch.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                              rtnl.veth_body("v0", 3, fa, "v0", 3, fb), f"veth {i}")
                host.check(batch, "veths")
                for fd in fds:
                    os.close(fd)
        finally:
            host.close()
        ve_ms = (time.perf_counter() - t0) * 1e3
        print(f"veth        {n} links in {ve_ms:.0f} ms: {ve_ms / n:.2f} ms per link")
        # addresses and up on the first pair of each kind, then pings
        for k, p in ((0, a[0]), (1, b[0])):
            r = rtnl.Rtnl(p)
            bt = rtnl.Batch()
            bt.add(rtnl.RTM_NEWADDR, rtnl.NLM_F_CREATE, rtnl.addr_body(2, (10 << 24) + k, 31), "vxlan address")
            bt.add(rtnl.RTM_NEWADDR, rtnl.NLM_F_CREATE, rtnl.addr_body(3, (10 << 24) + 2 + k, 31), "veth address")
            for idx in (2, 3):
                bt.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(idx, True), "up")
            r.check(bt, "addresses")
            r.close()
        rtts(lab, "a0", "10.0.0.1", 5)  # ARP
        rtts(lab, "a0", "10.0.0.3", 5)
        vx_rtt = rtts(lab, "a0", "10.0.0.1", args.pings)
        ve_rtt = rtts(lab, "a0", "10.0.0.3", args.pings)
        for name, v in (("vxlan", vx_rtt), ("veth", ve_rtt)):
            print(f"rtt {name:<7} {len(v)} pings: min {min(v):.3f} ms, median {statistics.median(v):.3f} ms")
        print(f"vxlan - veth: min {min(vx_rtt) - min(ve_rtt):+.3f} ms, "
              f"median {statistics.median(vx_rtt) - statistics.median(ve_rtt):+.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
