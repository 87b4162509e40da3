"""A host's part of a clustered run (emulator.cluster.part.HostPart): validation, VNIs, VXLAN ends, and an
Emulation given one refusing what it cannot do yet. No root needed."""

from __future__ import annotations

import numpy as np
import pytest
from handmade import grid_timeline

from emulator.cluster.part import HostPart
from emulator.cluster.vxlan import VNI_MAX
from topologies.errors import ConfigError

ADDRS = ("10.9.0.1", "10.9.0.2", "10.9.0.3")


def part(**kw) -> HostPart:
    args = dict(host=1, host_of=np.array([0, 1, 1, 2]), underlay=ADDRS, underlay_ifindex=2)
    args.update(kw)
    return HostPart(**args)


def test_local_nodes_and_ends():
    p = part()
    assert p.local.tolist() == [False, True, True, False]
    e = p.end(7, 1, "x7", 40, other_node=3)
    assert (e.vni, e.local, e.remote, e.underlay_ifindex, e.ifname, e.ifindex) == (16, ADDRS[1], ADDRS[2], 2,
                                                                                   "x7", 40)
    # the other host's end of the same pair has the same VNI and the addresses swapped
    e0 = part(host=2).end(7, 1, "y7", 41, other_node=1)
    assert (e0.vni, e0.local, e0.remote) == (16, ADDRS[2], ADDRS[1])
    assert part(vni_base=1000).vni(0, 0) == 1000


@pytest.mark.parametrize("kw, key", [
    ({"host": 3}, "host"), ({"host": -1}, "host"), ({"host": True}, "host"),
    ({"host_of": np.array([0, 3])}, "host_of"), ({"host_of": np.array([0.0, 1.0])}, "host_of"),
    ({"underlay": ("10.9.0.1", "10.9.0.1", "10.9.0.3")}, "underlay"),
    ({"underlay": ("10.9.0.1", "nope", "10.9.0.3")}, "underlay address"),
    ({"underlay_ifindex": 0}, "underlay_ifindex"), ({"vni_base": 0}, "vni_base"),
    ({"vni_base": VNI_MAX + 1}, "vni_base"),
])
def test_bad_parts_are_refused(kw, key):
    with pytest.raises(ConfigError) as e:
        part(**kw)
    assert e.value.key == key


def test_vni_past_24_bits_is_refused():
    with pytest.raises(ConfigError, match="above"):
        part(vni_base=VNI_MAX - 2).vni(1, 1)


def test_emulation_with_a_part():
    from emulator.network import Emulation

    tl = grid_timeline()
    n = len(tl.nodes)
    host_of = np.arange(n) % 2
    with pytest.raises(ConfigError, match="places 3 nodes"):
        Emulation(tl, None, "shortest-delay", part=HostPart(0, np.zeros(3, np.int64), ADDRS[:2], 2))
    assert Emulation(tl, None, "ospf", part=HostPart(0, host_of, ADDRS[:2], 2)).daemon_driven
    emu = Emulation(tl, None, "shortest-delay", part=HostPart(1, host_of, ADDRS[:2], 2))
    assert emu.local.tolist() == (host_of == 1).tolist()
    assert Emulation(tl, None, "shortest-delay").local.all()


def test_underlay_is_subtracted_from_what_goes_to_another_host():
    p = part(underlay_ms=(1.5, 0.0, 0.25))
    assert p.sent_delay_ms(10.0, receiver=0) == 8.5  # node 0 is on host 0
    assert p.sent_delay_ms(10.0, receiver=3) == 9.75  # node 3 on host 2
    assert p.sent_delay_ms(10.0, receiver=2) == 10.0  # same host: nothing
    assert p.sent_delay_ms(1.0, receiver=0) == 0.0  # never below 0
    assert part().sent_delay_ms(10.0, receiver=0) == 10.0  # not measured: nothing
    for bad in ((1.0, 2.0), (1.0, float("nan"), 0.0), (1.0, -1.0, 0.0), (1.0, float("inf"), 0.0)):
        with pytest.raises(ConfigError, match="underlay_ms"):
            part(underlay_ms=bad)


