"""An unplanned failure through the scripting API on a live network, counted on the failed link's own
interface: `shortest-delay` and `predictive` keep the kernel's traffic on the link until the failure's
step and move it at that step; the same failure scheduled ([[events]]) moves predictive's traffic a step
early."""

from __future__ import annotations

import os
import re

import networkx as nx
import pytest

from topologies.scenario import parse_scenario

pytestmark = pytest.mark.root

BASE = """
name = "unplanned-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 6
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 12
sats_per_plane = 12
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
"""
T = 3
SRC, DST = "h-london", "h-new-york"


def nx_pairs(tl, step: int) -> set[frozenset[int]]:
    g = nx.Graph()
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] == 0 and b >= 0 and (not g.has_edge(a, b) or g[a][b]["weight"] > tl.delay_ms[l, step]):
            g.add_edge(a, b, weight=float(tl.delay_ms[l, step]))
    p = nx.shortest_path(g, tl.node_index(SRC), tl.node_index(DST), weight="weight")
    return {frozenset(e) for e in zip(p, p[1:])}


def crossing(emu, hop, count: int = 10) -> tuple[int, int]:
    """(replies, packets seen on the hop's interface) of ``count`` pings SRC -> DST."""
    tl = emu.timeline
    [slot] = [int(l) for l in (emu.failures.mask(emu.failures.target(hop), tl.peer[:, emu.current_step])).nonzero()[0]]
    near, ifname = tl.nodes[int(tl.link_a[slot])].name, emu.emulation.addr.ifname_a[slot]

    def packets() -> int:
        out = emu.node(near).cmd(f"cat /sys/class/net/{ifname}/statistics/tx_packets "
                                 f"/sys/class/net/{ifname}/statistics/rx_packets")
        return sum(int(x) for x in out.split())

    before = packets()
    out = emu.node(SRC).cmd(f"ping -n -c {count} -i 0.05 -W 1 {emu.address_of(DST)}")
    m = re.search(r"(\d+) received", out)
    return (int(m.group(1)) if m else 0), packets() - before


def common_hop() -> tuple[str, str]:
    """An ISL on the least-delay path at both T - 1 and T (networkx on the planned arrays)."""
    from topologies.plan import plan_scenario

    tl = plan_scenario(parse_scenario(BASE, "<test>"))
    sats = {i for i, n in enumerate(tl.nodes) if n.kind == "sat"}
    common = sorted(sorted(e) for e in nx_pairs(tl, T - 1) & nx_pairs(tl, T) if e <= sats)
    assert common, "the test needs an ISL on the least-delay path at both steps"
    return tuple(tl.nodes[i].name for i in common[0])


@pytest.mark.parametrize("protocol", ["shortest-delay", "predictive"])
def test_an_unplanned_failure_is_seen_at_its_step_and_not_before(protocol):
    from emulator.api import open_emulation

    hop = common_hop()
    sc = parse_scenario(BASE, "<test>")
    with open_emulation(sc, protocol=protocol, run_id=f"t-unpl-{os.getpid()}") as emu:
        emu.fail(hop, at=T)
        emu.goto(T - 1)
        replies, on_link = crossing(emu, hop)
        assert replies == 10 and on_link >= 10  # not seen in advance: the traffic still crosses it
        emu.goto(T)
        replies, on_link = crossing(emu, hop)
        assert replies == 10 and on_link == 0  # seen at its step: routed around, nothing lost


def test_the_same_failure_scheduled_is_left_a_step_early_by_predictive():
    from emulator.api import open_emulation

    hop = common_hop()
    planned = parse_scenario(BASE + f'[[events]]\nkind = "fail"\ntarget = ["{hop[0]}", "{hop[1]}"]\nat_s = {T}\n',
                             "<test>")
    with open_emulation(planned, protocol="predictive", run_id=f"t-plan-{os.getpid()}") as emu:
        emu.goto(T - 1)
        replies, on_link = crossing(emu, hop)
        assert replies == 10 and on_link == 0  # planned: predictive left the link a step early
