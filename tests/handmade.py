"""Small timelines built by hand from numpy arrays, for tests that must not depend on orbits.

``grid_timeline()`` is a 4x4 +Grid of satellites (4 planes of 4, wrapping both ways), two gateways
with one antenna each, a host behind each gateway and a compute node on one satellite, over 5 steps:

* step 0: everything up; gw-a's antenna on sat-0-0, gw-b's on sat-2-2 (h-a to h-b: 4 ISL hops).
* step 1: handover: gw-b's antenna moves to sat-2-3; ISL sat-1-0 -> sat-1-1 (fore) in OUTAGE.
* step 2: gw-a's antenna has no satellite (NO_SATELLITE); the outage is over.
* step 3: gw-a's antenna on sat-0-1 again (ACQUIRING -> up at step 4 in this table: UP here).
* step 4: as step 0 but every delay is 0 ms (a baseline for measuring the emulator's own overhead).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from topologies.timeline import LINK_CLASSES, LINK_ROLES, Node, Reason, Timeline

N_PLANES = 4
N_PER_PLANE = 4


def sat_name(p: int, s: int) -> str:
    return f"sat-{p}-{s}"


def sat_index(p: int, s: int) -> int:
    return (p % N_PLANES) * N_PER_PLANE + (s % N_PER_PLANE)


def grid_isls() -> tuple[list[int], list[int], list[str], list[str], list[float]]:
    """The +Grid's ISL slots (intra-plane first, then inter-plane) as lists: near node, far node, link
    class, role, delay at step 0 (ms); links of other kinds are appended after them."""
    a, b, cls, role, d0 = [], [], [], [], []
    for p in range(N_PLANES):
        for s in range(N_PER_PLANE):
            a.append(sat_index(p, s)); b.append(sat_index(p, s + 1))
            cls.append("isl"); role.append("intra"); d0.append(2.0 + 0.1 * s + 0.01 * p)
    for p in range(N_PLANES):
        for s in range(N_PER_PLANE):
            a.append(sat_index(p, s)); b.append(sat_index(p + 1, s))
            cls.append("isl"); role.append("inter"); d0.append(3.0 + 0.1 * p + 0.01 * s)
    return a, b, cls, role, d0


def grid_timeline(rate_mbps: float = 100.0, names: dict[str, str] | None = None) -> Timeline:
    """The timeline described in the module docstring. ``names`` renames nodes (for bad-input tests)."""
    nodes = [Node(sat_name(p, s), "sat", {"shell": 0, "plane": p, "slot": s})
             for p in range(N_PLANES) for s in range(N_PER_PLANE)]
    n_sat = len(nodes)
    gw_a, gw_b = n_sat, n_sat + 1
    nodes += [Node("gw-a", "gateway", {"antennas": 1}), Node("gw-b", "gateway", {"antennas": 1})]
    h_a, h_b, c_1 = n_sat + 2, n_sat + 3, n_sat + 4
    nodes += [Node("h-a", "host", {"gateway": "gw-a"}), Node("h-b", "host", {"gateway": "gw-b"}),
              Node("c-1", "compute", {"satellite": sat_name(1, 2)})]
    if names:
        nodes = [Node(names.get(n.name, n.name), n.kind, n.info) for n in nodes]

    a, b, cls, role, d0 = grid_isls()
    gsl_a = len(a)
    a += [gw_a, gw_b]; b += [sat_index(0, 0), sat_index(2, 2)]
    cls += ["gsl", "gsl"]; role += ["gsl", "gsl"]; d0 += [1.5, 1.7]
    a += [h_a, h_b, c_1]; b += [gw_a, gw_b, sat_index(1, 2)]
    cls += ["access"] * 3; role += ["access"] * 3; d0 += [0.05, 0.05, 0.0]

    n_links, n_steps = len(a), 5
    peer = np.repeat(np.array(b, np.int32)[:, None], n_steps, axis=1)
    state = np.zeros((n_links, n_steps), np.uint8)
    delay = np.repeat(np.array(d0, np.float32)[:, None], n_steps, axis=1)
    outage_isl = sat_index(1, 0)  # intra link index of sat-1-0 -> sat-1-1 equals its near node index
    # step 1: handover of gw-b, outage of one ISL, GSL delays drift
    peer[gsl_a + 1, 1:4] = sat_index(2, 3)
    delay[gsl_a + 1, 1:4] = 1.9
    state[outage_isl, 1] = Reason.OUTAGE
    # step 2: gw-a without satellite
    peer[gsl_a, 2] = -1
    state[gsl_a, 2] = Reason.NO_SATELLITE
    # step 3: gw-a on sat-0-1
    peer[gsl_a, 3] = sat_index(0, 1)
    delay[gsl_a, 3] = 1.6
    # step 4: baseline, zero delays
    delay[:, 4] = 0.0
    return Timeline(
        start=datetime(2024, 1, 1, tzinfo=UTC), step_s=1.0, nodes=nodes,
        link_a=np.array(a, np.int32),
        link_class=np.array([LINK_CLASSES.index(c) for c in cls], np.uint8),
        link_role=np.array([LINK_ROLES.index(r) for r in role], np.uint8),
        state=state, peer=peer, delay_ms=delay,
        rate_mbps=np.full((n_links, n_steps), rate_mbps, np.float32),
        loss_pct=np.zeros((n_links, n_steps), np.float32),
        sat_lla=np.zeros((n_sat, n_steps, 3), np.float32))


#: Link slot indices of interest in grid_timeline().
OUTAGE_ISL = sat_index(1, 0)
GSL_A = 2 * N_PLANES * N_PER_PLANE
GSL_B = GSL_A + 1
