"""Compute nodes placed by rule (issue 14) are live nodes: each answers pings from the ground, reached over
its own satellite."""

from __future__ import annotations

import re

import pytest

from routing.graph import build_graph, path
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario

pytestmark = pytest.mark.root

SCENARIO = """
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 2
[[constellation.shells]]
name = "s"
altitude_km = 550.0
planes = 6
sats_per_plane = 12
[[ground.sites]]
name = "gs-a"
lat_deg = 0.0
lon_deg = 0.0
antennas = 1
[gsl]
min_elevation_deg = 0.0
[[compute]]
every_nth = 6
prefix = "edge"
[power]
battery_wh = 20
"""


def test_rule_nodes_answer_over_their_satellites(make_emulation) -> None:
    tl = plan_scenario(parse_scenario(SCENARIO, "<rules-live>"))
    names = [tl.nodes[i].name for i in tl.nodes_of("compute")]
    assert names == [f"edge-{p}-{s}" for p in range(6) for s in (0, 6)]
    assert tl.compute_power is not None
    emu = make_emulation(tl)
    snap = tl.snapshot(0)
    graph = build_graph(tl.link_a, snap, len(tl.nodes))
    src = tl.node_index("h-a")
    for name in names:
        dst = tl.node_index(name)
        nodes, _links, _ = path(graph, src, dst)
        # the last hop is the node's access link from its own satellite
        assert tl.nodes[nodes[-2]].name == tl.nodes[dst].info["satellite"]
        out = emu.node("h-a").cmd(f"ping -n -c 3 -i 0.1 -W 1 {emu.address_of(name)}")
        got = int(re.search(r"(\d+) received", out).group(1))
        assert got == 3, out
