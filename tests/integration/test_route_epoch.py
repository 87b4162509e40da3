"""Route tables switched at one instant by the delay daemon (``route_epoch``), counted on the wire.

h1 - r - h2. r's arrivals from h1 are held 1 ms by the userspace shaper. In r, fwmark 1 selects a table
that reaches h2 and fwmark 2 one with a blackhole for h2's subnet. h1 sends a numbered UDP datagram every
2 ms; the daemon is told to mark with 2 from T1 and with 1 again from T2. The reference is the send time
of each datagram, taken in this test: one due at r (sent + 1 ms) inside [T1, T2) must be lost, one outside
must arrive, judged only where the datagram's send call and the boundary are apart by more than a margin.
Without the epochs nothing is lost (the test fails), and a daemon that switched late or early loses the
wrong datagrams.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from dataclasses import replace

import pytest
from vethchain import veth_chain

from emulator.netns import entered, iproute_in
from emulator.shaping.base import LinkShape
from emulator.shaping.userspace import UserspaceShaper

pytestmark = pytest.mark.root

HOLD_MS = 1.0
PERIOD_S = 0.002
MARGIN_S = 0.0015  # datagrams this close to a boundary (send call to due) are not judged
TABLE_UP, TABLE_HOLE = 101, 102
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in Python's socket module


@pytest.fixture
def chain():
    with veth_chain("rep", ["h1", "r", "h2"], "10.81") as c:
        iprs = c.iprs
        ports = [replace(left, peer=right) for left, right in c.hops]  # held as they arrive at the right end
        iprs["h1"].route("add", dst="0.0.0.0/0", gateway="10.81.1.2")
        iprs["h2"].route("add", dst="0.0.0.0/0", gateway="10.81.2.1")
        r = iprs["r"]
        out = r.link_lookup(ifname="r-h2")[0]
        r.route("add", dst="10.81.2.0/24", oif=out, scope=253, table=TABLE_UP)
        r.route("add", dst="10.81.2.0/24", type="blackhole", table=TABLE_HOLE)
        r.rule("add", fwmark=1, table=TABLE_UP, priority=100)
        r.rule("add", fwmark=2, table=TABLE_HOLE, priority=101)
        yield c.names, iprs, ports


def _sockets(names: dict[str, str]) -> tuple[socket.socket, socket.socket]:
    with entered(f"/run/netns/{names['h2']}", "h2"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # every datagram of a run waits here until it ends (~500 x ~1 KiB of truesize): no overflow
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        rx.bind(("10.81.2.2", 9000))
    with entered(f"/run/netns/{names['h1']}", "h1"):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.settimeout(0.5)
    return tx, rx


def _send(tx: socket.socket, n: int, t0: float) -> list[tuple[float, float]]:
    """n datagrams, one every PERIOD_S from t0 (monotonic s); the (before, after) times of each send call."""
    times = []
    for seq in range(n):
        wait = t0 + seq * PERIOD_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        before = time.monotonic()
        tx.sendto(struct.pack("!I", seq) + bytes(60), ("10.81.2.2", 9000))
        times.append((before, time.monotonic()))
    return times


def _received(rx: socket.socket) -> set[int]:
    got = set()
    try:
        while True:
            got.add(struct.unpack("!I", rx.recv(2048)[:4])[0])
    except TimeoutError:
        return got


def test_epochs_switch_route_tables_at_their_instants(chain):
    names, iprs, ports = chain
    sh = UserspaceShaper()
    tx, rx = _sockets(names)
    try:
        for n, ipr in iprs.items():
            sh.prepare_node(n, f"/run/netns/{names[n]}", ipr)
        sh.set([(p, LinkShape(delay_ms=HOLD_MS, rate_mbps=1000.0)) for p in ports], lambda n: iprs[n])
        sh.route_epoch(1)
        _send(tx, 20, time.monotonic() + 0.05)  # neighbours resolved, path warm
        assert len(_received(rx)) == 20
        t0 = time.monotonic() + 0.1
        t1, t2 = t0 + 0.3, t0 + 0.6
        sh.route_epoch(2, int(t1 * 1e9))

        def second() -> None:  # one epoch waits at a time: the next is sent once the first is due
            time.sleep(max(0.0, t1 + 0.05 - time.monotonic()))
            sh.route_epoch(1, int(t2 * 1e9))

        th = threading.Thread(target=second)
        th.start()
        times = _send(tx, 450, t0)
        th.join()
        got = _received(rx)
        st = sh.stats()
        # marking ends: unmarked packets take the main table (r's connected route), stamps cleared as before
        sh.route_epoch(0)
        _send(tx, 20, time.monotonic() + 0.01)
        after = _received(rx)
    finally:
        tx.close()
        rx.close()
        sh.close()
    lost_inside, arrived_outside, judged_in, judged_out = [], [], 0, 0
    for seq, (before, after_call) in enumerate(times):
        due_lo, due_hi = before + HOLD_MS / 1e3, after_call + HOLD_MS / 1e3
        if due_lo >= t1 + MARGIN_S and due_hi < t2 - MARGIN_S:
            judged_in += 1
            if seq in got:
                lost_inside.append(seq)  # should have been lost and arrived
        elif due_hi < t1 - MARGIN_S or due_lo >= t2 + MARGIN_S:
            judged_out += 1
            if seq not in got:
                arrived_outside.append(seq)  # should have arrived and was lost
    assert judged_in >= 100 and judged_out >= 200, (judged_in, judged_out)
    assert not lost_inside, f"{len(lost_inside)} of {judged_in} datagrams due in [T1, T2) arrived: {lost_inside[:10]}"
    assert not arrived_outside, (f"{len(arrived_outside)} of {judged_out} datagrams due outside [T1, T2) lost: "
                                 f"{arrived_outside[:10]}")
    assert st["epoch_mark"] == 1 and st["epochs"] >= 3, st
    assert len(after) == 20, sorted(after)


# ------------------------------------------------------------------ the emulator's route epochs


def _kernel_table(emu, node: str) -> tuple[dict[str, tuple[str, int]], dict[int, int]]:
    """Read from ``node``'s kernel: its static routes {"prefix/len": (gateway, oif)} in the table its fwmark
    rule gives the delay daemon's mark now, and every fwmark rule {mark: table}."""
    from emulator import rtnl

    ipr = iproute_in(emu.node(node).ns_path, node)
    try:
        rules = {r.get_attr("FRA_FWMARK"): r.get_attr("FRA_TABLE") for r in ipr.get_rules(family=2)
                 if r.get_attr("FRA_FWMARK")}
        mark = emu.shaper.stats()["epoch_mark"]
        out = {}
        for r in ipr.get_routes(family=2, table=rules[mark]):
            if r.get("proto") == rtnl.RTPROT_STATIC and r["dst_len"]:
                out[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = (r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"))
        return out, rules
    finally:
        ipr.close()


def _wanted(emu, router: int) -> dict[str, tuple[str, int]]:
    """The routes the step's table asks of ``router`` (gateway and device of the veth pair that carries each
    next hop's link slot now), computed here from the table and the addressing."""
    from emulator.addressing import ip_str

    a, table, e = emu.addr, emu.routes, emu.ends
    out = {}
    for row, d in enumerate(table.destinations.tolist()):
        nh, l = int(table.next_hop[row, router]), int(table.link[row, router])
        if not a.is_router[d] and a.site_router[d] >= 0 and int(a.site_router[d]) in table.destinations:
            continue  # reached by its router's block route
        if nh < 0 or (nh == d and not a.is_router[d]):
            continue
        near = int(emu.link_a[l]) == router
        pfx, plen = (a.site_prefix[d], a.site_len[d]) if a.site_len[d] else (a.prefix[d], a.prefix_len[d])
        out[f"{ip_str(pfx)}/{plen}"] = (ip_str(e.addr_b[l] if near else e.addr_a[l]),
                                       int(e.ifindex_a[l] if near else e.ifindex_b[l]))
    return out


def _ping(emu, src: str, dst: str, count: int) -> list[float]:
    import re

    out = emu.node(src).cmd(f"ping -n -c {count} -i 0.05 -W 1 {emu.address_of(dst)}")
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def _predicted_rtt_ms(tl, step: int, a: str, b: str) -> float:
    from routing.graph import build_graph, path, path_delay_ms

    ia, ib = tl.node_index(a), tl.node_index(b)
    snap = tl.snapshot(step)
    g = build_graph(tl.link_a, snap, len(tl.nodes))
    return path_delay_ms(snap, path(g, ia, ib)[1]) + path_delay_ms(snap, path(g, ib, ia)[1])


def _epoch_emulation(make_emulation, tl):
    """An emulation of ``tl`` with route epochs and the userspace shaper at step 0: (emulation, its routers,
    the RTT c-1 - h-b with every delay 0 ms, the emulator's own cost: the lower of two medians, as load only
    adds to it)."""
    from emulator import shaping

    emu = make_emulation(tl, shaping.make_shaper("userspace")[0], route_switch="epoch")
    routers = [i for i in range(len(tl.nodes)) if emu.is_router[i]]
    zero = tl.delay_ms.copy()
    tl.delay_ms[:] = 0.0
    emu.apply_step(0)
    base = min(statistics.median(_ping(emu, "c-1", "h-b", 10)) for _ in range(2))
    tl.delay_ms[:] = zero
    emu.apply_step(0)
    return emu, routers, base


@pytest.mark.realtime
def test_emulation_steps_switch_tables_that_hold_each_steps_routes(make_emulation):
    """route_switch "epoch" on the hand-made grid (a handover, an outage, an antenna without satellite and
    back): with the next step's routes sent ahead (prepare_ahead; a handover's through its spare pair, up
    ahead), the step switches tables, and the table
    the kernel's rules give the daemon's mark holds exactly the step's routes, in every router; without
    (steps out of order) it changes the table in use in place. Pings cross each step with the RTT networkx
    predicts on the timeline, within max(1 ms, 3 %) of the zero-delay baseline."""
    import numpy as np
    from handmade import grid_timeline

    from emulator.network import EPOCH_MARKS, EPOCH_TABLES

    tl = grid_timeline()
    emu, routers, base = _epoch_emulation(make_emulation, tl)
    used = []
    for step, ahead in ((1, True), (2, True), (3, True), (4, True), (0, False), (1, True)):
        if ahead:
            emu.prepare_ahead(step - 1)
        stats = emu.apply_step(step)
        assert (stats.routes_ahead > 0) == ahead, (step, stats)
        if step in (1, 3, 4) and ahead:
            # gw-b's handovers (to sat-2-3, back to sat-2-2) find their spare pair waiting on the satellite:
            # it was up ahead, so those routes went ahead too and the step sends none (without: 18-36)
            assert stats.routes_changed == 0 and stats.routes_deleted == 0, (step, stats)
        used.append(stats.route_table)
        for r in routers:
            name = tl.nodes[r].name
            got, rules = _kernel_table(emu, name)
            assert rules == dict(zip(EPOCH_MARKS, EPOCH_TABLES)), (name, rules)
            assert got == _wanted(emu, r), f"step {step}, {name}"
        rtts = _ping(emu, "c-1", "h-b", 10)
        assert len(rtts) == 10, (step, rtts)
        predicted = _predicted_rtt_ms(tl, step, "c-1", "h-b")
        assert abs(statistics.median(rtts) - base - predicted) <= max(1.0, 0.03 * predicted), (step, rtts, predicted)
    # a switch at every step sent ahead, none at the one that was not
    assert used == [1, 0, 1, 0, 0, 1], used
    assert np.array_equal(emu.routes.next_hop, emu.protocol.compute(tl, 1, emu.applied).next_hop)


def _slot_timeline():
    """The hand-made grid over 8 steps with slot boundaries at steps 4 and 7, where both gateways' antennas
    change satellite (gw-a sat-0-0 -> sat-0-1 -> sat-0-0, gw-b sat-2-2 -> sat-2-3 -> sat-2-2), and
    ordinary steps between them: one ISL out at step 2 (its routes change in place, in both tables) and
    the ground links' delays drifting."""
    import numpy as np
    from handmade import GSL_A, GSL_B, OUTAGE_ISL, grid_timeline, sat_index

    from topologies.timeline import Reason, Timeline

    g = grid_timeline()
    n = 8

    def widen(x):
        return np.repeat(x[..., :1], n, axis=-1).copy()

    peer, state, delay = widen(g.peer), widen(g.state), widen(g.delay_ms)
    peer[GSL_A, 4:7], peer[GSL_B, 4:7] = sat_index(0, 1), sat_index(2, 3)
    state[OUTAGE_ISL, 2] = Reason.OUTAGE
    delay[[GSL_A, GSL_B], :] += 0.05 * np.arange(n, dtype=np.float32)
    return Timeline(start=g.start, step_s=g.step_s, nodes=g.nodes, link_a=g.link_a, link_class=g.link_class,
                    link_role=g.link_role, state=state, peer=peer, delay_ms=delay, rate_mbps=widen(g.rate_mbps),
                    loss_pct=widen(g.loss_pct), sat_lla=np.repeat(g.sat_lla[:, :1], n, axis=1).copy())


def _unmarked_table(emu, node: str) -> int:
    """The table of ``node``'s one rule without a fwmark at the preference for unmarked packets."""
    from emulator.network import EPOCH_UNMARKED_PREF

    ipr = iproute_in(emu.node(node).ns_path, node)
    try:
        tables = [r.get_attr("FRA_TABLE") for r in ipr.get_rules(family=2)
                  if r.get_attr("FRA_PRIORITY") == EPOCH_UNMARKED_PREF and not r.get_attr("FRA_FWMARK")]
    finally:
        ipr.close()
    assert len(tables) == 1, (node, tables)
    return tables[0]


@pytest.mark.realtime
@pytest.mark.parametrize("preinstall", [True, False], ids=["rest-sent-before", "rest-sent-at-the-step"])
def test_slot_boundary_table_filled_over_the_steps_before_it(make_emulation, monkeypatch, preinstall):
    """route_switch "epoch" with slot boundaries (steps where the ground antennas change satellite): the
    steps between them change the table in use in place, and the idle table gets the next boundary's routes
    a part each step before it, so that the boundary itself sends nothing and only switches tables. Checked
    in every router's kernel (the table the daemon's mark selects holds the step's routes), on the wire
    (pings from a host and from a gateway itself, whose own packets are unmarked and must keep using the
    table in use while the other fills) and in the step counts. Without the step before a boundary sending
    the rest (as when the route worker is late there), the boundary sends it into the idle table and still
    switches (in place, it would change the whole boundary in the table in use)."""
    from handmade import sat_index

    from emulator.network import EPOCH_TABLES

    # this grid's boundaries change a few dozen routes, which the step before would send on its own: filled
    # over several steps all the same (at scale a boundary's ~500k routes take longer than a step)
    monkeypatch.setattr("emulator.network.EPOCH_ONE_STEP_SHARE", 0.0)
    tl = _slot_timeline()
    emu, routers, base = _epoch_emulation(make_emulation, tl)
    assert emu._heavy.tolist() == [4, 7]
    tables, ahead, at_step = [], [], []
    emu.prepare_ahead(0)
    for step in range(1, 8):
        stats = emu.apply_step(step)
        if not preinstall and step + 1 in (4, 7):
            emu._preinstall = lambda until: False  # for this call only (the instance's own attribute)
        emu.prepare_ahead(step)  # as a run does: the next step's work right after this one's
        emu.__dict__.pop("_preinstall", None)
        if step in (1, 2, 3, 4, 5, 6):  # the idle table fills for the next boundary
            assert _unmarked_table(emu, "gw-b") == EPOCH_TABLES[emu._active], step
        tables.append(stats.route_table)
        ahead.append(stats.routes_ahead > 0)
        at_step.append(stats.routes_changed + stats.routes_deleted)
        for r in routers:
            name = tl.nodes[r].name
            got, _ = _kernel_table(emu, name)
            assert got == _wanted(emu, r), f"step {step}, {name}"
        for src, dst in (("c-1", "h-b"), ("gw-b", "c-1")):
            rtts = _ping(emu, src, dst, 10)
            assert len(rtts) == 10, (step, src, rtts)
            predicted = _predicted_rtt_ms(tl, step, src, dst)
            assert abs(statistics.median(rtts) - base - predicted) <= max(1.0, 0.03 * predicted), \
                (step, src, dst, rtts, predicted)
    # in place between the boundaries, a switch at each boundary, with all of its routes sent before it
    assert tables == [0, 0, 0, 1, 1, 1, 0], tables
    assert ahead == [False, False, False, True, False, False, True], ahead
    if preinstall:
        assert at_step[3] == 0 and at_step[6] == 0, at_step
    assert at_step[1] > 0 and at_step[2] > 0, at_step  # the outage's routes, in place
    assert emu.applied.peer[emu.antenna_slots].tolist() == [sat_index(0, 0), sat_index(2, 2)]


def _link_up(emu, node: int, name: str) -> bool:
    """Whether interface ``name`` in node ``node``'s namespace is administratively up (read with pyroute2)."""
    ipr = iproute_in(emu.node(emu.timeline.nodes[node].name).ns_path, emu.timeline.nodes[node].name)
    try:
        links = ipr.get_links(ifname=name)
    finally:
        ipr.close()
    assert len(links) == 1, (node, name)
    return bool(links[0]["flags"] & 1)  # IFF_UP


def test_spares_ahead_of_a_boundary_come_up_within_the_time_left(make_emulation):
    """Before a slot boundary the spare pairs waiting on their next satellites come up ahead (their routes
    go to the idle table through them), but only as many as a third of the time left allows at the
    measured cost of one: here one of the two, read in the kernel, then the other at the next call."""
    tl = _slot_timeline()
    emu, _routers, _base = _epoch_emulation(make_emulation, tl)
    emu.prepare_ahead(0)  # the spares move to their satellites of step 4 and come up
    emu.hold_spares_up([])  # down again: the next calls bring them up
    slots = emu.antenna_slots.tolist()
    spares = [(l, 1 - int(emu.ends.pair[l])) for l in slots]

    def up() -> list[bool]:
        out = []
        for l, p in spares:
            a = _link_up(emu, int(emu.link_a[l]), emu.addr.pair_end(l, p, 0)[0])
            b = _link_up(emu, int(emu.spare_at([l])[0]), emu.addr.pair_end(l, p, 1)[0])
            assert a == b, (l, a, b)
            out.append(a)
        return out

    assert up() == [False, False]
    from topologies.timeline import diff

    snap = emu.applied.apply(diff(emu.applied, emu.target(4)))
    emu._spare_up_ms = 1000.0  # one spare takes 1 s: a third of 4.5 s leaves time for one
    ready = emu._spares_ahead(snap, time.monotonic() + 0.05 + 4.5)
    assert len(ready) == 1 and sum(up()) == 1, (ready, up())
    ready = emu._spares_ahead(snap, None)
    assert ready.tolist() == sorted(slots) and up() == [True, True]
