"""A cross-shell laser slot in the live network: its far end changes partner make-before-break, like a
gateway antenna, and traffic follows it (pings across the link at every step it is up)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest

from topologies.timeline import LINK_CLASSES, LINK_ROLES, Node, Reason, Timeline

pytestmark = pytest.mark.root

A0, A1, B0, B1, B2 = range(5)
XSLOT = 3  # link index of the cross-shell slot below


def two_shell_timeline() -> Timeline:
    """sat-a0 - sat-a1 (shell 0), sat-b0 - sat-b1 - sat-b2 (shell 1); sat-a0's cross-shell terminal
    points at b0 (step 0), acquires b2 (step 1), is up to b2 (step 2), has no partner (step 3), is up
    to b1 (step 4). Compute nodes c-a on sat-a1 and c-b on sat-b1."""
    nodes = [Node("sat-a0", "sat", {"shell": 0, "plane": 0, "slot": 0}),
             Node("sat-a1", "sat", {"shell": 0, "plane": 0, "slot": 1}),
             Node("sat-b0", "sat", {"shell": 1, "plane": 0, "slot": 0}),
             Node("sat-b1", "sat", {"shell": 1, "plane": 0, "slot": 1}),
             Node("sat-b2", "sat", {"shell": 1, "plane": 0, "slot": 2}),
             Node("c-a", "compute", {"satellite": "sat-a1"}),
             Node("c-b", "compute", {"satellite": "sat-b1"})]
    a = [A0, B0, B1, A0, 5, 6]
    b = [A1, B1, B2, B0, A1, B1]
    cls = ["isl", "isl", "isl", "isl", "access", "access"]
    role = ["intra", "intra", "intra", "cross-shell", "access", "access"]
    n_steps = 5
    peer = np.repeat(np.array(b, np.int32)[:, None], n_steps, axis=1)
    state = np.zeros((len(a), n_steps), np.uint8)
    delay = np.full((len(a), n_steps), 2.0, np.float32)
    delay[4:] = 0.0
    peer[XSLOT] = [B0, B2, B2, -1, B1]
    state[XSLOT] = [Reason.UP, Reason.ACQUIRING, Reason.UP, Reason.NO_PARTNER, Reason.UP]
    delay[XSLOT, 3] = 0.0
    return Timeline(start=datetime(2024, 1, 1, tzinfo=UTC), step_s=1.0, nodes=nodes,
                    link_a=np.array(a, np.int32),
                    link_class=np.array([LINK_CLASSES.index(c) for c in cls], np.uint8),
                    link_role=np.array([LINK_ROLES.index(r) for r in role], np.uint8),
                    state=state, peer=peer, delay_ms=delay,
                    rate_mbps=np.full((len(a), n_steps), 100.0, np.float32),
                    loss_pct=np.zeros((len(a), n_steps), np.float32),
                    sat_lla=np.zeros((5, n_steps, 3), np.float32))


def received(emu, src: str, dst: str) -> int:
    out = emu.node(src).cmd(f"ping -n -c 3 -i 0.1 -W 1 {emu.address_of(dst)}")
    if "Network is unreachable" in out:
        return 0
    m = re.search(r"(\d+) received", out)
    assert m, out
    return int(m.group(1))


def oper_up(emu, node: str, ifname: str) -> bool:
    return bool(int(emu.node(node).cmd(f"cat /sys/class/net/{ifname}/flags").strip(), 16) & 1)


def names(emu, node: str) -> set[str]:
    return set(emu.node(node).cmd("ls /sys/class/net").split())


def test_cross_shell_partner_changes_make_before_break(make_emulation):
    tl = two_shell_timeline()
    emu = make_emulation(tl)
    near, far, far_spare = f"x{XSLOT}", f"y{XSLOT}", f"y{XSLOT}b"
    assert oper_up(emu, "sat-a0", near) and oper_up(emu, "sat-b0", far)
    # the spare pair waits, down, at the next partner
    assert far_spare in names(emu, "sat-b2") and not oper_up(emu, "sat-b2", far_spare)
    assert received(emu, "c-a", "c-b") == 3
    stats = emu.apply_step(1)  # new partner b2, acquiring: no path between the shells
    assert stats.handovers == 1 and stats.moves_in_step == 0
    assert received(emu, "c-a", "c-b") == 0
    emu.apply_step(2)  # up to b2: the spare pair carries it
    assert oper_up(emu, "sat-b2", far_spare) and oper_up(emu, "sat-a0", f"x{XSLOT}b")
    assert received(emu, "c-a", "c-b") == 3
    emu.apply_step(3)  # no partner
    assert received(emu, "c-a", "c-b") == 0
    emu.prepare_ahead(3)
    emu.apply_step(4)  # b1
    assert received(emu, "c-a", "c-b") == 3
    assert emu.apply_step(0).handovers == 1 and received(emu, "c-a", "c-b") == 3
