"""Scheduled events ([[events]]) on a live network: the kernel's traffic leaves a failed ISL at the event's
step (counted on the link's own interface), and a ground host's default route survives its gateway's
scheduled failure and restore."""

from __future__ import annotations

import os
import re

import networkx as nx
import pytest

from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario
from topologies.timeline import Reason

pytestmark = pytest.mark.root

BASE = """
name = "events-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 10
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
T_ISL, T_GW = 3, 7


def nx_hops(tl, step: int, src: str, dst: str) -> set[frozenset[int]]:
    """Links of the least-delay path at ``step``, found with networkx on the timeline's arrays."""
    g = nx.Graph()
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] == 0 and b >= 0 and (not g.has_edge(a, b) or g[a][b]["weight"] > tl.delay_ms[l, step]):
            g.add_edge(a, b, weight=float(tl.delay_ms[l, step]))
    p = nx.shortest_path(g, tl.node_index(src), tl.node_index(dst), weight="weight")
    return {frozenset(e) for e in zip(p, p[1:])}


def ping(emu, src: str, dst_addr: str, count: int = 10) -> int:
    out = emu.node(src).cmd(f"ping -n -c {count} -i 0.05 -W 1 {dst_addr}")
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def packets(emu, node: str, ifname: str) -> int:
    out = emu.node(node).cmd(f"cat /sys/class/net/{ifname}/statistics/tx_packets "
                             f"/sys/class/net/{ifname}/statistics/rx_packets")
    return sum(int(x) for x in out.split())


def test_scheduled_isl_failure_moves_the_kernels_traffic_at_its_step(make_emulation):
    base = plan_scenario(parse_scenario(BASE, "<test>"))
    sats = {i for i, n in enumerate(base.nodes) if n.kind == "sat"}
    common = [e for e in nx_hops(base, T_ISL - 1, "h-london", "h-new-york")
              & nx_hops(base, T_ISL, "h-london", "h-new-york") if e <= sats]
    assert common, "the test needs an ISL on the least-delay path at both steps"
    a, b = sorted(common[0])
    na, nb = base.nodes[a].name, base.nodes[b].name
    tl = plan_scenario(parse_scenario(
        BASE + f'[[events]]\nkind = "fail"\ntarget = ["{na}", "{nb}"]\nat_s = {T_ISL}\nduration_s = 3\n'
               f'[[events]]\nkind = "fail"\ntarget = "gs-new-york"\nat_s = {T_GW}\nduration_s = 1\n', "<test>"))
    slot = [l for l in range(tl.n_links) if {int(tl.link_a[l]), int(tl.peer[l, 0])} == {a, b}]
    assert len(slot) == 1 and tl.state[slot[0], T_ISL] == Reason.SCHEDULED
    emu = make_emulation(tl, run_id=f"events-{os.getpid()}")
    dst = emu.address_of("h-new-york")
    ifname = emu.addr.ifname_a[slot[0]]  # the link's interface at its near end (node a or b)
    near = tl.nodes[int(tl.link_a[slot[0]])].name

    emu.apply_step(T_ISL - 1)
    before = packets(emu, near, ifname)
    assert ping(emu, "h-london", dst) == 10
    crossed = packets(emu, near, ifname) - before
    assert crossed >= 10  # the pings crossed the link: it is on the path

    emu.apply_step(T_ISL)  # the event's step: the link is down, the routes go around it
    before = packets(emu, near, ifname)
    assert ping(emu, "h-london", dst) == 10
    assert packets(emu, near, ifname) - before == 0

    emu.apply_step(T_GW - 1)
    assert ping(emu, "h-london", dst, count=5) == 5
    emu.apply_step(T_GW)  # gs-new-york down: its antenna and its host's access link
    assert ping(emu, "h-london", dst, count=5) == 0
    emu.apply_step(T_GW + 1)  # back: the host's default route is back too
    assert ping(emu, "h-london", dst, count=5) == 5


def test_gateway_failed_from_the_start_comes_back_with_its_hosts_route(make_emulation):
    tl = plan_scenario(parse_scenario(BASE.replace("duration_s = 10", "duration_s = 4")
                                      + '[[events]]\nkind = "fail"\ntarget = "gs-new-york"\nat_s = 0\nduration_s = 2\n',
                                      "<test>"))
    emu = make_emulation(tl, run_id=f"events0-{os.getpid()}")  # builds step 0 with the access link down
    dst = emu.address_of("h-new-york")
    assert ping(emu, "h-london", dst, count=3) == 0
    emu.apply_step(1)
    emu.apply_step(2)
    assert ping(emu, "h-london", dst, count=5) == 5
