"""A long control request does not hold up the packets the delay daemon holds.

Every step sends each shard a ``set`` with the new delays of its changed ports, and a build one with all of
them. The daemon's main loop parsed and applied a request whole while keeping the lock that lets a standby
thread stand in for it, so every packet due meanwhile left late by up to the whole request (the access
example's longest ``set`` took 9.6 ms; most take 0.1 ms). Here a 1 kpps stream crosses h1 - r1 - h2, held
HOLD_MS on r1's egress, and the test sends the shard a ``set`` changing the delay of N_PORTS ports in r1 in
the middle of it (interfaces that do not exist: the daemon keeps a port for each, made by an earlier ``set``
as a build makes them). With the daemon before the change, the datagrams sent meanwhile came 15-25 ms late.
Delays are the test's own: the send time in the datagram and the kernel's receive stamp, both on
CLOCK_REALTIME, so that neither end's wait for a CPU counts.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from vethchain import r1_egress, routed_line

from emulator.shaping.base import LinkShape
from emulator.shaping.userspace import UserspaceShaper

pytestmark = pytest.mark.root

HOLD_MS = 2.0
N_PORTS = 100_000
LATE_MS = 2.0  # the daemon's wake-up on a busy machine
STALL_MS = 6.0  # a CPU of this VM lost for ~4.6 ms at a time beside a CPU hog (README, "Standby threads")
PORT = 47200

# The stream's own stamps on one clock (CLOCK_REALTIME): the send time in the datagram, the arrival time the
# kernel gives the receiving socket (SO_TIMESTAMPNS), so that neither end's wait for a CPU counts (the daemon
# at work keeps its CPU; the receiver, at real-time priority below it, may wait for the other one). Prints
# "sent_ns delay_ms" per datagram once 2 s pass without one.
RECEIVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS (asm-generic/socket.h), not in Python's socket module
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(2.0)
print("ready", flush=True)
out = []
try:
    while True:
        d, anc, _, _ = s.recvmsg(64, 64)
        sec, nsec = struct.unpack("=qq", anc[0][2][:16])
        sent = struct.unpack("=q", d[:8])[0]
        out.append(f"{sent} {(sec * 10**9 + nsec - sent) / 1e6:.4f}")
except socket.timeout:
    pass
print("\n".join(out), flush=True)
"""
SENDER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
t = time.monotonic()
for i in range(int(sys.argv[3])):
    s.send(struct.pack("=q", time.time_ns()) + b"x" * 40)
    t += 0.001
    time.sleep(max(0.0, t - time.monotonic()))
"""


def _stream(names: dict[str, str], dst: str, count: int) -> tuple[subprocess.Popen, subprocess.Popen]:
    rx = subprocess.Popen(["ip", "netns", "exec", names["h2"], "chrt", "-f", "5", sys.executable, "-c", RECEIVER,
                           str(PORT)], stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
    tx = subprocess.Popen(["ip", "netns", "exec", names["h1"], "chrt", "-f", "5", sys.executable, "-c", SENDER, dst,
                           str(PORT), str(count)])
    return rx, tx


def test_a_long_set_request_does_not_hold_up_released_packets():
    with routed_line("dct", 2, "10.83") as (c, _peered, dst):
        held = r1_egress(c)
        sh = UserspaceShaper(carry=False, shards=1)
        try:
            for n, ipr in c.iprs.items():
                sh.prepare_node(n, c.path(n), ipr)
            sh.set([(held, LinkShape(delay_ms=HOLD_MS, rate_mbps=1000.0))], lambda n: c.iprs[n])
            d = sh._daemon
            shard, nsid = d.where(held.ns_path)
            k = np.arange(N_PORTS, dtype=np.int64)
            args = (np.full(N_PORTS, shard), np.full(N_PORTS, nsid), 100_000 + k, np.zeros(N_PORTS, np.int64),
                    np.full(N_PORTS, 5_000_000, np.int64), np.zeros(N_PORTS), k)
            d.set_delays(*args)  # the ports made (as at a build): what a step sends changes them only
            args[4][:] = 6_000_000
            rx, tx = _stream(c.names, dst, 2500)
            time.sleep(0.8)
            start = time.time_ns()
            d.set_delays(*args)  # builds the request's text, sends it, waits for the reply
            end = time.time_ns()
            assert tx.wait(timeout=30) == 0
            out, _ = rx.communicate(timeout=30)
        finally:
            sh.close()
    got = [(int(r[0]), float(r[1])) for r in (line.split() for line in out.splitlines()) if r]
    assert len(got) >= 2400, len(got)
    during = [ms for sent, ms in got if start <= sent <= end]
    assert len(during) >= 15, len(during)
    assert min(ms for _, ms in got) >= HOLD_MS - 0.2  # never early by more than the daemon's lead
    # Held up by the request, every datagram due while it is parsed leaves late, one after another (before the
    # change: 15-25 in a row, up to 27 ms). Alone, one datagram can be: beside a CPU hog one came up to 2.25 ms
    # over, at the moment the request's text began to arrive (its sender, at real-time priority, waited for a
    # CPU in the middle of the test process's large socket write, by the look of it; not established).
    late = [ms for ms in during if ms > HOLD_MS + LATE_MS]
    assert len(late) <= 2 and max(during) <= HOLD_MS + STALL_MS, (late, max(during), (end - start) / 1e6)
