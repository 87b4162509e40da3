"""The path probe at its default rate on a network the emulator built: every router on the path answers
every round (issue 15). A new network namespace rate-limits the ICMP errors it sends to one destination
to one a second after a burst of six (``net.ipv4.icmp_ratelimit``, 1000 ms by default in each namespace),
so at the ``path`` flow's 5 rounds/s a router the emulator left at that default answers about half the
rounds of 4 s. Nothing in this test writes a sysctl: what it sees is what the product set.

The path is computed here (networkx Dijkstra on the timeline's link delays at step 0, where the network
stays since the clock is not started), and each hop's address is checked against the addresses the
kernel shows in that node's namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from emulator.traffic.pathprobe import path_rounds
from topologies.scenario import TrafficSpec
from topologies.timeline import Reason

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scripted.toml"
SRC, DST = "h-london", "h-new-york"
PROBE_S = 4.0


def least_delay_path(tl, src: str, dst: str, step: int) -> list[int]:
    """Node indices of the least-delay path over the links up at ``step`` (the test's own computation)."""
    g = nx.Graph()
    for link in np.flatnonzero(tl.state[:, step] == Reason.UP).tolist():
        u, v, w = int(tl.link_a[link]), int(tl.peer[link, step]), float(tl.delay_ms[link, step])
        if not g.has_edge(u, v) or g[u][v]["weight"] > w:
            g.add_edge(u, v, weight=w)
    return nx.dijkstra_path(g, tl.node_index(src), tl.node_index(dst))


def kernel_addresses(ns_path: str) -> set[str]:
    """IPv4 addresses configured in the namespace at ``ns_path``, as ``ip`` reads them from the kernel."""
    out = subprocess.run(["nsenter", f"--net={ns_path}", "ip", "-o", "-4", "addr", "show"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def test_path_probe_at_the_default_rate_gets_every_hop(tmp_path):
    from emulator.api import open_emulation

    interval_s = 1.0 / TrafficSpec.rate_pps  # the path flow's default rate (5/s)
    assert interval_s <= 0.25, "the default rate is what makes rate limiting show; this test assumes it"
    out = tmp_path / "paths.csv"
    with open_emulation(SCENARIO, duration_s=10, run_id=f"t-pp-{os.getpid()}") as emu:
        tl = emu.timeline
        nodes = least_delay_path(tl, SRC, DST, emu.current_step)
        names = [tl.nodes[n].name for n in nodes]
        owners = {a: name for name in names[1:] for a in kernel_addresses(emu.node(name).ns_path)}
        p = emu.node(SRC).popen([sys.executable, "-m", "emulator.traffic.pathprobe", "--dst", emu.address_of(DST),
                                 "--max-ttl", "64", "--interval-s", f"{interval_s:.3f}", "--duration", str(PROBE_S),
                                 "--out", str(out)], cwd=str(ROOT), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=PROBE_S + 20)
        assert p.returncode == 0, err.decode(errors="replace")
        assert emu.current_step == 0
    rounds = path_rounds(str(out))
    assert len(rounds) >= 0.8 * PROBE_S / interval_s, len(rounds)
    want = names[1:]  # the routers then the destination
    short = [(k, [owners.get(h, h) for h in r.hops]) for k, r in enumerate(rounds) if [owners.get(h) for h in r.hops] != want]
    assert not short, f"{len(short)} of {len(rounds)} rounds missed hops of {want}: first {short[:3]}"
    assert all(r.reached for r in rounds)
