"""Cross-shell laser links and the one laser budget per satellite (topologies/crossshell.py, isl.py).

Every check recomputes what it needs from positions (SGP4, independent of the product's geometry
code where it matters: range, line of sight, line-of-sight rate by finite differences) and from the
timeline's arrays; connectivity is checked with networkx.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest

from emulator.addressing import AddressPlan
from topologies.constellation import Shell
from topologies.errors import ConfigError
from topologies.isl import IslConfig, plus_grid, plus_grid_arrays
from topologies.outages import steps_for
from topologies.plan import plan_scenario
from topologies.propagate import julian_date, sgp4_states
from topologies.scenario import load_scenario
from topologies.timeline import LINK_CLASSES, LINK_ROLES, Reason, Timeline

START = datetime(2023, 7, 18, 12, 0, 0, tzinfo=UTC)
R_E = 6378.137  # km, WGS72/84 equatorial radius, as the product's EARTH_RADIUS_KM
STEP_S, DURATION_S = 2.0, 600.0
MIN_HOLD_S, ACQ_S = 60.0, 6.0

SCENARIO = """
[time]
start = 2023-07-18T12:00:00Z
duration_s = {duration}
step_s = {step}
[[constellation.shells]]
name = "a"
pattern = "delta"
altitude_km = 550.0
inclination_deg = 53.0
planes = 12
sats_per_plane = 10
phasing = 5
[[constellation.shells]]
name = "b"
pattern = "delta"
altitude_km = 570.0
inclination_deg = 70.0
planes = 8
sats_per_plane = 10
phasing = 3
[isl]
terminals = {terminals}
min_hold_s = {hold}
acquisition_s = {acq}
cross_shell = {cross}
"""


def plan(tmp_path, terminals=3, cross="true", name="two.toml", per_plane_b=10):
    p = tmp_path / name
    text = SCENARIO.format(duration=DURATION_S, step=STEP_S, terminals=terminals, hold=MIN_HOLD_S,
                           acq=ACQ_S, cross=cross)
    p.write_text(text.replace("planes = 8\nsats_per_plane = 10", f"planes = 8\nsats_per_plane = {per_plane_b}"))
    return plan_scenario(load_scenario(p))


@pytest.fixture(scope="module")
def two_shells(tmp_path_factory):
    return plan(tmp_path_factory.mktemp("xs"))


def cross_slots(tl):
    return np.flatnonzero((tl.link_class == LINK_CLASSES.index("isl"))
                          & (tl.link_role == LINK_ROLES.index("cross-shell")))


def runs(tl):
    """(slot, owner, partner, first step, end step) of every run of one partner on a cross-shell slot."""
    out = []
    for l in cross_slots(tl).tolist():
        row = tl.peer[l]
        k = 0
        while k < tl.n_steps:
            if row[k] < 0:
                k += 1
                continue
            e = k
            while e < tl.n_steps and row[e] == row[k]:
                e += 1
            out.append((l, int(tl.link_a[l]), int(row[k]), k, e))
            k = e
    return out


def states_at(tl, times_s):
    """TEME position and velocity of every satellite at arbitrary times (SGP4 on the nodes' satrecs is
    not in the timeline, so rebuild the constellation)."""
    from topologies.walker import walker_constellation

    shells = [Shell("a", "delta", 550.0, 53.0, 12, 10, 5), Shell("b", "delta", 570.0, 70.0, 8, 10, 3)]
    const = walker_constellation(shells, START)
    assert list(const.names) == [n.name for n in tl.nodes if n.kind == "sat"]
    jd, fr = zip(*(julian_date(START) for _ in times_s))
    fr = np.asarray(fr) + np.asarray(times_s) / 86400.0
    _valid, r, v = sgp4_states(const.satrecs, np.asarray(jd), fr)
    return r, v


def los_rate_fd_deg_s(r, v, a, b, k, h=0.05):
    """LOS rate a -> b in a's orbital frame by finite differences of the LOS unit vector, deg/s."""
    def frame_dir(ra, va, rb):
        x = ra / np.linalg.norm(ra)
        z = np.cross(ra, va)
        z /= np.linalg.norm(z)
        y = np.cross(z, x)
        d = (rb - ra) / np.linalg.norm(rb - ra)
        return np.array([d @ x, d @ y, d @ z])

    # positions at t and t + h from a linear step of the SGP4 states (h = 50 ms: second order is ~1e-6)
    u0 = frame_dir(r[a, k], v[a, k], r[b, k])
    u1 = frame_dir(r[a, k] + h * v[a, k], v[a, k], r[b, k] + h * v[b, k])
    return math.degrees(math.acos(min(1.0, float(u0 @ u1)))) / h