def test_hosts_with_other_versions_are_refused():
    from emulator.cluster.agent import check_versions

    mine = {"python": "3.11.2", "ray": "2.60.0", "satnetem": "0.1.0"}
    check_versions(mine, [dict(mine), dict(mine)])
    with pytest.raises(ConfigError, match=r"^key .cluster.: host 1 runs ray 2\.59\.0 \(driver: 2\.60\.0\): every host"):
        check_versions(mine, [dict(mine), {**mine, "ray": "2.59.0"}])


def test_a_clock_offset_beyond_the_bound_is_refused():
    # exchanges built by hand: the host's clock 20 ms ahead, round trips of 1-3 ms (the shortest bounds it)
    from emulator.cluster.agent import check_clocks
    from emulator.cluster.clocks import offset

    t0 = np.array([0, 10_000_000, 20_000_000], np.int64) + 1_700_000_000_000_000_000
    rtt = np.array([3_000_000, 1_000_000, 2_000_000], np.int64)

    def host(ahead_ns: int):
        return offset(t0, t0 + rtt // 2 + ahead_ns, t0 + rtt)

    check_clocks([host(0), host(2_000_000)], 5.0)  # 2 ms: within the bound
    with pytest.raises(ConfigError, match=r"^key .max_clock_offset_ms.: host 1.s clock is \+20\.000 \+- 0\.500 ms off the driver's, beyond "
                                          r"max_clock_offset_ms 5"):
        check_clocks([host(0), host(20_000_000)], 5.0)
    check_clocks([host(0), host(5_400_000)], 5.0)  # 5.4 +- 0.5 ms may still be 4.9: not refused


class _RecordingShaper:
    """A shaper that records what it is asked: ``set`` (the general path, one item per port) and ``set_delays``
    (the fast path, by the numbers ``fast_id`` gave)."""

    name = "recording"

    def __init__(self) -> None:
        self.ids: dict = {}
        self.general: list = []
        self.fast: list = []

    def fast_id(self, port):
        return self.ids.setdefault(port, len(self.ids))

    def set(self, items, ipr_of):
        self.general += [(port, shape.delay_ms) for port, shape in items]

    def set_delays(self, ids, delay_ms, loss_pct, rate_mbps, queue_packets):
        port_of = {i: p for p, i in self.ids.items()}
        self.fast += [(port_of[int(i)], float(d)) for i, d in zip(ids, delay_ms)]
        return np.ones(len(ids), bool)


def test_a_part_shapes_the_directions_it_sends_and_no_other():
    """Each direction of a link is shaped by the host it leaves from, with the link's delay less the underlay's
    when it goes to another host. On a host's part, the first shaping of every link (the general path) and the
    next (the fast path, by port numbers) shape exactly those directions; a link's directions sent by other
    hosts are never asked of this host's shaper, and once numbered none goes the general way again."""
    from emulator.network import Emulation

    tl = grid_timeline()
    n = len(tl.nodes)
    host_of = np.arange(n, dtype=np.int64) % 3
    under = (0.5, 0.0, 0.25)  # this host (1) to hosts 0, 1, 2, ms
    sh = _RecordingShaper()
    emu = Emulation(tl, sh, "shortest-delay", part=HostPart(1, host_of, ADDRS, 2, underlay_ms=under))
    emu._pfar[:, 0] = tl.peer[:, 0]
    emu._port = lambda link, side, pair=None: (link, side)  # no namespace: the port is named by its direction
    links = np.arange(tl.n_links)

    def expected(step: int) -> set:
        # by hand from the timeline: direction 0 leaves the near end for the far one, direction 1 comes back
        out = set()
        for l in range(tl.n_links):
            a, b = int(tl.link_a[l]), int(tl.peer[l, 0])
            d = float(tl.delay_ms[l, step])
            for side, sender, receiver in ((0, a, b), (1, b, a)):
                if host_of[sender] == 1:
                    sent = d if host_of[receiver] == 1 else max(d - under[host_of[receiver]], 0.0)
                    out.add(((l, side), round(sent, 4)))
        return out

    emu._shape(links, tl.snapshot(0))
    assert {(p, round(d, 4)) for p, d in sh.general} == expected(0) and not sh.fast
    assert len(sh.general) == len(expected(0)) > 0
    sh.general.clear()
    emu._shape(links, tl.snapshot(1))  # every port numbered by now: all of them the fast way
    assert not sh.general
    assert {(p, round(d, 4)) for p, d in sh.fast} == expected(1) and len(sh.fast) == len(expected(1))
