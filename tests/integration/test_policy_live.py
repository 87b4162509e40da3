"""The backhaul policy on a live network: Boston homed on London, with ground-first, pings the host behind
the London PoP over the fibre from the New York gateway, not over the lasers the least-delay path takes. The
RTT is the ground-first path's (networkx here: lasers weighted 1,000 times their delay, as docs/model.md
defines the policy), bounded as in test_pops_live.py, and far from the least-delay path's."""

from __future__ import annotations

import dataclasses
from statistics import median

import networkx as nx
import numpy as np
import pytest
from test_terminals_live import ping_rtts

from topologies.timeline import LINK_CLASSES, Reason

pytestmark = pytest.mark.root

SCENARIO = """
name = "policy-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 5
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
name = "ut-boston"
lat_deg = 42.36
lon_deg = -71.06
pop = "lndngbr1"
[backhaul]
policy = "ground-first"
"""

SHRINK = 1e-3
ISL = LINK_CLASSES.index("isl")


def rtt(tl, a: str, b: str, laser_factor: float) -> float:
    """Twice the delay of the path that is shortest with laser links weighted ``laser_factor`` x delay."""
    g = nx.Graph()
    for link in np.flatnonzero(tl.state[:, 0] == Reason.UP).tolist():
        u, v, d = int(tl.link_a[link]), int(tl.peer[link, 0]), float(tl.delay_ms[link, 0])
        w = d * (laser_factor if tl.link_class[link] == ISL else 1.0)
        if not g.has_edge(u, v) or g[u][v]["w"] > w:
            g.add_edge(u, v, w=w, d=d)
    nodes = nx.dijkstra_path(g, tl.node_index(a), tl.node_index(b), weight="w")
    return 2 * sum(g[u][v]["d"] for u, v in zip(nodes[:-1], nodes[1:]))


def test_ground_first_pings_ride_the_backbone(make_emulation):
    from emulator import shaping
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    tl = plan_scenario(parse_scenario(SCENARIO, "<policy-live>"))
    predicted = rtt(tl, "ut-boston", "h-pop-lndngbr1", 1000.0)
    least = rtt(tl, "ut-boston", "h-pop-lndngbr1", 1.0)
    tol = max(1.0, 0.03 * predicted)
    assert predicted - least > 4 * tol, (predicted, least)  # the two policies are told apart on the wire
    tl_run = dataclasses.replace(tl, state=tl.state[:, [0, 0]], peer=tl.peer[:, [0, 0]],
                                 delay_ms=tl.delay_ms[:, [0, 0]] * np.array([1.0, SHRINK], np.float32),
                                 rate_mbps=tl.rate_mbps[:, [0, 0]], loss_pct=tl.loss_pct[:, [0, 0]],
                                 sat_lla=tl.sat_lla[:, [0, 0]], sat_sunlight=None)
    emu = make_emulation(tl_run, shaping.make_shaper("userspace")[0])
    emu.apply_step(0)
    raw = median(ping_rtts(emu, "ut-boston", "h-pop-lndngbr1"))
    emu.apply_step(1)
    base = median(ping_rtts(emu, "ut-boston", "h-pop-lndngbr1")) - SHRINK * predicted
    assert predicted - tol <= raw <= predicted + base + tol, (raw, base, predicted, least)