def feasible(r, v, a, b, k, alt_a, alt_b):
    """Range, line of sight above R + 80 km, LOS rate <= 1 deg/s at both ends (the defaults)."""
    rm = R_E + 80.0
    limit = math.sqrt((R_E + alt_a) ** 2 - rm**2) + math.sqrt((R_E + alt_b) ** 2 - rm**2)
    ra, rb = r[a, k], r[b, k]
    d = rb - ra
    s = min(1.0, max(0.0, -float(ra @ d) / float(d @ d)))
    clear = np.linalg.norm(ra + s * d)
    rate = max(los_rate_fd_deg_s(r, v, a, b, k), los_rate_fd_deg_s(r, v, b, a, k))
    return np.linalg.norm(d) <= limit and clear >= rm and rate <= 1.0 + 1e-3, rate


# --- the budget ------------------------------------------------------------------------------
def test_no_satellite_ever_has_more_laser_links_than_terminals(two_shells):
    tl = two_shells
    n_sat = len(tl.nodes_of("sat"))
    isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
    fixed = isl[tl.link_role[isl] != LINK_ROLES.index("cross-shell")]
    xs = cross_slots(tl)
    assert len(xs) > 0
    # every +Grid link that can carry traffic at some step holds a terminal at both ends for the whole run
    dead = np.isin(tl.state[fixed], [Reason.OCCLUDED, Reason.RANGE, Reason.INVALID]).all(axis=1)
    fixed = fixed[~dead]
    base = np.bincount(np.concatenate([tl.link_a[fixed], tl.peer[fixed, 0]]), minlength=n_sat)
    for k in range(tl.n_steps):
        busy = tl.peer[xs, k] >= 0
        use = base + np.bincount(np.concatenate([tl.link_a[xs][busy], tl.peer[xs, k][busy]]), minlength=n_sat)
        assert use.max() <= 3, f"step {k}: satellite {int(use.argmax())} has {int(use.max())} laser links"
    # both ends of a cross-shell link are in different shells
    shell = np.array([n.info["shell"] for n in tl.nodes if n.kind == "sat"])
    for _l, a, b, _t0, _t1 in runs(tl):
        assert shell[a] != shell[b]


def test_three_terminals_are_fore_aft_and_one_cross_plane_chain():
    shells = [Shell("a", "delta", 550.0, 53.0, 9, 8, 1)]
    from topologies.walker import walker_constellation

    const = walker_constellation(shells, START)
    topo = plus_grid(const, IslConfig(terminals=3))
    deg = topo.degree(const.n_sats)
    assert deg.max() == 3
    g = nx.Graph()
    g.add_nodes_from(range(const.n_sats))
    g.add_edges_from(topo.pairs.tolist())
    assert nx.is_connected(g)  # the planes of the shell stay one mesh (pairs of planes would not)
    inter = topo.pairs[topo.role == 1]
    assert len(set(inter.ravel().tolist())) == 2 * len(inter)  # at most one cross-plane link each
    assert topo.stats["spare_terminals"] == 0  # one shell: nothing kept for cross-shell links


def test_satellites_in_no_plane_have_no_lasers():
    # a transient satellite (plane -1) next to a small shell: no link, no spare terminal
    shell = np.array([0, 0, 0, 0, 1, 1, 0])
    plane = np.array([0, 0, 1, 1, 0, 0, -1])
    slot = np.array([0, 1, 0, 1, 0, 1, -1])
    topo = plus_grid_arrays(shell, plane, slot, np.zeros(7), ("delta", "delta"), (550.0, 570.0),
                            terminals=5, cross_shell=True)
    assert 6 not in topo.pairs.ravel()
    assert topo.spare[6] == 0 and topo.spare[:6].min() >= 1
    assert topo.stats["no_lasers"] == 1


