"""Benchmark: how creating network namespaces in the run's holder grows with their number, with and
without the sysctls the emulator writes in each.

    sudo .venv/bin/python bench/bench_netns.py                   # 3,000 namespaces, each sysctl set
    sudo .venv/bin/python bench/bench_netns.py --count 5000 --sets none,all

For each set of sysctls it creates ``--count`` namespaces through :class:`emulator.kernel.holder.Holder`
(unshare, bind mount, sysctls written from inside, as a run does for routers) in chunks of 500 and prints
the time of each chunk: a cost per namespace that grows with the namespaces already made shows as
growing chunks. The holder is closed between sets and the kernel given ``--settle-s`` to tear the
namespaces down (their cleanup takes the rtnl lock the sysctl writes also want).

Sets: ``none``; ``emulator`` (what a run asks for now, :data:`emulator.network.SYSCTLS`: the holder
writes only the keys a new namespace does not already start with); ``all`` (what runs wrote in each router
before forwarding and IPv6 moved to per-interface netlink: IPv6 off in all and default, ip_forward, the two
rp_filter keys, which the holder skips where new namespaces already have them at 0); ``forward``
(net/ipv4/ip_forward only); ``ipv6`` (net/ipv6/conf/all/disable_ipv6 only); ``icmp``
(net/ipv4/icmp_ratelimit only, what a run writes in each router: :data:`emulator.network.ROUTER_SYSCTLS`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulator.kernel.holder import Holder  # noqa: E402
from emulator.network import SYSCTLS  # noqa: E402

SETS = {
    "none": {},
    "emulator": SYSCTLS,
    "all": {**SYSCTLS, "net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1",
            "net/ipv4/ip_forward": "1"},
    "forward": {"net/ipv4/ip_forward": "1"},
    "ipv6": {"net/ipv6/conf/all/disable_ipv6": "1"},
    "icmp": {"net/ipv4/icmp_ratelimit": "0"},
}
CHUNK = 500


def run_set(name: str, count: int) -> list[float]:
    """Create ``count`` namespaces with sysctl set ``name``; seconds per chunk of :data:`CHUNK`."""
    holder = Holder(f"bnns{os.getpid()}")
    holder.start()
    chunks = []
    try:
        for first in range(0, count, CHUNK):
            names = [f"n{i}" for i in range(first, min(count, first + CHUNK))]
            t0 = time.perf_counter()
            holder.create(names, [SETS[name]], [0] * len(names))
            chunks.append(time.perf_counter() - t0)
    finally:
        holder.close(timeout_s=300)
    return chunks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--sets", default="none,emulator,all", help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--settle-s", type=float, default=30.0)
    args = ap.parse_args()
    sets = args.sets.split(",")
    bad = [s for s in sets if s not in SETS]
    if bad or args.count < 1:
        print(f"bench_netns: unknown set {bad[0]!r}" if bad else "bench_netns: --count must be >= 1",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench_netns: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}")
    print(f"command: python bench/bench_netns.py --count {args.count} --sets {args.sets}")
    for k, name in enumerate(sets):
        if k:
            time.sleep(args.settle_s)
        chunks = run_set(name, args.count)
        print(f"{name:>8}: {args.count} namespaces in {sum(chunks):.1f} s; per {CHUNK}: "
              + " ".join(f"{c:.1f}" for c in chunks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
