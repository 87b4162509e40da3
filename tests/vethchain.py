"""Namespaces in a line joined by veth pairs, for root tests that need a few hops without an emulation.

``veth_chain("dov", ["h1", "r1", "h2"], "10.79")`` makes namespaces ``dov<pid>-h1`` ... (IPv4 only; those whose
name starts with ``r`` forward), hop i as ``<net>.(i+1).0/24`` with the left end ``.1`` and the right end
``.2``, and removes them at the end, also after a failure. No routes: each test adds its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from emulator.netns import entered, iproute_in
from emulator.shaping.base import Port


@dataclass
class Chain:
    names: dict[str, str]  # node -> namespace name
    iprs: dict[str, Any] = field(default_factory=dict)  # node -> pyroute2 IPRoute in its namespace
    hops: list[tuple[Port, Port]] = field(default_factory=list)  # (left end, right end) of each hop

    def path(self, node: str) -> str:
        return f"/run/netns/{self.names[node]}"


def _ns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@contextmanager
def veth_chain(tag: str, nodes: list[str], net: str) -> Iterator[Chain]:
    if os.geteuid() != 0:
        pytest.skip("needs root to build network namespaces")
    prefix = f"{tag}{os.getpid() % 100000}"
    chain = Chain({n: f"{prefix}-{n}" for n in nodes})
    try:
        for n in nodes:
            subprocess.run(["ip", "netns", "add", chain.names[n]], check=True)
            path = chain.path(n)
            for key in ("all", "default"):  # IPv4 only, as in the emulator
                with entered(path, n), open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                    f.write("1")
            with entered(path, n), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1" if n.startswith("r") else "0")
            chain.iprs[n] = iproute_in(path, n)
            chain.iprs[n].link("set", index=chain.iprs[n].link_lookup(ifname="lo")[0], state="up")
        for i, (left, right) in enumerate(zip(nodes, nodes[1:])):
            lif, rif = f"{left}-{right}", f"{right}-{left}"
            chain.iprs[left].link("add", ifname=lif, kind="veth", peer={"ifname": rif, "net_ns_fd": chain.names[right]})
            ends = []
            for node, ifname, host in ((left, lif, 1), (right, rif, 2)):
                ipr = chain.iprs[node]
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=idx, address=f"{net}.{i + 1}.{host}", prefixlen=24)
                ipr.link("set", index=idx, state="up")
                ends.append(Port(node, chain.path(node), ifname, idx))
            chain.hops.append((ends[0], ends[1]))
        yield chain
    finally:
        for ipr in chain.iprs.values():
            ipr.close()
        present = _ns_list()
        for name in chain.names.values():
            if name in present:
                subprocess.run(["ip", "netns", "del", name], check=False)


@contextmanager
def routed_line(tag: str, hops: int, net: str) -> Iterator[tuple[Chain, list[Port], str]]:
    """``h1, r1 .. r<hops-1>, h2`` in a line (:func:`veth_chain`), routed end to end: the hosts by default
    routes to their neighbour, each router to the subnets on either side by its neighbours. Yields the
    chain, every hop end as a Port with its peer set (both directions of each hop, for a shaper) and h2's
    address."""
    nodes = ["h1"] + [f"r{i}" for i in range(1, hops)] + ["h2"]
    with veth_chain(tag, nodes, net) as c:
        iprs = c.iprs
        peered = [p for left, right in c.hops for p in (replace(left, peer=right), replace(right, peer=left))]
        iprs["h1"].route("add", dst="0.0.0.0/0", gateway=f"{net}.1.2")
        iprs["h2"].route("add", dst="0.0.0.0/0", gateway=f"{net}.{hops}.1")
        for i in range(1, hops):  # r_i: h2's side via its right neighbour, h1's side via its left one
            for j in range(i + 2, hops + 1):
                iprs[f"r{i}"].route("add", dst=f"{net}.{j}.0/24", gateway=f"{net}.{i + 1}.2")
            for j in range(1, i):
                iprs[f"r{i}"].route("add", dst=f"{net}.{j}.0/24", gateway=f"{net}.{i}.1")
        yield c, peered, f"{net}.{hops}.2"


def r1_egress(c: Chain) -> Port:
    """r1's end of the hop toward h2 as a Port with no peer: a hold there is on r1's egress, as a satellite
    holds what it sends toward the ground."""
    end = c.hops[1][0]
    return Port(end.node, end.ns_path, end.ifname, end.ifindex)


# A UDP stream with its own time stamps, for tests that measure one-way delay through a chain: every datagram
# is ``header`` (fixed bytes, as a tunnel's outer packets start), then (sequence, CLOCK_MONOTONIC send time
# in ns), then padding; the receiver prints "seq sent_ns delay_ms" per datagram once 2 s pass without one.
# CLOCK_MONOTONIC is one clock for every namespace. Arguments: receiver PORT HEADER_LEN; sender DST PORT
# COUNT INTERVAL_S HEADER.
UDP_RECEIVER = r"""
import socket, struct, sys, time
port, skip = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(2.0)
print("ready", flush=True)
out = []
try:
    while True:
        d = s.recv(128)
        now = time.monotonic_ns()
        seq, sent = struct.unpack("=qq", d[skip:skip + 16])
        out.append(f"{seq} {sent} {(now - sent) / 1e6:.4f}")