def test_terminal_count_default_depends_on_the_source():
    cfg = IslConfig()
    assert cfg.terminals_for(SimpleNamespace(source="walker:starlink-shell1")) == 4
    assert cfg.terminals_for(SimpleNamespace(source="topologies/data/starlink-2026-08-21.tle")) == 3
    assert IslConfig(terminals=0).terminals_for(SimpleNamespace(source="x.tle")) == 0


# --- the links' rules --------------------------------------------------------------------------
def test_links_hold_at_least_min_hold_and_start_acquiring(two_shells):
    tl = two_shells
    acq = steps_for(ACQ_S, STEP_S)
    hold = steps_for(MIN_HOLD_S, STEP_S)
    rr = runs(tl)
    assert sum(1 for r in rr if r[3] > 0) >= 3  # some links start during the run
    for l, _a, _b, t0, t1 in rr:
        if t1 < tl.n_steps:
            assert (t1 - t0) >= hold, f"slot {l}: link of {(t1 - t0) * STEP_S} s < {MIN_HOLD_S} s"
        st = tl.state[l, t0:t1]
        if t0 > 0:
            assert (st[:acq] == Reason.ACQUIRING).all() and (st[acq:] == Reason.UP).all()
        else:
            assert (st == Reason.UP).all()  # present at step 0: already acquired
        assert (tl.delay_ms[l, t0:t1] > 0).all()
    idle = tl.peer[cross_slots(tl)] < 0
    assert (tl.state[cross_slots(tl)][idle] == Reason.NO_PARTNER).all()


