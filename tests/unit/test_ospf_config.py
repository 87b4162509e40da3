"""OSPF configuration generation (pure): costs, interfaces per node, BIRD text checked by BIRD's own parser."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from handmade import GSL_A, GSL_B, grid_timeline, sat_index

from emulator.addressing import AddressPlan
from routing.base import get_protocol
from routing.daemon import DaemonProtocol, is_daemon_driven
from routing.ospf import (
    Ospf,
    OspfInterface,
    OspfOptions,
    bird_config,
    costs_to_push,
    link_costs,
    node_interfaces,
)
from topologies.errors import ConfigError


def interfaces(tl, node: str, step: int):
    a = AddressPlan().assign(tl)
    snap = tl.snapshot(step)
    far = np.where(snap.peer >= 0, snap.peer, tl.link_a)
    cost = link_costs(snap.params[:, 0])
    return node_interfaces(tl.node_index(node), tl.link_a, far, tl.link_class, a.ifname_a, a.ifname_b, cost)


def test_costs_follow_delay_and_are_clipped():
    got = link_costs(np.array([0.0, 0.004, 2.34, 3.0, 700.0, np.nan, np.inf]))
    assert got.tolist() == [1, 1, 234, 300, 65535, 65535, 65535]
    assert link_costs(np.array([2.3456]), cost_per_ms=1000).tolist() == [2346]
    # a shorter delay never costs more
    d = np.sort(np.random.default_rng(1).uniform(0, 50, 1000))
    assert (np.diff(link_costs(d)) >= 0).all()


def test_cost_tolerance_holds_small_drifts_and_passes_big_changes():
    pushed = np.array([1000, 1000, 1000, 1000, 1], np.int32)
    wanted = np.array([1040, 960, 1060, 500, 2], np.int32)
    assert costs_to_push(pushed, wanted, 5.0).tolist() == [1000, 1000, 1060, 500, 2]
    assert costs_to_push(pushed, wanted, 0.0).tolist() == wanted.tolist()
    # a slow drift is pushed once it has added up to more than the tolerance, never lost
    cur = np.array([1000], np.int32)
    for c in range(1001, 1100):
        cur = costs_to_push(cur, np.array([c]), 5.0)
    assert cur.tolist() == [1051]  # 1051 is the first cost more than 5 % above 1000


def test_satellite_has_four_isls_and_its_antenna():
    tl = grid_timeline()
    ifs = interfaces(tl, "sat-0-0", 0)
    assert [(i.name, i.stub) for i in ifs] == [("aft", False), ("fore", False), (f"g{GSL_A}", False),
                                                ("left", False), ("right", False)]
    fore = next(i for i in ifs if i.name == "fore")
    assert fore.cost == round(2.0 * 100)  # sat-0-0 -> sat-0-1 is 2.0 ms


def test_host_subnets_are_stubs_at_their_router():
    tl = grid_timeline()
    gw = interfaces(tl, "gw-a", 0)
    assert [(i.name, i.stub) for i in gw] == [("ant0", False), (f"h{tl.n_links - 3}", True)]
    sat = interfaces(tl, "sat-1-2", 0)  # the compute node hangs off sat-1-2
    assert [i.name for i in sat if i.stub] == [f"h{tl.n_links - 1}"]


def test_handover_moves_the_antenna_interface_between_satellites():
    tl = grid_timeline()
    g = f"g{GSL_B}"
    assert g in [i.name for i in interfaces(tl, "sat-2-2", 0)]
    assert g not in [i.name for i in interfaces(tl, "sat-2-2", 1)]
    assert g in [i.name for i in interfaces(tl, "sat-2-3", 1)]
    # step 2: gw-a's antenna is parked at the gateway: no satellite lists it, the gateway keeps ant0
    assert not any(f"g{GSL_A}" in [i.name for i in interfaces(tl, f"sat-0-{s}", 2)] for s in range(4))
    assert next(i.name for i in interfaces(tl, "gw-a", 2)) == "ant0"
    assert sat_index(0, 0) == tl.node_index("sat-0-0")


def test_config_text_is_deterministic_and_complete():
    ifs = [OspfInterface("fore", 230), OspfInterface("h40", 1, stub=True)]
    o = OspfOptions(hello_s=2, dead_s=7)
    text = bird_config("10.64.0.7", ifs, o, "/tmp/x.log", "sat-0-0", hidden=("10.0.0.0/10",))
    assert text == bird_config("10.64.0.7", ifs, o, "/tmp/x.log", "sat-0-0", hidden=("10.0.0.0/10",))
    assert "router id 10.64.0.7;" in text and "krt_prefsrc = 10.64.0.7" in text
    assert 'interface "lo" 10.64.0.7/32 { stub yes;' in text
    assert 'interface "fore" { type ptp; cost 230; hello 2; dead 7;' in text
    assert 'interface "h40" { stub yes; cost 1; }' in text
    assert "stubnet 10.0.0.0/10 { hidden; summary; }" in text
    assert "/etc/bird" not in text and "/run/bird" not in text
    # only the destinations given go into the kernel; OSPF itself still learns everything
    few = bird_config("10.64.0.7", ifs, o, exported=("10.128.0.0/24", "10.64.0.9/32"))
    assert "if net ~ [ 10.128.0.0/24, 10.64.0.9/32 ] then { krt_prefsrc = 10.64.0.7; accept; } reject;" in few
    assert "ipv4 { import all; export none; };" in few


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 (package bird2) is not installed")
def test_bird_accepts_the_generated_configuration(tmp_path):
    tl = grid_timeline()
    a = AddressPlan().assign(tl)
    for node in ("sat-0-0", "gw-a", "sat-1-2"):
        text = bird_config("10.64.0.1", interfaces(tl, node, 0), OspfOptions(), str(tmp_path / "n.log"), node,
                           hidden=(a.plan.link_pool,))
        conf = tmp_path / f"{node}.conf"
        conf.write_text(text)
        r = subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # with the kernel's table kept to some destinations (large constellations), and with none
    for exported in (("10.128.0.0/24", "10.64.0.9/32"), ()):
        conf.write_text(bird_config("10.64.0.1", interfaces(tl, "sat-0-0", 0), exported=exported))
        r = subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # and BIRD's parser is a real check: a broken file is refused
    conf.write_text(text.replace("type ptp;", "type bogus;"))
    assert subprocess.run(["bird", "-p", "-c", str(conf)], check=False, capture_output=True).returncode != 0


@pytest.mark.parametrize("kw, key", [({"hello_s": 0}, "hello_s"), ({"hello_s": 3, "dead_s": 3}, "dead_s"),
                                     ({"retransmit_s": 1}, "retransmit_s"), ({"tick_s": 1.5}, "tick_s"),
                                     ({"cost_per_ms": 0}, "cost_per_ms"), ({"ecmp": "yes"}, "ecmp"),
                                     ({"cost_tolerance_pct": -1}, "cost_tolerance_pct")])
def test_bad_options_name_the_field(kw, key):
    with pytest.raises(ConfigError, match=key):
        OspfOptions(**kw)


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="router id"):
        bird_config("10.64.0.300", [])
    with pytest.raises(ConfigError, match="log path"):
        bird_config("10.64.0.1", [], log_path='/tmp/a"; include "/etc/passwd')
    with pytest.raises(ConfigError, match="exported prefix"):
        bird_config("10.64.0.1", [], exported=("10.128.0.0/33",))
    with pytest.raises(ConfigError, match="interface name"):
        OspfInterface('fo"re', 1)
    with pytest.raises(ConfigError, match="cost"):
        OspfInterface("fore", 0)


def test_registered_daemon_driven_protocol():
    p = get_protocol("ospf", hello_s=1, dead_s=4)
    assert isinstance(p, Ospf) and isinstance(p, DaemonProtocol) and is_daemon_driven(p)
    assert p.options.dead_s == 4
    assert not is_daemon_driven(get_protocol("shortest-delay"))
    with pytest.raises(ConfigError, match="daemon-driven"):
        p.compute(grid_timeline(), 0)


def test_routing_layer_stays_pure():
    code = ("import sys, routing.ospf, routing.daemon; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('emulator', 'pyroute2', 'mininet')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
