"""User terminals on a live network: a terminal pings a gateway's host through its one beam, before and
after the beam moves to another satellite at a slot boundary, and the RTT is the timeline's least-delay
path there and back (found here with networkx on the planned link table)."""

from __future__ import annotations

import re
from statistics import median

import networkx as nx
import numpy as np
import pytest

from topologies.timeline import LINK_CLASSES, Reason

pytestmark = pytest.mark.root

# the campaign example's 20 x 20 shell, its two gateways, and two terminals; 15 s slots at :12, :27, ...
SCENARIO = """
name = "terminals-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 60
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
country = "IE"
[[terminals]]
name = "ut-chicago"
lat_deg = 41.8781
lon_deg = -87.6298
country = "US"
"""


def least_delay_rtt_ms(tl, step: int, a: str, b: str) -> float:
    """Twice the least one-way delay from ``a`` to ``b`` over the links up at ``step``."""
    g = nx.Graph()
    for link in np.flatnonzero(tl.state[:, step] == Reason.UP).tolist():
        u, v, w = int(tl.link_a[link]), int(tl.peer[link, step]), float(tl.delay_ms[link, step])
        if not g.has_edge(u, v) or g[u][v]["weight"] > w:
            g.add_edge(u, v, weight=w)
    return 2 * nx.dijkstra_path_length(g, tl.node_index(a), tl.node_index(b))


def ping_rtts(emu, src: str, dst: str, count: int = 30) -> list[float]:
    out = emu.node(src).cmd(f"ping -n -c {count} -i 0.05 -W 1 {emu.address_of(dst)}")
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    assert len(rtts) == count, out
    return rtts


def test_a_terminal_pings_a_gateway_host_at_the_predicted_rtt(make_emulation, backend):
    from emulator import shaping
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    tl = plan_scenario(parse_scenario(SCENARIO, "<terminals-live>"))
    beam = {tl.nodes[int(tl.link_a[l])].name: int(l) for l in np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
            if tl.nodes[int(tl.link_a[l])].kind == "terminal"}
    peer = tl.peer[beam["ut-chicago"]]
    moves = np.flatnonzero((peer[1:] != peer[:-1]) & (peer[1:] >= 0)) + 1
    assert moves.tolist() == [27]  # a new satellite at 12:00:27, a slot boundary (checked in tests/unit)
    emu = make_emulation(tl, shaping.make_shaper(backend)[0])
    checks = [(0, "ut-dublin", "h-new-york"), (0, "ut-chicago", "h-london")]
    for step, src, dst in checks + [(27, "ut-chicago", "h-london")]:
        if step:
            emu.apply_step(step)
            # the beam's satellite end now lives in the new satellite's namespace, up
            link = beam["ut-chicago"]
            ifaces = emu.node(tl.nodes[int(peer[step])].name).cmd("ip -o link show up").split()
            assert f"g{link}:" in ifaces or f"g{link}b:" in ifaces or any(
                i.startswith((f"g{link}@", f"g{link}b@")) for i in ifaces), ifaces
        predicted = least_delay_rtt_ms(tl, step, src, dst)
        measured = median(ping_rtts(emu, src, dst))
        assert abs(measured - predicted) <= max(1.0, 0.03 * predicted), (step, src, dst, measured, predicted)