def test_links_are_feasible_while_held_and_end_only_when_not(two_shells):
    tl = two_shells
    rr = runs(tl)
    times = np.arange(tl.n_steps) * tl.step_s
    r, v = states_at(tl, times)
    shell = np.array([n.info["shell"] for n in tl.nodes if n.kind == "sat"])
    alt = np.array([550.0, 570.0])[shell]
    worst_rate = 0.0
    for l, a, b, t0, t1 in rr:
        # delay is distance / c at every step of the link
        d = np.linalg.norm(r[a, t0:t1] - r[b, t0:t1], axis=1)
        assert np.allclose(tl.delay_ms[l, t0:t1], d / 299_792.458 * 1e3, rtol=1e-5)
        for k in sorted({t0, (t0 + t1) // 2, t1 - 1}):
            ok, rate = feasible(r, v, a, b, k, alt[a], alt[b])
            assert ok, f"link {a}-{b} used at step {k} although not feasible"
            worst_rate = max(worst_rate, rate)
        if t1 < tl.n_steps:  # it ended: not feasible at its end step any more
            assert not feasible(r, v, a, b, t1, alt[a], alt[b])[0], f"link {a}-{b} dropped while feasible"
    assert worst_rate > 0


def test_two_shells_are_one_component_at_every_step(tmp_path, two_shells):
    def components(tl, k):
        sats = tl.nodes_of("sat")
        g = nx.Graph()
        g.add_nodes_from(sats)
        isl = np.flatnonzero((tl.link_class == LINK_CLASSES.index("isl")) & (tl.state[:, k] == Reason.UP))
        g.add_edges_from(zip(tl.link_a[isl].tolist(), tl.peer[isl, k].tolist()))
        return nx.number_connected_components(g)

    islands = plan(tmp_path, cross="false", name="islands.toml")
    assert len(cross_slots(islands)) == 0
    for k in range(0, two_shells.n_steps, 10):
        assert components(islands, k) == 2  # without cross-shell links: two islands
        assert components(two_shells, k) == 1


def test_same_scenario_gives_identical_arrays(tmp_path, two_shells):
    again = plan(tmp_path)
    for name in ("state", "peer", "delay_ms", "link_a", "link_role", "link_class"):
        assert np.array_equal(getattr(again, name), getattr(two_shells, name)), name


def test_five_terminals_are_a_full_grid_plus_one_cross_shell(tmp_path):
    tl = plan(tmp_path, terminals=5)
    n_sat = len(tl.nodes_of("sat"))
    isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
    fixed = isl[tl.link_role[isl] != LINK_ROLES.index("cross-shell")]
    assert len(fixed) == 2 * n_sat  # the whole +Grid
    xs = cross_slots(tl)
    for k in range(0, tl.n_steps, 7):
        busy = tl.peer[xs, k] >= 0
        per_sat = np.bincount(np.concatenate([tl.link_a[xs][busy], tl.peer[xs, k][busy]]), minlength=n_sat)
        assert per_sat.max() <= 1


def test_the_first_step_pairs_every_terminal_that_can_be_paired(tmp_path):
    """A warm start: at step 0 no two satellites of different shells that both still have a free terminal
    could have been joined for the hold window (checked pair by pair with the test's own geometry). One
    round of partner search left such pairs to start later, each after an acquisition."""
    tl = plan(tmp_path, terminals=5)
    sats = tl.nodes_of("sat")
    n_sat = len(sats)
    xs = cross_slots(tl)
    busy = tl.peer[xs, 0] >= 0
    used = np.bincount(np.concatenate([tl.link_a[xs][busy], tl.peer[xs, 0][busy]]), minlength=n_sat)
    assert used.max() <= 1 and busy.sum() > 0
    shell = np.array([0 if tl.nodes[i].info.get("shell", 0) == 0 else 1 for i in sats])
    free_a = [i for i in range(n_sat) if used[i] == 0 and shell[i] == 0]
    free_b = [i for i in range(n_sat) if used[i] == 0 and shell[i] == 1]
    hold = steps_for(MIN_HOLD_S, STEP_S)
    r, v = states_at(tl, [k * STEP_S for k in range(hold + 1)])
    joinable = []
    for a in free_a:
        for b in free_b:
            if np.linalg.norm(r[b, 0] - r[a, 0]) > 6000.0:  # beyond any range limit here (~5,000 km)
                continue
            if all(feasible(r, v, a, b, k, 550.0, 570.0)[0] for k in range(hold)):
                joinable.append((tl.nodes[sats[a]].name, tl.nodes[sats[b]].name))
    assert not joinable, f"{len(joinable)} pairs left unjoined at step 0, e.g. {joinable[:3]}"


PHASE1 = """
[time]
start = 2026-08-21T12:00:00Z
duration_s = 3
step_s = 1.0
[isl]
terminals = 5
""" + "".join(f"""
[[constellation.shells]]
name = "{n}"
altitude_km = {h}
inclination_deg = {i}
planes = {p}
sats_per_plane = {k}
phasing = {f}
""" for n, h, i, p, k, f in (("a", 550, 53.0, 72, 22, 17), ("b", 540, 53.2, 72, 22, 17), ("c", 570, 70.0, 36, 20, 11),
                             ("d", 560, 97.6, 6, 58, 1), ("e", 560, 97.6, 4, 43, 1)))


def test_five_shells_with_a_spare_terminal_each_are_one_network(tmp_path):
    """The five 2019 Phase I shells, one laser terminal beyond the +Grid each: one component at every step
    (scipy on the up laser links of the timeline). Nearest first alone paired every spare terminal of the
    two 53 deg shells with each other and left the 70 and 97.6 deg shells a second component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p = tmp_path / "phase1.toml"
    p.write_text(PHASE1)
    tl = plan_scenario(load_scenario(p))
    n = len(tl.nodes)
    assert n == 4408
    for k in range(tl.n_steps):
        up = np.flatnonzero((tl.state[:, k] == 0) & (tl.peer[:, k] >= 0))
        g = coo_matrix((np.ones(len(up)), (tl.link_a[up], tl.peer[up, k])), shape=(n, n))
        count, _ = connected_components(g, directed=False)
        assert count == 1, (k, count)


# --- the emulator's view ----------------------------------------------------------------------
def test_cross_shell_slots_get_a_spare_pair_and_unique_names(two_shells, tmp_path):
    tl = two_shells
    addr = AddressPlan().assign(tl)
    xs = cross_slots(tl)
    assert addr.has_spare[xs].all()
    fixed = np.flatnonzero((tl.link_class == LINK_CLASSES.index("isl")) & ~np.isin(np.arange(tl.n_links), xs))
    assert not addr.has_spare[fixed].any()
    # no two interfaces share a name in any namespace a slot's far end can visit
    for l in xs.tolist():
        assert addr.ifname_a[l] == f"x{l}" and addr.spare_ifname_b[l] == f"y{l}b"
    every = np.concatenate([addr.addr_a, addr.addr_b, addr.spare_addr_a[addr.has_spare],
                            addr.spare_addr_b[addr.has_spare]])
    assert len(np.unique(every)) == len(every)
    # saved and loaded: the same arrays and roles
    back = Timeline.load(tl.save(tmp_path / "x.npz"))
    assert np.array_equal(back.peer, tl.peer) and np.array_equal(back.link_role, tl.link_role)


def test_a_cross_shell_slot_pointing_at_a_gateway_is_refused(two_shells):
    from dataclasses import replace

    from handmade import grid_timeline

    tl = grid_timeline()
    isl = int(np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))[0])
    role = tl.link_role.copy()
    role[isl] = LINK_ROLES.index("cross-shell")
    peer = tl.peer.copy()
    peer[isl, 1:] = tl.nodes_of("gateway")[0]
    bad = replace(tl, link_role=role, peer=peer)
    with pytest.raises(ConfigError, match="cross-shell laser slot points at a node that is not a satellite"):
        AddressPlan().assign(bad)


def test_terminals_of_links_that_are_never_usable_serve_other_shells(tmp_path):
    # shell b: 3 satellites per plane, 120 deg apart: fore/aft are ~12,000 km chords through the Earth,
    # never usable, so those two terminals of every b satellite are free for cross-shell links
    tl = plan(tmp_path, per_plane_b=3, name="sparse.toml")
    sats = tl.nodes_of("sat")
    shell = np.array([tl.nodes[i].info["shell"] for i in sats])
    isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
    intra_b = isl[(tl.link_role[isl] == LINK_ROLES.index("intra")) & (shell[tl.link_a[isl]] == 1)]
    assert len(intra_b) and (tl.state[intra_b] != Reason.UP).all()
    xs = cross_slots(tl)
    use_b = np.zeros(tl.n_steps, int)
    for k in range(tl.n_steps):
        busy = tl.peer[xs, k] >= 0
        ends = np.concatenate([tl.link_a[xs][busy], tl.peer[xs, k][busy]])
        per_sat = np.bincount(ends, minlength=len(sats))
        use_b[k] = per_sat[shell == 1].max()
        live = isl[~np.isin(tl.state[isl], [Reason.OCCLUDED, Reason.RANGE, Reason.INVALID]).all(axis=1)]
        live = live[tl.link_role[live] != LINK_ROLES.index("cross-shell")]
        total = per_sat + np.bincount(np.concatenate([tl.link_a[live], tl.peer[live, 0]]), minlength=len(sats))
        assert total.max() <= 3
    assert use_b.max() >= 2  # a b satellite links to two a satellites at once: its fore/aft terminals


def test_satellites_launched_before_the_first_laser_batch_are_bent_pipe():
    sats = [SimpleNamespace(intldesg=d) for d in ("19074A", "21059B", "21082C", "24123A", "", "98067A")]
    const = SimpleNamespace(n_sats=len(sats), satrecs=sats)
    assert IslConfig().has_lasers(const).tolist() == [False, False, True, True, True, False]
    assert IslConfig(lasers_from_launch=None).has_lasers(const).all()
    assert IslConfig(lasers_from_launch="2019-001").has_lasers(const).tolist() == [True] * 5 + [False]
    with pytest.raises(ConfigError, match="lasers_from_launch"):
        IslConfig(lasers_from_launch="Sept 2021")
    # one plane of 5, the middle satellite without lasers: its neighbours link over it
    n = 5
    topo = plus_grid_arrays(np.zeros(n, int), np.zeros(n, int), np.arange(n), np.zeros(n), ("delta",),
                            (550.0,), terminals=3, has_lasers=np.array([1, 1, 0, 1, 1], bool))
    assert {tuple(sorted(p)) for p in topo.pairs.tolist()} == {(0, 1), (1, 3), (3, 4), (0, 4)}
    assert topo.stats["no_lasers"] == 1
