"""OSPF across a single-antenna gateway handover, counted in ping sequence numbers.

A gateway with one antenna moves from one satellite to the next at a step. Without the adjacency on the
new satellite formed ahead of the switch, the gateway originates its router-LSA twice within
MinLSInterval (RFC 2328, 5 s, a constant in BIRD): once at the switch, withdrawing the old link, and
once a hello later, adding the new adjacency; the second waits out the 5 s, and the gateway is cut off
for ~4 s or more (measured 3.5-6.4 s). With ``handover_lead_s`` the spare pair is in OSPF at cost 65535
``handover_lead_s`` before the switch, so the first withdrawal already leaves a path.

The bound on the outage, derived: with both ends' LSAs listing the new link before the switch, the
switch needs one withdrawal of the old link (from either end; both are >= MinLSInterval past their last
origination) flooded over a few hops of a few ms, then SPF on each router at its next ``tick`` (<=
``tick_s``) and the kernel routes written: ``tick_s`` plus one step (``step_s``) for the daemons'
reconfiguration, asked in the background while the next step runs, on a machine shared with other work:
2 s. Without the lead the outage is at least MinLSInterval - ``hello_s`` = 4 s, which the control
case checks, so the bound tells the two apart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from handmade import GSL_B, OUTAGE_ISL, grid_timeline, sat_index
from ospfplay import play_while_pinging

from routing.ospf import MIN_LS_INTERVAL_S, Ospf
from topologies.timeline import Timeline

pytestmark = pytest.mark.root

HANDOVER_STEP = 16  # > the default 15 s lead at 1 s steps: the spare is brought up while the steps play


def one_handover_timeline(n_steps: int) -> Timeline:
    """The hand-made 4x4 grid (tests/handmade.py) held at its step 0, except that gw-b's only antenna moves
    from sat-2-2 to sat-2-3 at :data:`HANDOVER_STEP` (grid step 1's handover, without its ISL outage)."""
    g = grid_timeline()
    cols = np.where(np.arange(n_steps) < HANDOVER_STEP, 0, 1)

    def take(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, cols])

    state = take(g.state)
    state[OUTAGE_ISL] = 0
    tl = Timeline(start=g.start, step_s=g.step_s, nodes=g.nodes, link_a=g.link_a, link_class=g.link_class,
                  link_role=g.link_role, state=state, peer=take(g.peer), delay_ms=take(g.delay_ms),
                  rate_mbps=take(g.rate_mbps), loss_pct=take(g.loss_pct),
                  sat_lla=np.ascontiguousarray(g.sat_lla[:, cols]))
    assert tl.peer[GSL_B, HANDOVER_STEP - 1] == sat_index(2, 2) and tl.peer[GSL_B, HANDOVER_STEP] == sat_index(2, 3)
    return tl


def routes_via(emu, node: str, ifname: str) -> list[str]:
    out = emu.node(node).cmd(f"ip -j route show proto bird dev {ifname}")
    return [r["dst"] for r in json.loads(out or "[]")]


@pytest.mark.parametrize("lead_s", [15.0, 0.0], ids=["lead-15s", "control-no-lead"])
def test_single_antenna_handover_loses_at_most_one_tick_and_step(make_emulation, lead_s):
    tl = one_handover_timeline(HANDOVER_STEP + 2)
    protocol = Ospf(handover_lead_s=lead_s)
    o = protocol.options
    bound_s = o.tick_s + tl.step_s
    emu = make_emulation(tl, protocol=protocol)
    assert emu.routes is None  # the daemons decide every route
    d = protocol.daemons
    first = 1 if lead_s else HANDOVER_STEP - 3  # without a lead the steps before the switch change nothing
    ahead, before = "", []

    def play(step: int) -> None:
        nonlocal ahead, before
        if step == HANDOVER_STEP:
            ahead = d.command("gw-b", 'show ospf neighbors "ant0b"')
            before = routes_via(emu, "gw-b", "ant0b") + routes_via(emu, "sat-2-3", f"g{GSL_B}b")
        emu.apply_step(step)
        emu.prepare_ahead(step)

    run = play_while_pinging(emu, range(first, tl.n_steps), tl.step_s, play)
    sent, seqs = run.sent, run.answered
    lost = sorted(set(range(1, sent)) - seqs)  # the last one may still be on its way
    interval_s = run.interval_s
    lost_s = len(lost) * interval_s
    runs = np.split(np.array(lost), np.flatnonzero(np.diff(lost) > 1) + 1) if lost else []
    print(f"\nhandover_lead_s {lead_s:g}: {sent} pings at {interval_s * 1e3:.1f} ms, {len(lost)} lost = "
          f"{lost_s:.2f} s (bound {bound_s:g} s); lost runs {[(int(r[0]), len(r)) for r in runs]}; "
          f"ospf {protocol.stats()['handovers_preformed']} handovers preformed")
    after = d.command("gw-b", 'show ospf neighbors "ant0b"')
    assert "Full/PtP" in after, after  # the new link is up in OSPF after the switch either way
    if lead_s:
        assert "Full/PtP" in ahead, f"no adjacency on the spare pair before the switch:\n{ahead}"
        assert before == [], f"kernel routes through the spare pair before the switch: {before}"
        assert routes_via(emu, "gw-b", "ant0b"), "gw-b routes nothing through its antenna after the switch"
        assert lost_s <= bound_s, f"{len(lost)} pings lost across the handover ({lost_s:.2f} s > {bound_s} s)"
    else:
        # the control: the same handover without the lead loses more than the bound, so the bound is a test
        assert "Full/PtP" not in ahead
        assert lost_s >= MIN_LS_INTERVAL_S - o.hello_s - interval_s, lost_s
