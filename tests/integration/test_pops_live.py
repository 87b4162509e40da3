"""PoPs on a live network: a user terminal pings the host behind its home PoP; the packets cross the beam,
lasers, a gateway and fibre (gateway to its PoP, then the backbone), and the RTT is the timeline's
least-delay path there and back (found here with networkx on the planned link table), bounded as in
test_terminals_live.py: never below the prediction, above it by at most what forwarding and shaping add on the
same path with every delay shrunk a thousandfold."""

from __future__ import annotations

from statistics import median

import networkx as nx
import numpy as np
import pytest
from test_terminals_live import ping_rtts

from topologies.timeline import LINK_CLASSES, LINK_ROLES, Reason

pytestmark = pytest.mark.root

SCENARIO = """
name = "pops-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 20
step_s = 1.0
[[constellation.shells]]
name = "small"
altitude_km = 550
inclination_deg = 53
planes = 20
sats_per_plane = 20
phasing = 7
[gsl]
min_elevation_deg = 15.0
reconfiguration_interval_s = 15.0
slot_offset_s = 12.0
[ground]
pops = "starlink"
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[terminals]]
name = "ut-dublin"
lat_deg = 53.3498
lon_deg = -6.2603
pop = "frntdeu1"
"""

SHRINK = 1e-3


def least_delay(tl, step: int, a: str, b: str) -> tuple[float, list[int]]:
    """Twice the least one-way delay from ``a`` to ``b`` over the links up at ``step``, and the links used."""
    g = nx.Graph()
    for link in np.flatnonzero(tl.state[:, step] == Reason.UP).tolist():
        u, v, w = int(tl.link_a[link]), int(tl.peer[link, step]), float(tl.delay_ms[link, step])
        if not g.has_edge(u, v) or g[u][v]["weight"] > w:
            g.add_edge(u, v, weight=w, link=link)
    nodes = nx.dijkstra_path(g, tl.node_index(a), tl.node_index(b))
    links = [g[u][v]["link"] for u, v in zip(nodes[:-1], nodes[1:])]
    return 2 * sum(g[u][v]["weight"] for u, v in zip(nodes[:-1], nodes[1:])), links


def test_a_terminal_pings_its_home_pop_host_across_satellite_gateway_and_fibre(make_emulation):
    import dataclasses

    from emulator import shaping
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    tl = plan_scenario(parse_scenario(SCENARIO, "<pops-live>"))
    predicted, links = least_delay(tl, 0, "ut-dublin", "h-pop-frntdeu1")
    # the beam and a gateway antenna (one satellite between them, or lasers too), the gateway's fibre to its
    # PoP and the backbone to Frankfurt
    assert [LINK_CLASSES[int(tl.link_class[l])] for l in links].count("gsl") == 2
    assert {LINK_ROLES[int(tl.link_role[l])] for l in links} >= {"gsl", "backhaul", "backbone"}
    # step 1: every delay shrunk, the same links (their least-delay paths do not change)
    tl_run = dataclasses.replace(tl, state=tl.state[:, [0, 0]], peer=tl.peer[:, [0, 0]],
                                 delay_ms=tl.delay_ms[:, [0, 0]] * np.array([1.0, SHRINK], np.float32),
                                 rate_mbps=tl.rate_mbps[:, [0, 0]], loss_pct=tl.loss_pct[:, [0, 0]],
                                 sat_lla=tl.sat_lla[:, [0, 0]], sat_sunlight=None)
    emu = make_emulation(tl_run, shaping.make_shaper("userspace")[0])
    emu.apply_step(0)
    raw = median(ping_rtts(emu, "ut-dublin", "h-pop-frntdeu1"))
    emu.apply_step(1)
    base = median(ping_rtts(emu, "ut-dublin", "h-pop-frntdeu1")) - SHRINK * predicted
    tol = max(1.0, 0.03 * predicted)
    assert predicted - tol <= raw <= predicted + base + tol, (raw, base, predicted)
