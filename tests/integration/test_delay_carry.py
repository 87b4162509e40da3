"""Lateness carried from one hold to the next (delayd.c, "Lateness carried"): the delay daemon is stopped
for PAUSE_MS while a stream crosses four held hops, so every packet due meanwhile is released late. With
carrying on, the next hop makes that up and only packets late at their last hold arrive late; with it off,
every one does. Either way no packet arrives before the path's delay. Delays are measured by the test
itself: send and receive times on CLOCK_MONOTONIC (one clock for every namespace), in the payload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from vethchain import veth_chain

from emulator.shaping.base import LinkShape
from emulator.shaping.userspace import UserspaceShaper

pytestmark = pytest.mark.root

HOPS = 4
HOP_DELAY_MS = 10.0
PAUSE_MS = 15.0
INTERVAL_MS = 1.0
LATE_MS = 2.0  # a packet this much beyond the path's delay counts as late

RECEIVER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 47000))
s.settimeout(2.0)
print("ready", flush=True)
out = []
try:
    while True:
        d = s.recv(64)
        now = time.monotonic_ns()
        seq, sent = struct.unpack("=qq", d[:16])
        out.append(f"{seq} {sent} {(now - sent) / 1e6:.4f}")
except socket.timeout:
    pass
print("\n".join(out), flush=True)
"""

SENDER = r"""
import socket, struct, sys, time
dst, n, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
for i in range(n):
    s.sendto(struct.pack("=qq", i, time.monotonic_ns()) + b"x" * 48, (dst, 47000))
    t += interval
    time.sleep(max(0.0, t - time.monotonic()))
"""


@pytest.fixture(scope="module")
def chain():
    nodes = ["h1"] + [f"r{i}" for i in range(1, HOPS)] + ["h2"]
    with veth_chain("dcy", nodes, "10.81") as c:
        iprs = c.iprs
        peered = [p for left, right in c.hops for p in (replace(left, peer=right), replace(right, peer=left))]
        iprs["h1"].route("add", dst="0.0.0.0/0", gateway="10.81.1.2")
        iprs["h2"].route("add", dst="0.0.0.0/0", gateway=f"10.81.{HOPS}.1")
        for i in range(1, HOPS):
            for j in range(i + 2, HOPS + 1):
                iprs[f"r{i}"].route("add", dst=f"10.81.{j}.0/24", gateway=f"10.81.{i + 1}.2")
            for j in range(1, i):
                iprs[f"r{i}"].route("add", dst=f"10.81.{j}.0/24", gateway=f"10.81.{i}.1")
        yield c, peered, f"10.81.{HOPS}.2"


def one_way_ms(c, peered, dst: str, carry: bool) -> tuple[list[tuple[int, float]], tuple[int, int], dict]:
    """Stream h1 -> h2 for 1.5 s, stop the daemon's shards for PAUSE_MS in the middle: (send time ns, one-way
    delay ms) of every datagram received, the pause's (start, end) ns on the same clock, the daemon's
    counters."""
    sh = UserspaceShaper(carry=carry)
    try:
        for n, ipr in c.iprs.items():
            sh.prepare_node(n, c.path(n), ipr)
        sh.set([(p, LinkShape(delay_ms=HOP_DELAY_MS, rate_mbps=1000.0)) for p in peered], lambda n: c.iprs[n])
        rx = subprocess.Popen(["ip", "netns", "exec", c.names["h2"], sys.executable, "-c", RECEIVER],
                              stdout=subprocess.PIPE, text=True)
        assert rx.stdout.readline().strip() == "ready"
        count = int(1500 / INTERVAL_MS)
        tx = subprocess.Popen(["ip", "netns", "exec", c.names["h1"], sys.executable, "-c", SENDER, dst,
                               str(count), str(INTERVAL_MS / 1e3)])
        time.sleep(0.75)
        pids = sh._daemon.pids
        assert pids
        stop_ns = time.monotonic_ns()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(PAUSE_MS / 1e3)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        cont_ns = time.monotonic_ns()
        assert tx.wait(timeout=30) == 0
        out, _ = rx.communicate(timeout=30)
        stats = sh.stats()
    finally:
        sh.close()
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [(int(r[1]), float(r[2])) for r in rows], (stop_ns, cont_ns), stats


def test_a_late_hop_is_made_up_at_the_next_and_nothing_arrives_early(chain):
    c, peered, dst = chain
    path_ms = HOPS * HOP_DELAY_MS
    late = {}
    for carry in (True, False, True, False):
        got, (stop_ns, cont_ns), stats = one_way_ms(c, peered, dst, carry)
        assert len(got) >= 1400, len(got)
        # never early: each hold may let a packet go 0.2 ms ahead (the daemon's lead), no more
        assert min(d for _, d in got) >= path_ms - HOPS * 0.2, (carry, min(d for _, d in got))
        # the packets in flight during the pause (late wake-ups elsewhere in the stream are the machine's)
        caught = [d for sent, d in got if stop_ns - (path_ms + 5) * 1e6 <= sent <= cont_ns + 2e6]
        late.setdefault(carry, []).append(sum(d > path_ms + LATE_MS for d in caught))
        assert stats["carry"] == (2 if carry else 0)
        if carry:
            assert stats["made_up"] > 0 and stats["made_up_ms"] > 0, stats
    # The pause catches ~PAUSE_MS / INTERVAL_MS packets at each of the 4 holds, late by up to 15 ms. Off,
    # all of those arrive late; on, only those caught at their last hold (the others' next hop made it up).
    per_hold = PAUSE_MS / INTERVAL_MS
    for on, off in zip(late[True], late[False]):
        assert off >= 2 * per_hold, late
        assert on <= per_hold + 5, late
