"""OSPF after a gateway restored from a failure, counted in ping sequence numbers.

The hand-made grid held at its step 0; gw-b (its one antenna and h-b's access link) fails at
:data:`FAIL_STEP` and comes back at :data:`RESTORE_STEP`, steps played at 1 s, 50 pings a second from
h-a to h-b. What is counted is the time h-b stays unreachable once the restore step has brought the
links up.

The bound, derived from BIRD's timers: the adjacency is Full at the next hello (``hello_s``); each end
originates its router-LSA with the new link at its next ``tick`` and BIRD sends it at its next hello
(observed: the flood goes out with the interface's hello, ``hello_s`` after the exchange); that LSA can
reach the other end just under MinLSArrival (1 s) after the exchange installed the previous one, and is
then dropped and sent again ``gsl_retransmit_s`` later. The gateway's previous LSA is the one it
originated at its failure, which reached no one while it was cut off: the exchange installs it at the
satellite, which floods it on over its ISLs, and the gateway's LSA with the new link follows it
everywhere just under MinLSArrival too, is dropped by routers beyond the satellite, and comes again
``retransmit_s`` (the ISLs', 5 s) later (BIRD's debug log, 2026-12-06: Full 1.0 s after the restore, the
new LSA flooded 1.0 s later, installed then by 8 routers and 5.0 s later by the other 9, gw-a among
them: 7.97 s; 6.43-7.95 s in 6 other runs of 24, 2.5-5.0 s in the rest). Then SPF at the next ``tick``:
2 ``hello_s`` + ``retransmit_s`` +
``tick_s`` = 8 s, and 0.1 s for the floods, the SPF runs and the routes into the kernel (milliseconds in
the log) and the pings' 20 ms spacing. Before the host subnets were announced as
stubnets, the access link coming up changed the gateway's LSA at the restore, so the one with the
adjacency waited for MinLSInterval (5 s) and then a flood and an SPF tick: 6.4 and 6.9 s measured here.
With the stubnets and the ISL's retransmission interval (5 s) on the antenna, a dropped LSA made it 7.8 s
(docs/model.md, "OSPF after a restore").
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from handmade import GSL_B, grid_timeline
from ospfplay import play_while_pinging

from routing.ospf import Ospf
from topologies.timeline import Reason, Timeline

pytestmark = pytest.mark.root

FAIL_STEP = 4
RESTORE_STEP = FAIL_STEP + 7  # down longer than MinLSInterval: the restore's first LSA goes out at once
ACCESS_B = GSL_B + 2  # h-b's access link (tests/handmade.py)


def failed_gateway_timeline(n_steps: int) -> Timeline:
    """The grid held at its step 0, with gw-b's antenna and access link failed (a node failure, as
    ``[[events]] kind = "fail", target = "gw-b"`` makes it) from FAIL_STEP to RESTORE_STEP."""
    g = grid_timeline()
    cols = np.zeros(n_steps, np.int64)

    def take(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, cols])

    state = take(g.state)
    state[[GSL_B, ACCESS_B], FAIL_STEP:RESTORE_STEP] = Reason.SCHEDULED
    return Timeline(start=g.start, step_s=g.step_s, nodes=g.nodes, link_a=g.link_a, link_class=g.link_class,
                    link_role=g.link_role, state=state, peer=take(g.peer), delay_ms=take(g.delay_ms),
                    rate_mbps=take(g.rate_mbps), loss_pct=take(g.loss_pct),
                    sat_lla=np.ascontiguousarray(g.sat_lla[:, cols]))


def outage_after_restore(make_emulation, tmp_path: Path, protocol: Ospf) -> tuple[float, str]:
    tl = failed_gateway_timeline(RESTORE_STEP + 3)
    emu = make_emulation(tl, protocol=protocol, log_dir=tmp_path)
    t_restore = 0.0

    def play(step: int) -> None:
        nonlocal t_restore
        emu.apply_step(step)
        if step == RESTORE_STEP:
            t_restore = time.monotonic()  # the links are up: what follows is OSPF's

    run = play_while_pinging(emu, range(1, tl.n_steps), tl.step_s, play)
    seqs, interval_s = run.answered, run.interval_s
    first_after = int((t_restore - run.t_start) / interval_s) + 1
    answered = sorted(s for s in seqs if s >= first_after)
    assert answered, "no reply after the restore"
    outage_s = (answered[0] - first_after) * interval_s
    lost_before = len(set(range(1, int((FAIL_STEP - 1) / interval_s) - 50)) - seqs)
    assert lost_before == 0, f"{lost_before} pings lost before the failure"
    return outage_s, protocol.daemons.command("gw-b", 'show ospf neighbors "ant0"')


def test_restored_gateway_is_reached_within_its_bound(make_emulation, tmp_path):
    protocol = Ospf()
    o = protocol.options
    bound_s = 2 * o.hello_s + o.retransmit_s + o.tick_s + 0.1
    outage_s, neighbours = outage_after_restore(make_emulation, tmp_path, protocol)
    print(f"\nrestored gateway: h-b unreachable {outage_s:.2f} s after the restore (bound {bound_s} s)")
    assert "Full/PtP" in neighbours, neighbours
    assert outage_s <= bound_s, f"h-b unreachable {outage_s:.2f} s after its gateway's restore (> {bound_s} s)"
