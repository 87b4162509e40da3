"""The addressing plan: safe names, unique addresses and interface names, capacity limits."""

from __future__ import annotations

import ipaddress
import os

import numpy as np
import pytest
from handmade import GSL_A, OUTAGE_ISL, grid_timeline

from emulator.addressing import AddressPlan, check_node_name, ip_str
from topologies.errors import ConfigError


@pytest.mark.parametrize("bad", ["h;rm -rf /", "H-a", "1sat", "sat a", "sat$(id)", "a" * 32, "", "sat_1",
                                 "gw`x`", "h\n"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(ConfigError, match="not allowed"):
        check_node_name(bad)
    with pytest.raises(ConfigError, match="not allowed"):
        AddressPlan().assign(grid_timeline(names={"h-a": bad}))


def test_emulation_refuses_bad_input_before_building_anything():
    from emulator.clean import find_ours
    from emulator.network import Emulation

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"shaper.{name} used before validation")

    with pytest.raises(ConfigError, match="not allowed"):
        Emulation(grid_timeline(names={"gw-a": "gw;reboot"}), Untouchable(), "shortest-delay", run_id="badname")
    with pytest.raises(ConfigError, match="more links than names allow"):
        Emulation(grid_timeline(), Untouchable(), "shortest-delay", run_id="toosmall",
                  address_plan=AddressPlan(link_pool="10.0.0.0/27"))
    if os.geteuid() == 0:
        assert find_ours("badname") == (set(), set()) and find_ours("toosmall") == (set(), set())


def test_capacity_limits_raise():
    tl = grid_timeline()
    with pytest.raises(ConfigError, match="more links than names allow"):
        AddressPlan(link_pool="10.0.0.0/27").assign(tl)  # 16 slots for 37
    AddressPlan(link_pool="10.0.0.0/25").assign(tl)  # 64 slots suffice
    with pytest.raises(ConfigError, match="more nodes than names allow"):
        AddressPlan(loopback_pool="10.64.0.0/28").assign(tl)  # 14 loopbacks for 18 routers
    with pytest.raises(ConfigError, match="more hosts than names allow"):
        AddressPlan(host_pool="10.128.0.0/23", host_prefix_len=24).assign(tl)  # 2 subnets for 3


@pytest.mark.parametrize("kw", [dict(link_pool="192.168.0.0/16"), dict(link_pool="10.64.0.0/12"),
                                dict(host_prefix_len=31), dict(link_pool="nonsense")])
def test_bad_plans(kw):
    with pytest.raises(ConfigError):
        AddressPlan(**kw)


def test_addresses_unique_inside_10_8_and_paired():
    tl = grid_timeline()
    a = AddressPlan().assign(tl)
    routers = np.flatnonzero(a.is_router)
    spare = np.flatnonzero(a.has_spare)
    assert spare.tolist() == [GSL_A, GSL_A + 1]  # one spare veth pair per gateway antenna, none elsewhere
    all_addrs = np.concatenate([a.loopback[routers], a.addr_a, a.addr_b, a.spare_addr_a[spare],
                                a.spare_addr_b[spare]])
    assert len(np.unique(all_addrs)) == len(all_addrs)
    for l in spare.tolist():  # a spare's ends share a /31 too
        assert a.spare_addr_b[l] == a.spare_addr_a[l] + 1 and a.spare_addr_a[l] % 2 == 0
    assert all(ipaddress.IPv4Address(int(x)) in ipaddress.IPv4Network("10.0.0.0/8") for x in all_addrs)
    for l in range(tl.n_links):  # both ends in one prefix of the link's length
        net = ipaddress.IPv4Network(f"{ip_str(a.addr_a[l])}/{a.link_prefix_len[l]}", strict=False)
        assert ipaddress.IPv4Address(int(a.addr_b[l])) in net
    # the first site (the lowest-numbered router with hosts; here one host): subnet 10.128.0.0/24, loopback
    # 10.128.1.1, block 10.128.0.0/23
    hosts = np.flatnonzero(~a.is_router)
    first = min(int(a.site_router[h]) for h in hosts)
    [h] = [int(h) for h in hosts if a.site_router[h] == first]
    assert a.address_of(h) == "10.128.0.2" and ip_str(a.gateway_addr[h]) == "10.128.0.1"
    assert a.address_of(first) == "10.128.1.1" and (ip_str(a.site_prefix[first]), a.site_len[first]) == ("10.128.0.0", 23)
    assert a.address_of(tl.node_index("sat-0-0")) == "10.64.0.1"  # no hosts: from the loopback pool
    again = AddressPlan().assign(grid_timeline())  # deterministic
    for f in ("loopback", "prefix", "prefix_len", "addr_a", "addr_b", "ifindex_a", "ifindex_b"):
        assert np.array_equal(getattr(again, f), getattr(a, f))
    assert again.ifname_a == a.ifname_a and again.ifname_b == a.ifname_b


def test_each_site_block_holds_its_router_and_its_hosts_and_no_one_else():
    """Checked with ipaddress, from the arrays: a router with hosts and those hosts are inside its aligned
    block; no other address of the plan is; blocks do not overlap."""
    tl = grid_timeline()
    a = AddressPlan().assign(tl)
    sites = np.flatnonzero(a.site_len > 0)
    assert len(sites) and (a.site_router[sites] == -1).all()
    blocks = {int(r): ipaddress.IPv4Network(f"{ip_str(a.site_prefix[r])}/{a.site_len[r]}") for r in sites}
    for x, bx in blocks.items():
        for y, by in blocks.items():
            assert x == y or not bx.overlaps(by)
    owner = {}
    for r in np.flatnonzero(a.is_router).tolist():
        owner[int(a.loopback[r])] = r
    for h in np.flatnonzero(~a.is_router).tolist():
        owner[int(a.addr_a[a.access_link[h]])] = int(a.site_router[h])  # a host counts as its router's site
        owner[int(a.addr_b[a.access_link[h]])] = int(a.site_router[h])
    everything = np.concatenate([a.addr_a, a.addr_b, a.spare_addr_a[a.has_spare], a.spare_addr_b[a.has_spare],
                                 a.loopback[a.is_router]])
    for x in everything.tolist():
        inside = [r for r, b in blocks.items() if ipaddress.IPv4Address(int(x)) in b]
        assert inside == ([owner[int(x)]] if int(x) in owner and owner[int(x)] in blocks else []), ip_str(x)
    # and a covered destination is a host whose router is a destination too
    dest = np.arange(len(tl.nodes))
    cov = a.covered_by(dest)
    assert np.array_equal(cov, np.where(a.is_router, -1, a.site_router))
    assert (a.covered_by(np.flatnonzero(~a.is_router)) == -1).all()  # routers not among them: not covered


def test_interface_names_short_and_unique_per_namespace_at_every_step():
    tl = grid_timeline()
    a = AddressPlan().assign(tl)
    assert a.ifname_a[OUTAGE_ISL] == "fore" and a.ifname_b[OUTAGE_ISL] == "aft"
    assert a.ifname_a[GSL_A] == "ant0" and a.ifname_b[GSL_A] == f"g{GSL_A}"
    assert a.spare_ifname_a[GSL_A] == "ant0b" and a.spare_ifname_b[GSL_A] == f"g{GSL_A}b"
    every = np.concatenate([a.ifindex_a, a.ifindex_b, a.spare_ifindex_a[a.has_spare], a.spare_ifindex_b[a.has_spare]])
    assert len(np.unique(every)) == len(every) and every.min() == 2  # unique emulation-wide (moves keep them)
    for k in range(tl.n_steps):
        per_ns: dict[int, list[str]] = {}
        idx_ns: dict[int, list[int]] = {}
        for l in range(tl.n_links):
            far = int(tl.peer[l, k]) if tl.peer[l, k] >= 0 else int(tl.link_a[l])
            for node, name, idx in ((int(tl.link_a[l]), a.ifname_a[l], a.ifindex_a[l]),
                                    (far, a.ifname_b[l], a.ifindex_b[l])):
                per_ns.setdefault(node, []).append(name)
                idx_ns.setdefault(node, []).append(int(idx))
        for node, names in per_ns.items():
            assert len(set(names)) == len(names), (k, tl.nodes[node].name, names)
            assert all(len(n) <= 15 for n in names)
            assert 1 not in idx_ns[node] and len(set(idx_ns[node])) == len(idx_ns[node])


def test_not_a_grid_falls_back_to_numbered_names():
    tl = grid_timeline()
    tl.link_role[:] = 0  # every ISL "intra": a satellite would have two "fore"
    a = AddressPlan().assign(tl)
    assert a.ifname_a[0] == "isl0" and a.ifname_b[0] == "isl0"


def test_link_ends_follow_the_pair_in_use():
    from emulator.addressing import LinkEnds

    a = AddressPlan().assign(grid_timeline())
    e = LinkEnds(a)
    assert e.ifname_b[GSL_A] == f"g{GSL_A}" and e.addr_a[GSL_A] == a.addr_a[GSL_A]
    e.use(GSL_A, 1)
    assert (e.ifname_a[GSL_A], e.ifname_b[GSL_A]) == ("ant0b", f"g{GSL_A}b")
    assert (e.addr_a[GSL_A], e.addr_b[GSL_A]) == (a.spare_addr_a[GSL_A], a.spare_addr_b[GSL_A])
    assert (e.ifindex_a[GSL_A], e.ifindex_b[GSL_A]) == (a.spare_ifindex_a[GSL_A], a.spare_ifindex_b[GSL_A])
    assert e.ifname_a[GSL_A + 1] == "ant0" and e.pair[GSL_A + 1] == 0  # the other antenna is untouched
    e.use(GSL_A, 0)
    assert e.ifname_b[GSL_A] == f"g{GSL_A}" and e.ifindex_a[GSL_A] == a.ifindex_a[GSL_A]
    with pytest.raises(IndexError):
        e.use(OUTAGE_ISL, 1)  # an ISL has one pair
