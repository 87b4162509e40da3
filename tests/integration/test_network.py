"""The live network against what a user would check: pings, RTTs, handovers, outages, teardown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from statistics import median

import pytest
from handmade import GSL_A, GSL_B, OUTAGE_ISL, grid_timeline

from routing.graph import build_graph, path, path_delay_ms

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def ping(emu, src: str, dst_addr: str, count: int = 3, interval_s: float = 0.1, extra: str = "") -> tuple[int, list[float]]:
    """(packets received, RTTs in ms) of ``count`` pings from node ``src``."""
    out = emu.node(src).cmd(f"ping -n -c {count} -i {interval_s} -W 1 {extra} {dst_addr}")
    if "Network is unreachable" in out:
        return 0, []
    m = re.search(r"(\d+) received", out)
    assert m, out
    return int(m.group(1)), [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def intf_names(emu, node: str) -> set[str]:
    out = emu.node(node).cmd("ls /sys/class/net")
    return set(out.split())


def oper_up(emu, node: str, ifname: str) -> bool:
    flags = int(emu.node(node).cmd(f"cat /sys/class/net/{ifname}/flags").strip(), 16)
    return bool(flags & 1)


@pytest.mark.realtime
def test_rtt_equals_prediction(make_emulation, backend):
    from emulator import shaping

    tl = grid_timeline()
    in_vm = os.environ.get("SATNETEM_IN_VM") == "1"
    shaper, _ = shaping.make_shaper(backend)
    emu = make_emulation(tl, shaper)
    ia, ib = tl.node_index("h-a"), tl.node_index("h-b")
    snap = tl.snapshot(0)
    graph = build_graph(tl.link_a, snap, len(tl.nodes))
    nodes_ab, links_ab, _ = path(graph, ia, ib)
    _, links_ba, _ = path(graph, ib, ia)
    isl_hops = sum(1 for l in links_ab if tl.link_class[l] == 0)
    assert isl_hops >= 4
    # the kernel forwards on that path: each router's installed next hop is the predicted one
    for here, nxt in zip(nodes_ab[1:-2], nodes_ab[2:-1]):
        assert emu.routes.routes_of(here)[ib][0] == nxt
    predicted_ms = path_delay_ms(snap, links_ab) + path_delay_ms(snap, links_ba)
    got, rtts = ping(emu, "h-a", emu.address_of("h-b"), count=20, interval_s=0.05)
    assert got == 20
    emu.apply_step(4)  # same topology, every delay 0 ms
    got0, base = ping(emu, "h-a", emu.address_of("h-b"), count=20, interval_s=0.05)
    assert got0 == 20
    measured_ms = median(rtts) - median(base)
    if in_vm:
        # Under qemu's emulated CPU every delayed traversal costs timer latency that the zero-delay
        # baseline does not have, and more the longer the wait: measured beside the emulation with
        # iproute2's netem at the path's median link delay, and added (a real kernel has none of it: the
        # bound below is the one users get).
        delayed = [float(snap.params[l, 0]) for l in links_ab + links_ba if snap.params[l, 0] > 0]
        predicted_ms += len(delayed) * vm_netem_overhead_ms(median(delayed))
    # the emulated CPU's timer latency also varies from one measurement window to the next (in the VM only)
    vm_allowance_ms = VM_NOISE_MS_PER_TRAVERSAL * sum(1 for l in links_ab + links_ba if snap.params[l, 0] > 0) \
        if in_vm else 0.0
    assert abs(measured_ms - predicted_ms) <= max(1.0, 0.03 * predicted_ms) + vm_allowance_ms, (
        measured_ms, predicted_ms, vm_allowance_ms)


#: Inside the qemu VM only: how much the timer excess per delayed traversal varies between measurement
#: windows. Measured there with iproute2's netem alone (no satnetem): the median RTT over 6 traversals of 5 ms,
#: same configuration, three windows a minute apart: 33.7, 33.8 and 35.2 ms, a spread of 1.5 ms = 0.25 ms per
#: traversal (0.1 was assumed before; CI then failed by 0.17 ms per traversal over 16 traversals).
VM_NOISE_MS_PER_TRAVERSAL = 0.25


def vm_netem_overhead_ms(delay_ms: float) -> float:
    """Extra one-way latency of a netem-delayed traversal on this machine at ``delay_ms``, from a ping
    across one veth pair with and without ``delay_ms`` of netem on one side, set by iproute2's ``tc`` (not
    by satnetem).

    Under qemu's emulated CPU the excess grows with the wait: the platform's timer wakes later from a
    longer idle spell (measured in the stock-kernel VM here: about 0.1 ms per traversal at 1 ms, 0.2-0.5 ms
    at 5 ms, 0.3-0.6 ms at 10 ms; the sandbox host's own sleeps overshoot 93 us at 1 ms and ~210 us at
    10 ms). So it is measured at the delay the test uses, not at a fixed one.
    """
    from pyroute2 import IPRoute, netns

    names = (f"snvm-{os.getpid()}-a", f"snvm-{os.getpid()}-b")
    try:
        for n in names:
            netns.create(n)
        with IPRoute() as ipr:
            ipr.link("add", ifname="snvm0", kind="veth", peer={"ifname": "snvm1", "net_ns_fd": names[1]},
                     net_ns_fd=names[0])
        for n, ifn, ip in ((names[0], "snvm0", "10.250.0.1"), (names[1], "snvm1", "10.250.0.2")):
            with _ipr_in(n) as ipr:
                idx = ipr.link_lookup(ifname=ifn)[0]
                ipr.addr("add", index=idx, address=ip, prefixlen=30)
                ipr.link("set", index=idx, state="up")

        def rtt() -> float:
            out = subprocess.run(["ip", "netns", "exec", names[0], "ping", "-n", "-c", "40", "-i", "0.05",
                                  "10.250.0.2"], capture_output=True, text=True, timeout=60).stdout
            return median(float(x) for x in re.findall(r"time=([\d.]+) ms", out))

        base = rtt()
        subprocess.run(["ip", "netns", "exec", names[0], "tc", "qdisc", "add", "dev", "snvm0", "root",
                        "handle", "1:", "netem", "delay", f"{round(delay_ms * 1000)}us"], check=True)
        return max(0.0, rtt() - base - delay_ms)
    finally:
        for n in names:
            try:
                netns.remove(n)
            except OSError:
                pass


def _ipr_in(name: str):
    from emulator.netns import iproute_in

    return iproute_in(f"/var/run/netns/{name}")


def test_handover_switches_to_the_waiting_pair_and_traffic_resumes(make_emulation, backend):
    from emulator import shaping

    tl = grid_timeline()
    emu = make_emulation(tl, shaping.make_shaper(backend)[0])
    dst = emu.address_of("h-b")
    assert ping(emu, "h-a", dst)[0] == 3
    first, spare = f"g{GSL_B}", f"g{GSL_B}b"
    assert oper_up(emu, "sat-2-2", first) and oper_up(emu, "gw-b", "ant0")
    # the second pair waits, down, on the satellite the antenna hands over to at step 1
    assert spare in intf_names(emu, "sat-2-3") and not oper_up(emu, "sat-2-3", spare)
    stats = emu.apply_step(1)
    assert stats.handovers == 1 and stats.links_down == 1 and stats.moves_in_step == 0
    assert oper_up(emu, "sat-2-3", spare) and oper_up(emu, "gw-b", "ant0b")
    assert not oper_up(emu, "sat-2-2", first) and not oper_up(emu, "gw-b", "ant0")
    assert ping(emu, "h-a", dst)[0] == 3
    # and back (a step can be reached from any applied state): the first pair is still on sat-2-2
    assert emu.apply_step(0).moves_in_step == 0
    assert oper_up(emu, "sat-2-2", first) and not oper_up(emu, "sat-2-3", spare)
    assert ping(emu, "h-a", dst)[0] == 3


def rtt_error_ms(emu, tl, step: int, base_ms: float) -> tuple[float, float]:
    """(|measured - predicted| RTT c-1 <-> h-b, predicted) at ``step``, ms; ``base_ms`` is the
    zero-delay RTT on the same path (the emulator's own overhead)."""
    ia, ib = tl.node_index("c-1"), tl.node_index("h-b")
    snap = tl.snapshot(step)
    graph = build_graph(tl.link_a, snap, len(tl.nodes))
    predicted = path_delay_ms(snap, path(graph, ia, ib)[1]) + path_delay_ms(snap, path(graph, ib, ia)[1])
    got, rtts = ping(emu, "c-1", emu.address_of("h-b"), count=10, interval_s=0.05)
    assert got == 10
    return abs(median(rtts) - base_ms - predicted), predicted


@pytest.mark.realtime
def test_spares_moved_ahead_or_during_the_step_carry_the_predicted_rtt(make_emulation):
    """gw-b's antenna visits three satellites: the handover to the third finds the spare pair on the
    first (no prepare_ahead between the steps) and moves it during the step; prepare_ahead puts it in
    place for the next one, which then moves nothing. Shaping follows the pair either way."""
    from handmade import sat_index

    from emulator import shaping

    tl = grid_timeline()
    tl.peer[GSL_B, 2] = sat_index(2, 0)  # sat-2-2, sat-2-3, sat-2-0, sat-2-3, sat-2-2
    emu = make_emulation(tl, shaping.make_shaper("userspace")[0])
    emu.apply_step(4)  # every delay 0: the baseline
    base = median(ping(emu, "c-1", emu.address_of("h-b"), count=10, interval_s=0.05)[1])
    assert emu.apply_step(0).moves_in_step == 0
    assert emu.apply_step(1).moves_in_step == 0  # to the spare placed at build
    stats = emu.apply_step(2)
    assert stats.handovers == 2 and stats.moves_in_step == 1  # (gw-a loses its satellite too)
    assert oper_up(emu, "sat-2-0", f"g{GSL_B}")
    err, predicted = rtt_error_ms(emu, tl, 2, base)
    assert err <= max(1.0, 0.03 * predicted), (err, predicted)
    assert emu.apply_step(3).moves_in_step == 0  # the other pair is still on sat-2-3
    assert emu.prepare_ahead(3) == 1  # step 4 wants sat-2-2: the idle pair goes there now
    assert f"g{GSL_B}" in intf_names(emu, "sat-2-2") and f"g{GSL_B}" not in intf_names(emu, "sat-2-0")
    assert not oper_up(emu, "sat-2-2", f"g{GSL_B}")
    assert emu.prepare_ahead(3) == 0  # nothing left to do
    assert emu.apply_step(4).moves_in_step == 0
    tl.delay_ms[:, 4] = tl.delay_ms[:, 0]  # (step 4 with step 0's delays, to check the shaping)
    emu.apply_step(4)
    err, predicted = rtt_error_ms(emu, tl, 4, base)
    assert err <= max(1.0, 0.03 * predicted), (err, predicted)


def _end_view(emu, node: str, ifname: str) -> dict:
    """What the kernel says of one interface of ``node``, less what a move or a handover changes (its
    state, counters, link ids): index, group, MTU, addresses, IPv6 address generation, IPv4 forwarding,
    the kinds of its qdiscs."""
    nd = emu.node(node)
    link = json.loads(nd.cmd(f"ip -d -j link show dev {ifname}"))[0]
    addrs = json.loads(nd.cmd(f"ip -j addr show dev {ifname}"))[0].get("addr_info", [])
    qdiscs = json.loads(nd.cmd(f"tc -j qdisc show dev {ifname}") or "[]")
    return {"ifindex": link["ifindex"], "group": link.get("group"), "mtu": link["mtu"],
            "addrs": sorted((a["family"], a["local"], a["prefixlen"]) for a in addrs),
            "addrgenmode": link.get("inet6_addr_gen_mode"), "kind": link.get("linkinfo", {}).get("info_kind"),
            "forwarding": nd.cmd(f"cat /proc/sys/net/ipv4/conf/{ifname}/forwarding").strip(),
            "qdiscs": sorted(q["kind"] for q in qdiscs)}


@pytest.mark.realtime
def test_remade_spares_are_the_pairs_as_built_and_not_deletions_from_outside(make_emulation):
    """A spare pair is deleted where it waits and made again at its antenna's next satellite (emulator/spares.py),
    during a step or ahead of it. The kernel's view of both ends after it (index, group, addresses,
    forwarding, qdiscs once shaped) is its view of the same ends before; the old satellite has no end left;
    the run's watch for interfaces deleted from outside takes those deletions as the run's own, and still
    names one deleted from outside."""
    from handmade import sat_index

    from emulator import shaping
    from emulator.watchdog import link_deletions

    tl = grid_timeline()
    tl.peer[GSL_B, 2] = sat_index(2, 0)  # sat-2-2, sat-2-3, sat-2-0, sat-2-3, sat-2-2
    emu = make_emulation(tl, shaping.make_shaper("userspace")[0])
    check, watch = link_deletions(emu, [n.name for n in tl.nodes])
    assert check is not None and watch is not None
    try:
        near, far = "ant0", f"g{GSL_B}"  # pair 0 of gw-b's antenna: sat-2-2 at steps 0-1 (up, then down)
        emu.apply_step(1)
        before = (_end_view(emu, "gw-b", near), _end_view(emu, "sat-2-2", far))
        assert emu.apply_step(2).moves_in_step == 1  # remade at sat-2-0 during the step, and taken over
        assert far not in intf_names(emu, "sat-2-2") and oper_up(emu, "sat-2-0", far)
        assert (_end_view(emu, "gw-b", near), _end_view(emu, "sat-2-0", far)) == before
        emu.apply_step(3)  # back to sat-2-3, where pair 1 waited
        assert emu.prepare_ahead(3) == 1  # pair 0 remade at sat-2-2 ahead of step 4
        assert far not in intf_names(emu, "sat-2-0") and not oper_up(emu, "sat-2-2", far)
        assert emu.apply_step(4).moves_in_step == 0
        assert (_end_view(emu, "gw-b", near), _end_view(emu, "sat-2-2", far)) == before
        assert ping(emu, "h-a", emu.address_of("h-b"))[0] == 3
        assert check() is None  # four deletions (both ends, twice), all the run's own
        emu.node("sat-0-0").cmd(f"ip link del {sorted(intf_names(emu, 'sat-0-0') - {'lo'})[0]}")
        deadline = time.monotonic() + 2
        while (said := check()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said is not None and "of sat-0-0 was deleted from outside the run" in said, said
    finally:
        watch.close()


def test_isl_in_outage_carries_nothing(make_emulation, backend):
    from emulator import shaping

    tl = grid_timeline()
    emu = make_emulation(tl, shaping.make_shaper(backend)[0])
    near, far = "sat-1-0", "sat-1-1"
    far_addr = emu.addr.addr_b[OUTAGE_ISL]
    from emulator.addressing import ip_str

    # step 0: the ISL carries pings forced onto it
    assert ping(emu, near, ip_str(far_addr), extra="-I fore")[0] == 3
    emu.apply_step(1)  # OUTAGE on sat-1-0 -> sat-1-1
    assert not oper_up(emu, near, "fore") and not oper_up(emu, far, "aft")
    assert ping(emu, near, ip_str(far_addr), extra="-I fore")[0] == 0
    # no installed route uses the link, and traffic between the hosts goes around it
    assert not (emu.routes.link == OUTAGE_ISL).any()
    assert "dev fore" not in emu.node(near).cmd("ip route")
    assert ping(emu, "h-a", emu.address_of("h-b"))[0] == 3
    assert ping(emu, "h-a", emu.address_of(far))[0] == 3  # the far satellite is still reachable


def test_antenna_without_satellite_then_back(make_emulation):
    tl = grid_timeline()
    emu = make_emulation(tl)
    dst = emu.address_of("h-b")
    emu.apply_step(2)  # gw-a's antenna has no satellite: its pair goes down where it is
    assert not oper_up(emu, "gw-a", "ant0") and not oper_up(emu, "sat-0-0", f"g{GSL_A}")
    assert ping(emu, "h-a", dst, count=2)[0] == 0
    emu.apply_step(3)  # on sat-0-1, where the second pair has waited since the build
    assert oper_up(emu, "sat-0-1", f"g{GSL_A}b") and oper_up(emu, "gw-a", "ant0b")
    assert ping(emu, "h-a", dst)[0] == 3
    assert ping(emu, "c-1", dst)[0] == 3  # the compute node reaches the ground too


def test_applying_a_step_twice_changes_nothing(make_emulation):
    tl = grid_timeline()
    emu = make_emulation(tl)
    emu.apply_step(1)
    routes = {n: emu.node(n).cmd("ip route") for n in ("gw-b", "sat-2-3", "sat-1-0")}
    again = emu.apply_step(1)
    assert (again.links_up, again.links_down, again.handovers, again.param_changes,
            again.routes_changed, again.routes_deleted) == (0, 0, 0, 0, 0, 0)
    assert routes == {n: emu.node(n).cmd("ip route") for n in routes}


def delayd_pids() -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"emulator.shaping.delayd" in (d / "cmdline").read_bytes():
                    out.add(int(d.name))
            except OSError:
                pass
    return out


def test_stop_leaves_no_process_or_namespace(make_emulation, backend):
    from emulator import shaping
    from emulator.clean import find_ours

    daemons_before = delayd_pids()
    tl = grid_timeline()
    emu = make_emulation(tl, shaping.make_shaper(backend)[0])
    assert emu.pids == []  # no shell until one is asked for
    emu.node("sat-1-1").cmd("true")
    pids = emu.pids
    sleeper = emu.node("h-a").popen(["sleep", "300"])  # a process started in a node dies with it
    deadline = time.monotonic() + 30  # slow under the emulated CPU of the netem VM
    while sleeper.pid not in find_ours(emu.run_id)[0] and time.monotonic() < deadline:
        time.sleep(0.05)  # nsenter joins the namespace just after it starts
    pids2, inodes = find_ours(emu.run_id)
    assert len(pids) == 1 and len(inodes) == len(tl.nodes) and set(pids) < pids2
    emu.stop()
    emu.stop()  # idempotent
    assert find_ours(emu.run_id) == (set(), set())
    assert not [p for p in pids2 if alive(p)]
    assert not [p for p in delayd_pids() - daemons_before if alive(p)]
    sleeper.wait(timeout=5)


def test_clean_after_kill_9(tmp_path, backend):
    from emulator.clean import clean, find_ours

    daemons_before = delayd_pids()
    run_id = f"kill9-{os.getpid()}"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from handmade import grid_timeline
        from emulator.network import Emulation
        from emulator.shaping import make_shaper
        emu = Emulation(grid_timeline(), make_shaper({backend!r})[0], "shortest-delay", run_id={run_id!r})
        emu.build()
        emu.node("h-a").popen(["sleep", "300"])
        print("READY", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", line
        pids, inodes = find_ours(run_id)
        assert len(inodes) == len(grid_timeline().nodes)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # as a user would after a crash: satnetem clean
        r = subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run_id], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        report = clean(run_id)  # a second clean finds nothing more
        assert report.ok
        # the shells may die with the killed emulator (their pty hangs up); the process started in a
        # node does not, and clean finds it through the namespace recorded in the state file
        assert "killed" in r.stdout
        assert not [p for p in pids - {proc.pid} if alive(p)]
        deadline = time.monotonic() + 5
        while [p for p in delayd_pids() - daemons_before if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in delayd_pids() - daemons_before if alive(p)], "delay daemon outlived the crash"
        assert find_ours(run_id) == (set(), set())
        assert not Path(f"/run/satnetem/{run_id}.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        clean(run_id)


def _kernel_routes(emu, node: str) -> dict[str, tuple[str, int]]:
    """{"prefix/len": (gateway, oif)} of the routes satnetem installed in ``node`` (proto static)."""
    from emulator import rtnl
    from emulator.netns import iproute_in

    ipr = iproute_in(emu.node(node).ns_path, node)
    try:
        out = {}
        for r in ipr.get_routes(family=2, table=254):
            if r.get("proto") != rtnl.RTPROT_STATIC or not r["dst_len"]:
                continue
            out[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = (r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"))
        return out
    finally:
        ipr.close()


def _table_routes(emu, router: int) -> dict[str, tuple[str, int]]:
    """The same, as the route table of the last applied step says they must be."""
    from emulator.addressing import ip_str

    a, table = emu.addr, emu.routes
    dests = table.destinations.tolist()
    row_of = {d: k for k, d in enumerate(dests)}
    out = {}
    for row, d in enumerate(dests):
        nh, l = int(table.next_hop[row, router]), int(table.link[row, router])
        site = int(a.site_router[d]) if not a.is_router[d] else -1
        if site >= 0 and site in row_of:
            # a host behind a router that is a destination: the route to that router's block reaches it,
            # which is right only if the table sends it the same way (or it is on-link here)
            r = row_of[site]
            assert router == site or (nh, l) == (int(table.next_hop[r, router]), int(table.link[r, router])), d
            continue
        if nh < 0 or (nh == d and not a.is_router[d]):  # none, or on-link (the connected route serves it)
            continue
        near, e = int(emu.link_a[l]) == router, emu.ends  # e: the veth pair that carries each slot now
        gw = e.addr_b[l] if near else e.addr_a[l]
        oif = e.ifindex_a[l] if near else e.ifindex_b[l]
        pfx, plen = (a.site_prefix[d], a.site_len[d]) if a.site_len[d] else (a.prefix[d], a.prefix_len[d])
        out[f"{ip_str(pfx)}/{plen}"] = (ip_str(gw), int(oif))
    return out


def test_kernel_routes_equal_the_route_table_step_by_step(make_emulation):
    """Every router's installed routes (packed in batches, sent to all namespaces before any answer is
    read) are the table's, through handovers, an outage, an idle antenna and back to step 0."""
    tl = grid_timeline()
    emu = make_emulation(tl)
    routers = [i for i in range(len(tl.nodes)) if emu.is_router[i]]
    for step in (0, 1, 2, 3, 0):
        if step or emu.applied.step != 0:
            emu.apply_step(step)
        for r in routers:
            name = tl.nodes[r].name
            assert _kernel_routes(emu, name) == _table_routes(emu, r), f"step {step}, {name}"


def test_held_packets_leave_with_the_mark_they_came_with(make_emulation):
    """The userspace backend carries a packet's arrival time in skb->mark while it holds it; after the
    hold the mark is what it was (0), so fwmark rules inside a node see what they would without it."""
    from emulator import shaping

    shaper = shaping.make_shaper("userspace")[0]
    emu = make_emulation(grid_timeline(), shaper)
    h = emu.node("h-b")
    for rule in ("-p icmp -m mark ! --mark 0", "-p icmp"):
        h.cmd(f"iptables -t mangle -A INPUT {rule}")
    assert ping(emu, "h-a", emu.address_of("h-b"), count=5)[0] == 5
    out = h.cmd("iptables -t mangle -L INPUT -v -n -x")
    counts = [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]  # rules in order
    assert len(counts) == 2, out
    marked, total = counts
    assert total >= 5 and marked == 0, out
    assert shaper.stats()["stamped"] > 0  # the arrivals were stamped (and so held from their arrival)


def test_routes_prefetched_between_steps_are_the_steps_own(make_emulation):
    """A route table computed between steps (prepare_ahead) is used by the step only if the state it was
    computed on is the one the step reaches: the kernel then holds exactly what the protocol computes
    afresh on that state; a failure injected after the prefetch makes the step compute around it."""
    import dataclasses

    import numpy as np

    from routing.base import get_protocol
    from topologies.timeline import Reason

    tl = grid_timeline()
    emu = make_emulation(tl)
    routers = [i for i in range(len(tl.nodes)) if emu.is_router[i]]
    for step in (1, 2, 3):
        emu.prepare_ahead(step - 1)
        stats = emu.apply_step(step)
        assert stats.routes_prefetched, step
        fresh = get_protocol("shortest-delay").compute(tl, step, emu.applied)
        assert np.array_equal(fresh.next_hop, emu.routes.next_hop) and np.array_equal(fresh.link, emu.routes.link)
        for r in routers:
            assert _kernel_routes(emu, tl.nodes[r].name) == _table_routes(emu, r), f"step {step}"
    emu.prepare_ahead(3)  # step 4's table, computed before the failure below
    used = {int(l) for l in np.unique(emu.routes.link) if l >= 0 and tl.link_class[l] == 0}
    cut = min(used)

    def failed(snap):
        state = snap.state.copy()
        state[cut] = Reason.FAILED
        return dataclasses.replace(snap, state=state)

    emu.target_filter = failed
    stats = emu.apply_step(4)
    assert not stats.routes_prefetched
    assert not (emu.routes.link == cut).any()
    for r in routers:
        assert _kernel_routes(emu, tl.nodes[r].name) == _table_routes(emu, r)


def test_every_namespace_forwards_and_stays_ipv4_only(make_emulation, backend):
    """Read back inside every node, before and after the handovers of steps 1-3 (step 2's moves a veth end
    to sat-2-0's namespace, where the kernel resets its settings): a router forwards on each of its veths,
    a host or compute node on none; no veth has an IPv6 address (so none sends IPv6 chatter); reverse-path
    filtering is off (namespace-wide and on each veth)."""
    from handmade import sat_index

    from emulator import shaping

    tl = grid_timeline()
    tl.peer[GSL_B, 2] = sat_index(2, 0)  # sat-2-2, sat-2-3, sat-2-0: the spare moves at step 2
    emu = make_emulation(tl, shaping.make_shaper(backend)[0])

    def check(when: str) -> None:
        for nd in tl.nodes:
            links = json.loads(emu.node(nd.name).cmd("ip -j link show type veth") or "[]")
            assert links, (when, nd.name)
            v6 = json.loads(emu.node(nd.name).cmd("ip -j -6 addr show") or "[]")
            assert [a["local"] for i in v6 for a in i.get("addr_info", []) if i["ifname"] != "lo"] == [], (
                when, nd.name, v6)
            forward = "1" if nd.kind in ("sat", "gateway", "terminal") else "0"
            keys = ["ipv4/conf/all/rp_filter"] + [f"ipv4/conf/{i['ifname']}/{k}" for i in links
                                                   for k in ("forwarding", "rp_filter")]
            out = emu.node(nd.name).cmd("cat " + " ".join(f"/proc/sys/net/{k}" for k in keys)).split()
            assert out == ["0"] + [forward, "0"] * len(links), (when, nd.name, keys, out)

    check("after build")
    assert sum(emu.apply_step(step).moves_in_step for step in (1, 2, 3)) == 1
    check("after the handovers")


#: Sends ICMP echo requests from a raw socket asking for kernel receive stamps (SO_TIMESTAMPNS, as ping does),
#: sleeps before reading each reply, and prints, per echo, stamp - send time (ms) and read - send time (ms).
_LATE_READER = r"""
import json, socket, struct, sys, time
dst, wait_s, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.settimeout(2.0)

def csum(b):
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF

out = []
for seq in range(count):
    body = struct.pack("!BBHHH", 8, 0, 0, 0x5A7E, seq) + bytes(56)
    pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    sent = time.time_ns()
    s.sendto(pkt, (dst, 0))
    time.sleep(wait_s)
    while True:
        data, anc, _f, _a = s.recvmsg(2048, 256)
        read = time.time_ns()
        ihl = (data[0] & 15) * 4
        typ, _c, _s, ident, sq = struct.unpack_from("!BBHHH", data, ihl)
        if typ == 0 and ident == 0x5A7E and sq == seq:
            break
    (stamp,) = [struct.unpack("=qq", c[:16]) for lvl, kind, c in anc if lvl == socket.SOL_SOCKET and kind == 35]
    out.append(((stamp[0] * 10**9 + stamp[1] - sent) / 1e6, (read - sent) / 1e6))
print(json.dumps(out))
"""


@pytest.mark.parametrize("tcp_at", [None, "gw-a"])
def test_receive_stamps_count_the_network_not_the_reader(make_emulation, backend, tmp_path, tcp_at):
    """A program that reads its reply late (here 300 ms late, as a ping waiting for a CPU would) still gets the
    kernel's stamp of when the reply arrived, which is what ping's RTT is: the last hold toward an edge node
    (gateway to host, satellite to gateway) ends on the sender's side, and the stamp is taken on the veth
    after it. Where that direction is held at the receiver instead (its sender starts a TCP flow, so a held
    departure would throttle its socket) the stamp must be cleared before the hold and is taken at the read:
    the reply then counts the reader's 300 ms."""
    from emulator import shaping
    from emulator.network import Emulation

    if backend != "userspace":
        pytest.skip("where a packet is held is the userspace backend's choice: netem holds every direction on its "
                    "sender's egress (test_rtt_equals_prediction checks its RTT in the VM)")
    tl = grid_timeline()
    shaper, _ = shaping.make_shaper(backend)
    if tcp_at is None:
        emu = make_emulation(tl, shaper)
    else:
        emu = Emulation(tl, shaper, "shortest-delay")
        emu.tcp_nodes = {tcp_at}
        try:
            emu.build()
        except BaseException:
            emu.stop()
            raise
    try:
        script = tmp_path / "late_reader.py"
        script.write_text(_LATE_READER)
        snap = tl.snapshot(0)
        graph = build_graph(tl.link_a, snap, len(tl.nodes))
        wait_ms = 300.0
        for src, dst in (("h-a", "h-b"), ("gw-a", "gw-b")):
            ia, ib = tl.node_index(src), tl.node_index(dst)
            predicted = path_delay_ms(snap, path(graph, ia, ib)[1]) + path_delay_ms(snap, path(graph, ib, ia)[1])
            assert predicted < wait_ms / 4
            out = emu.node(src).cmd(f"{sys.executable} {script} {emu.address_of(dst)} {wait_ms / 1e3} 6")
            echoes = json.loads(out.strip().splitlines()[-1])[1:]  # the first may wait for neighbour resolution
            assert len(echoes) == 5 and all(read >= wait_ms for _stamp, read in echoes), (src, echoes)
            stamps = [stamp for stamp, _read in echoes]
            if tcp_at == "gw-a" and src == "h-a":  # h-a's replies come from gw-a, held at h-a: stamped at the read
                assert all(s >= wait_ms for s in stamps), (src, stamps, predicted)
            else:
                # the median within the bound of test_rtt_equals_prediction; each echo nearer the network's RTT
                # than the reader's wait by far (beside CPU hogs one echo in a few hundred is a ms or two late)
                assert abs(median(stamps) - predicted) <= max(1.0, 0.03 * predicted), (src, stamps, predicted)
                assert all(predicted - 1.0 <= s <= predicted + 10.0 for s in stamps), (src, stamps, predicted)
    finally:
        if tcp_at is not None:
            emu.stop()
