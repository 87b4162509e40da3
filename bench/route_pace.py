#!/usr/bin/env python3
"""How late a real-time thread wakes on the CPU of a thread replacing routes, at each pace of the sends.

Why: between steps the emulator sends the next tables' routes ahead (emulator/rtnl.py AHEAD_PACE). Each
route replaced leaves the kernel an RCU callback; above its qhimark (10,000 a CPU) the kernel runs them in
softirq without its usual limit, for up to rcu_resched_ns at a time, and nothing else runs on that CPU
meanwhile: not the delay daemon's real-time shards either. This prints the figures the pace is taken from.

One network namespace with a veth pair; a sender pinned to the first CPU replaces --routes /30 routes over
and over, alternating two gateways, through the product's own sender (rtnl.run_packed_many, slices of 32
routes) at each --paces value (routes a second per sending thread, as AHEAD_PACE; paced sends go from
two threads, here both on that CPU, so `sent/s` is up to twice the pace; 0: unpaced, one thread); beside
it a probe pinned to the same CPU at SCHED_FIFO 11 (above the daemon's 10) sleeps to absolute 1 ms
deadlines and counts how late it wakes (bench/timer_stalls.py's probe). Root only.

    sudo .venv/bin/python bench/route_pace.py --paces 0,400000,200000,100000 --seconds 10
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timer_stalls import PROBE  # noqa: E402

from emulator import rtnl  # noqa: E402


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paces", default="0,400000,200000,100000", help="routes a second, comma-separated (0: unpaced)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per pace")
    ap.add_argument("--routes", type=int, default=4096, help="routes replaced in each round")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("route_pace: needs root (namespaces, SCHED_FIFO)", file=sys.stderr)
        return 2
    try:
        paces = [float(x) for x in a.paces.split(",")]
    except ValueError:
        print(f"route_pace: --paces {a.paces!r}: not a comma-separated list of numbers", file=sys.stderr)
        return 2
    if any(not p >= 0 for p in paces) or not 0 < a.routes <= 65536 or not a.seconds > 0:
        print("route_pace: --paces must be >= 0, --routes in 1..65536, --seconds > 0", file=sys.stderr)
        return 2
    cpu = sorted(os.sched_getaffinity(0))[0]
    ns = f"rtpace-{os.getpid()}"
    print(f"# {os.uname().nodename}, kernel {os.uname().release}; {a.routes} routes a round, {a.seconds:g} s per "
          f"pace; sender and a 1 ms SCHED_FIFO 11 timer both on CPU {cpu}; C sender: {rtnl._c_sender() is not None}")
    print(f"{'pace/s':>8} {'sent/s':>8} {'wakes':>6} {'>0.5ms':>7} {'>1ms':>6} {'p99.9 ms':>8} {'max ms':>7}")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    h = None
    try:
        for cmd in (["link", "add", "a0", "type", "veth", "peer", "name", "b0"],
                    ["addr", "add", "10.0.0.1/24", "dev", "a0"], ["link", "set", "a0", "up"],
                    ["link", "set", "b0", "up"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        ifindex = int(subprocess.run(["ip", "-n", ns, "-o", "link", "show", "a0"], capture_output=True, text=True,
                                     check=True).stdout.split(":")[0])
        n = a.routes
        dst = np.array([ip("11.0.0.0") + 4 * k for k in range(n)])
        msgs = [rtnl.route_msgs(dst, np.full(n, 30), np.full(n, ip(g)), np.full(n, ifindex),
                                 np.full(n, ip("10.0.0.1")))
                for g in ("10.0.0.2", "10.0.0.3")]
        starts = np.arange(0, n + 32, 32).clip(max=n)
        h = rtnl.Rtnl(f"/run/netns/{ns}", ns)
        os.sched_setaffinity(0, {cpu})
        for pace in paces:
            probe = subprocess.Popen([sys.executable, "-c", PROBE, str(cpu), str(a.seconds), "11"],
                                     stdout=subprocess.PIPE, text=True)
            time.sleep(0.2)
            sent, k = 0, 0
            t0 = time.monotonic()
            while probe.poll() is None:
                fails = rtnl.run_packed_many([h] * (len(starts) - 1), msgs[k % 2].copy(), starts, pace=pace)
                if fails:
                    print(f"route_pace: {len(fails)} routes refused (errno {fails[0][1]})", file=sys.stderr)
                    return 1
                sent, k = sent + n, k + 1
            rate = sent / (time.monotonic() - t0)
            wakes, over05, over1, _p99, p999, mx = probe.communicate()[0].split()
            print(f"{pace:>8.0f} {rate:>8.0f} {wakes:>6} {over05:>7} {over1:>6} {float(p999):>8.2f} {float(mx):>7.2f}",
                  flush=True)
    finally:
        if h is not None:
            h.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
