#!/usr/bin/env python3
"""How late a real-time thread's 1 ms timer wakes up, on each CPU, with N idle network namespaces in the kernel.

Why: the delay daemon's shards are such threads. On the development VM (2 vCPUs, firecracker), with some
thousands of namespaces present and nothing else running, one CPU at a time stopped running anything for
milliseconds (no timer interrupt was traced on it meanwhile), so a shard asleep there woke late and released
late; the daemon's standby threads (delayd.c, op "watch"; emulator/shaping/delayd.py WATCH_MIN_NAMESPACES)
answer it. This prints the figures that threshold is taken from.

Namespaces are made with unshare(2) and held by open file descriptors (no mounts, no processes, no
interfaces but lo); one measuring process per CPU, pinned, at SCHED_FIFO 10 (the daemon's priority), sleeps to
absolute 1 ms deadlines for --seconds and counts how late it woke. Sizes are cumulative (the namespaces of one
size stay for the next). Root only.

    sudo .venv/bin/python bench/timer_stalls.py --sizes 0,1500,4000,10000 --seconds 15
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000

PROBE = r"""
import os, sys, time
cpu, seconds = int(sys.argv[1]), float(sys.argv[2])
prio = int(sys.argv[3]) if len(sys.argv) > 3 else 10
os.sched_setaffinity(0, {cpu})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
late = []
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
end = t + int(seconds * 1e9)
while t < end:
    t += 1_000_000
    time.sleep(max(0.0, (t - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9))
    late.append(time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t)
late.sort()
n = len(late)
q = lambda f: late[min(n - 1, int(f * n))] / 1e6
print(n, sum(x > 500_000 for x in late), sum(x > 1_000_000 for x in late), q(0.99), q(0.999), late[-1] / 1e6)
"""


def make_namespaces(n: int, held: list[int]) -> float:
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    t0 = time.monotonic()
    try:
        for _ in range(n):
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            held.append(os.open("/proc/self/ns/net", os.O_RDONLY))
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,1500,4000,10000", help="namespace counts, ascending (cumulative)")
    ap.add_argument("--seconds", type=float, default=15.0, help="measuring time per size")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds waited after making namespaces")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("timer_stalls: needs root (unshare, SCHED_FIFO)", file=sys.stderr)
        return 2
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
    except ValueError:
        print(f"timer_stalls: --sizes {a.sizes!r}: not a comma-separated list of integers", file=sys.stderr)
        return 2
    if sizes != sorted(sizes) or sizes[0] < 0:
        print(f"timer_stalls: --sizes {a.sizes!r}: must be ascending and >= 0", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    print(f"# {os.uname().nodename}, {len(cpus)} CPUs, kernel {os.uname().release}; "
          f"{a.seconds:g} s per size; wake-ups of a 1 ms SCHED_FIFO 10 timer, per CPU")
    print(f"{'namespaces':>10} {'cpu':>4} {'wakes':>6} {'>0.5ms':>7} {'>1ms':>6} {'p99 ms':>7} {'p99.9 ms':>8} "
          f"{'max ms':>7}")
    held: list[int] = []
    try:
        for size in sizes:
            if size > len(held):
                make_namespaces(size - len(held), held)
                time.sleep(a.settle)
            procs = {c: subprocess.Popen([sys.executable, "-c", PROBE, str(c), str(a.seconds)],
                                         stdout=subprocess.PIPE, text=True) for c in cpus}
            for c, p in procs.items():
                out, _ = p.communicate(timeout=a.seconds + 60)
                n, over05, over1, p99, p999, mx = out.split()
                print(f"{size:>10} {c:>4} {n:>6} {over05:>7} {over1:>6} {float(p99):>7.2f} {float(p999):>8.2f} "
                      f"{float(mx):>7.2f}", flush=True)
    finally:
        for fd in held:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