except socket.timeout:
    pass
print("\n".join(out), flush=True)
"""

UDP_SENDER = r"""
import socket, struct, sys, time
dst, port, n, interval, header = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((dst, port))
t = time.monotonic()
for i in range(n):
    s.send(header.encode() + struct.pack("=qq", i, time.monotonic_ns()) + b"x" * 40)
    t += interval
    time.sleep(max(0.0, t - time.monotonic()))
"""


def udp_stream(c: Chain, dst: str, port: int, count: int, interval_s: float, header: str) -> tuple[Any, Any]:
    """Start UDP_RECEIVER in h2 (ready when this returns) and UDP_SENDER in h1, both at real-time priority below
    the delay daemon's (their stamps are taken in user space, and a CPU hog beside a normal process delays them
    by milliseconds that would count as the network's): (receiver, sender) processes."""
    rx = subprocess.Popen(["ip", "netns", "exec", c.names["h2"], "chrt", "-f", "5", sys.executable, "-c",
                           UDP_RECEIVER, str(port), str(len(header))], stdout=subprocess.PIPE, text=True)
    assert rx.stdout.readline().strip() == "ready"
    tx = subprocess.Popen(["ip", "netns", "exec", c.names["h1"], "chrt", "-f", "5", sys.executable, "-c",
                           UDP_SENDER, dst, str(port), str(count), str(interval_s), header])
    return rx, tx


def pause_processes(pids: list[int], pause_s: float) -> tuple[int, int]:
    """Stop ``pids`` for ``pause_s`` (SIGSTOP, SIGCONT), timed from this thread at real-time priority (under a CPU
    hog a normal thread's 8 ms sleep lasted up to ~50 ms): the pause's (start, end) on CLOCK_MONOTONIC, ns."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
    try:
        stop_ns = time.monotonic_ns()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(pause_s)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        return stop_ns, time.monotonic_ns()
    finally:
        os.sched_setscheduler(0, *before)


def paused_stream(c: Chain, sh: Any, items: list[tuple[Port, Any]], dst: str, port: int, count: int,
                  interval_s: float, header: str, pause_after_s: float, pause_s: float) -> tuple[list, tuple, dict]:
    """Shape ``items`` with ``sh`` (a UserspaceShaper; the caller closes it), stream ``count`` datagrams h1 -> h2
    (:func:`udp_stream`) and stop the delay daemon's shards for ``pause_s`` after ``pause_after_s``: (send time
    ns, one-way delay ms) of every datagram received, the pause's (start, end) ns, the daemon's counters."""
    for n, ipr in c.iprs.items():
        sh.prepare_node(n, c.path(n), ipr)
    sh.set(items, lambda n: c.iprs[n])
    rx, tx = udp_stream(c, dst, port, count, interval_s, header)
    time.sleep(pause_after_s)
    pids = sh._daemon.pids
    assert pids
    pause = pause_processes(pids, pause_s)
    assert tx.wait(timeout=30) == 0
    out, _ = rx.communicate(timeout=30)
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [(int(r[1]), float(r[2])) for r in rows], pause, sh.stats()
