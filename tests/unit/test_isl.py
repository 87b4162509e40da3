"""+Grid ISL table and ISL states over time (topologies/isl.py)."""

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from topologies.constellation import Shell
from topologies.errors import ConfigError
from topologies.frames import EARTH_RADIUS_KM, ecef_to_geodetic
from topologies.isl import (
    IslConfig,
    isl_states,
    los_rate_deg_s,
    max_isl_range_km,
    plus_grid,
    plus_grid_arrays,
    positions_at,
)
from topologies.outages import steps_for
from topologies.propagate import propagate
from topologies.timeline import C_KM_S, Reason
from topologies.walker import PRESETS, walker_constellation

START = datetime(2023, 7, 18, 12, 0, 0, tzinfo=UTC)


def fake_ephemeris(r_km, v_km_s=None, valid=None, step_s=1.0):
    """Hand-placed satellites: r (n_sat, n_t, 3) in an inertial frame used as TEME and Earth-fixed."""
    r = np.asarray(r_km, dtype=np.float64)
    v = np.zeros_like(r) if v_km_s is None else np.asarray(v_km_s, dtype=np.float64)
    valid = np.ones(r.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    return SimpleNamespace(start=START, step_s=step_s, n_steps=r.shape[1], r_teme_km=r, v_teme_km_s=v,
                           r_ecef_km=r, valid=valid)


def pair_topology():
    """Satellites 0 and 1, one intra-plane link."""
    return plus_grid_arrays([0, 0], [0, 0], [0, 1], [0.0, 10.0], ("delta",), (550.0,))


@pytest.fixture(scope="module")
def delta_small():
    shell = Shell("d", "delta", 550.0, 53.0, 9, 16, 4)
    return walker_constellation([shell], START)


@pytest.fixture(scope="module")
def iridium():
    const = walker_constellation([PRESETS["iridium"]], START)
    return const, propagate(const, START, 10.0, 360)  # one hour


def undirected(pairs):
    return {tuple(sorted(p)) for p in pairs.tolist()}


# --- the table -------------------------------------------------------------------------------
def test_starlink_shell_is_a_full_plus_grid():
    const = walker_constellation([PRESETS["starlink-shell1"]], START)
    topo = plus_grid(const)
    assert topo.n_isl == 2 * const.n_sats == 3168
    assert (topo.degree(const.n_sats) == 4).all()
    assert topo.stats["seam"] == 0 and topo.stats["unmatched"] == 0


@pytest.mark.parametrize("terminals", [4, 3, 2, 1, 0])
@pytest.mark.parametrize("planes", [9, 8])
def test_degree_never_exceeds_terminals(terminals, planes):
    for pattern in ("delta", "star"):
        const = walker_constellation([Shell("s", pattern, 780.0, 86.4 if pattern == "star" else 53.0,
                                            planes, 7, 1)], START)
        topo = plus_grid(const, IslConfig(terminals=terminals))
        deg = topo.degree(const.n_sats, include_down=True)
        assert deg.max() <= terminals
        if terminals >= 2:  # fore and aft are always kept first
            assert (np.bincount(topo.pairs[topo.role == 0].ravel(), minlength=const.n_sats) == 2).all()
        kept = plus_grid(const, IslConfig(terminals=terminals), keep_dropped=True)
        assert kept.n_isl == plus_grid(const).n_isl
        assert kept.dropped.sum() == topo.stats["terminals_dropped"]


def test_links_are_symmetric_and_fore_is_the_neighbours_aft(delta_small):
    topo = plus_grid(delta_small)
    assert len(undirected(topo.pairs)) == topo.n_isl  # no undirected pair twice
    assert (topo.pairs[:, 0] != topo.pairs[:, 1]).all()
    intra = topo.role == 0
    assert set(topo.port_a[intra]) == {"fore"} and set(topo.port_b[intra]) == {"aft"}
    assert set(topo.port_a[~intra]) == {"right"} and set(topo.port_b[~intra]) == {"left"}
    fore = dict(topo.pairs[intra].tolist())
    aft = {b: a for a, b in topo.pairs[intra].tolist()}
    for s in range(delta_small.n_sats):
        assert aft[fore[s]] == s
        assert delta_small.plane[fore[s]] == delta_small.plane[s]
        # fore is the next slot along the orbit
        m = 16
        assert delta_small.slot[fore[s]] == (delta_small.slot[s] + 1) % m
    right = dict(topo.pairs[~intra].tolist())
    left = {b: a for a, b in topo.pairs[~intra].tolist()}
    assert len(right) == len(left) == delta_small.n_sats  # one-to-one, with the wrap 8 -> 0
    for s in range(delta_small.n_sats):
        assert left[right[s]] == s
        assert delta_small.plane[right[s]] == (delta_small.plane[s] + 1) % 9


@pytest.mark.parametrize("planes, per_plane", [(24, 12), (72, 22)])
def test_inter_plane_partner_is_nearest_in_distance_on_a_half_slot_offset_layout(planes, per_plane):
    # phasing F = P/2 shifts each plane by half a slot: two candidates at nearly the same argument of
    # latitude, one of them about twice as far as the other (neighbouring planes also slide along the
    # track by about dRAAN cos(i)). Changed deliberately: partners were nearest in argument of latitude.
    const = walker_constellation([Shell("h", "delta", 550.0, 53.0, planes, per_plane, planes // 2)], START)
    topo = plus_grid(const, when=START)
    r = positions_at(const, START)
    inter = topo.pairs[topo.role == 1]
    assert len(inter) == const.n_sats  # one-to-one, with the wrap P-1 -> 0
    assert len(set(inter[:, 0].tolist())) == len(set(inter[:, 1].tolist())) == const.n_sats
    assert topo.degree(const.n_sats).max() == 4
    length = np.linalg.norm(r[inter[:, 0]] - r[inter[:, 1]], axis=1)
    # brute force: every satellite of the partner's plane, from both ends
    members = [np.flatnonzero(const.plane == p) for p in range(planes)]
    for a, b, d in zip(inter[:, 0], inter[:, 1], length):
        assert d == pytest.approx(np.linalg.norm(r[members[const.plane[b]]] - r[a], axis=1).min(), abs=1e-6)
        assert d == pytest.approx(np.linalg.norm(r[members[const.plane[a]]] - r[b], axis=1).min(), abs=1e-6)
    # and shorter than the partner nearest in argument of latitude on this layout
    u = const.argument_of_latitude_deg(START)
    by_u = plus_grid_arrays(const.shell, const.plane, const.slot, u, ("delta",), (550.0,))
    inter_u = by_u.pairs[by_u.role == 1]
    length_u = np.linalg.norm(r[inter_u[:, 0]] - r[inter_u[:, 1]], axis=1)
    assert length.max() < 0.7 * length_u.max()


def test_inter_plane_partner_by_argument_of_latitude_still_for_label_only_callers(delta_small):
    u = delta_small.argument_of_latitude_deg(START)
    topo = plus_grid_arrays(delta_small.shell, delta_small.plane, delta_small.slot, u, ("delta",), (550.0,))
    inter = topo.pairs[topo.role == 1]
    for a, b in inter.tolist():
        others = np.flatnonzero(delta_small.plane == delta_small.plane[b])
        d = np.abs((u[others] - u[a] + 180.0) % 360.0 - 180.0)
        assert abs((u[b] - u[a] + 180.0) % 360.0 - 180.0) == pytest.approx(d.min())


def test_ragged_planes_get_a_one_to_one_matching():
    # three planes of 10, 7 and 10 satellites (a TLE shell with gaps)
    sizes = [10, 7, 10]
    shell = np.zeros(sum(sizes), int)
    plane = np.repeat(np.arange(3), sizes)
    slot = np.concatenate([np.arange(m) for m in sizes])
    u = np.concatenate([np.sort(np.random.default_rng(p).uniform(0, 360, m)) for p, m in enumerate(sizes)])
    topo = plus_grid_arrays(shell, plane, slot, u, ("delta",))
    inter = topo.pairs[topo.role == 1]
    assert len(set(inter[:, 0].tolist())) == len(inter)  # nobody has two right partners
    assert len(set(inter[:, 1].tolist())) == len(inter)  # nobody has two left partners
    assert topo.degree(len(shell)).max() <= 4
    assert len(inter) == 7 + 7 + 10
    assert topo.stats["unmatched"] == 0  # with the wrap 2 -> 0 every satellite has a side partner


# --- states ----------------------------------------------------------------------------------
def test_delay_is_distance_over_c_at_every_step_even_when_down(iridium):
    const, eph = iridium
    topo = plus_grid(const)
    state, delay = isl_states(topo, eph, IslConfig())
    a, b = topo.pairs.T
    expected = np.linalg.norm(eph.r_teme_km[b] - eph.r_teme_km[a], axis=-1) / C_KM_S * 1000.0
    assert delay.dtype == np.float32 and delay.shape == state.shape
    np.testing.assert_allclose(delay, expected, rtol=1e-6)
    assert (state != Reason.UP).any()  # the check covers down links too


def test_star_seam_links_are_never_up_and_polar_cutoff_is_exact(iridium):
    const, eph = iridium
    cfg = IslConfig(polar_cutoff_deg=75.0, acquisition_s=0.0, max_slew_rate_deg_s=None)
    topo = plus_grid(const, cfg)
    state, _ = isl_states(topo, eph, cfg)
    assert topo.stats["seam"] == 11 == int(topo.seam.sum())
    assert (state[topo.seam] == Reason.SEAM).all()
    lat, _, _ = ecef_to_geodetic(eph.r_ecef_km)
    polar = np.abs(lat) > 75.0
    inter = (topo.role == 1) & ~topo.seam
    a, b = topo.pairs[inter].T
    expect_polar = polar[a] | polar[b]
    assert expect_polar.any() and (~expect_polar).any()
    # iridium neighbours are always in range and in sight: down exactly when an end is above 75 deg
    assert np.array_equal(state[inter] == Reason.POLAR, expect_polar)
    assert np.array_equal(state[inter] == Reason.UP, ~expect_polar)
    intra = topo.role == 0
    assert (state[intra] == Reason.UP).all()  # the cutoff applies to inter-plane links only
    # disabled cutoff: no POLAR at all
    s2, _ = isl_states(topo, eph, IslConfig(polar_cutoff_deg=None))
    assert not (s2 == Reason.POLAR).any()


def test_link_back_from_polar_region_acquires_for_ceil_acquisition_over_step(iridium):
    const, eph = iridium
    cfg = IslConfig(acquisition_s=25.0)  # 10 s steps -> 3 steps
    topo = plus_grid(const, cfg)
    state, _ = isl_states(topo, eph, cfg)
    n_acq = steps_for(25.0, eph.step_s)
    seen = 0
    for row in state[(topo.role == 1) & ~topo.seam]:
        for k in np.flatnonzero((row[:-1] == Reason.POLAR) & (row[1:] != Reason.POLAR)) + 1:
            if k + n_acq < len(row) and not (row[k:k + n_acq + 1] == Reason.POLAR).any():
                assert (row[k:k + n_acq] == Reason.ACQUIRING).all()
                assert row[k + n_acq] == Reason.UP
                seen += 1
    assert seen > 0
    assert not (state[:, 0] == Reason.ACQUIRING).any()  # links start acquired


def test_random_outages_then_reacquisition(iridium):
    const, eph = iridium
    cfg = IslConfig(outage_mtbf_s=600.0, outage_mean_duration_s=60.0, acquisition_s=20.0, seed=3)
    topo = plus_grid(const, cfg)
    state, _ = isl_states(topo, eph, cfg)
    again, _ = isl_states(topo, eph, cfg)
    other, _ = isl_states(topo, eph, IslConfig(outage_mtbf_s=600.0, outage_mean_duration_s=60.0,
                                               acquisition_s=20.0, seed=4))
    assert np.array_equal(state, again) and not np.array_equal(state, other)
    intra = state[topo.role == 0]
    assert (intra == Reason.OUTAGE).any()
    for row in intra:  # intra links are otherwise always up: every outage is followed by 2 acquiring steps
        for k in np.flatnonzero((row[:-1] == Reason.OUTAGE) & (row[1:] == Reason.UP)) + 1:
            pytest.fail(f"outage ended at step {k} without re-acquisition")
        for k in np.flatnonzero((row[:-1] == Reason.OUTAGE) & (row[1:] == Reason.ACQUIRING)) + 1:
            if k + 2 < len(row) and (row[k:k + 3] != Reason.OUTAGE).all():
                assert row[k:k + 3].tolist() == [Reason.ACQUIRING, Reason.ACQUIRING, Reason.UP]


def test_satellites_on_opposite_sides_of_the_earth_are_occluded():
    r0 = EARTH_RADIUS_KM + 550.0
    # steps: opposite sides; 1000 km apart; 5200 km apart, the chord dipping to 6422 km from the centre
    chord = np.sqrt(r0**2 - 2600.0**2)
    ra = [[r0, 0, 0], [r0, 0, 0], [chord, -2600.0, 0]]
    rb = [[-r0, 0, 0], [np.sqrt(r0**2 - 1000.0**2), 1000.0, 0], [chord, 2600.0, 0]]
    eph = fake_ephemeris([ra, rb])
    topo = pair_topology()
    cfg = IslConfig(max_range_km=20000.0, acquisition_s=0.0, max_slew_rate_deg_s=None)
    state, delay = isl_states(topo, eph, cfg)
    assert EARTH_RADIUS_KM < chord < EARTH_RADIUS_KM + 80.0  # third segment: above ground, in the margin
    assert state[0].tolist() == [Reason.OCCLUDED, Reason.UP, Reason.OCCLUDED]
    assert delay[0, 0] == pytest.approx(2 * r0 / C_KM_S * 1000.0, rel=1e-6)
    # without the atmosphere margin the third segment clears the Earth
    s2, _ = isl_states(topo, eph, IslConfig(atmosphere_margin_km=0.0, max_range_km=20000.0, acquisition_s=0.0))
    assert s2[0].tolist() == [Reason.OCCLUDED, Reason.UP, Reason.UP]


def test_range_limit_and_invalid_endpoints():
    r0 = EARTH_RADIUS_KM + 550.0
    d = [1000.0, 3000.0, 1000.0]
    ra = [[r0, 0, 0]] * 3
    rb = [[r0, x, 0] for x in d]  # above the Earth, clear line of sight
    valid = [[True, True, True], [True, True, False]]
    eph = fake_ephemeris([ra, rb], valid=valid)
    state, delay = isl_states(pair_topology(), eph, IslConfig(max_range_km=2000.0, acquisition_s=0.0))
    assert state[0].tolist() == [Reason.UP, Reason.RANGE, Reason.INVALID]
    assert delay[0, 2] == 0.0
    assert float(max_isl_range_km(550.0, 550.0)) == pytest.approx(5016.6, abs=0.05)  # Hypatia: 5016 km


def test_tracking_rate_on_a_hand_built_pair():
    # a at (R, 0, 0) moving +y at V; b 1000 km ahead (+y), drifting sideways at U relative to a
    R, V, d, U = 7000.0, 7.5, 1000.0, 0.5
    ra, va = np.array([R, 0, 0.0]), np.array([0, V, 0.0])
    rb, vb = np.array([R, d, 0.0]), np.array([U, V, 0.0])
    # in a's orbital frame (rotating at V / R about z) the line of sight turns at (U + d V / R) / d
    expected_deg_s = np.degrees((U + d * V / R) / d)
    assert los_rate_deg_s(ra, va, rb, vb) == pytest.approx(expected_deg_s, rel=1e-12)
    # two satellites on the same circular orbit: a fixed direction in the orbital frame
    th = np.radians(20.0)
    w = V / R
    rb2 = R * np.array([np.cos(th), np.sin(th), 0])
    vb2 = V * np.array([-np.sin(th), np.cos(th), 0])
    assert los_rate_deg_s(ra, va, rb2, vb2) < 1e-12 * w
    eph = fake_ephemeris([[ra], [rb]], [[va], [vb]])
    topo = pair_topology()
    below = IslConfig(max_slew_rate_deg_s=expected_deg_s * 0.99, max_range_km=5000.0)
    above = IslConfig(max_slew_rate_deg_s=expected_deg_s * 1.01, max_range_km=5000.0)
    assert isl_states(topo, eph, below)[0][0, 0] == Reason.TRACKING
    assert isl_states(topo, eph, above)[0][0, 0] == Reason.UP


def test_dropped_links_kept_in_the_table_are_always_terminals_down(delta_small):
    eph = propagate(delta_small, START, 60.0, 5)
    cfg = IslConfig(terminals=2)
    topo = plus_grid(delta_small, cfg, keep_dropped=True)
    state, _ = isl_states(topo, eph, cfg)
    assert topo.dropped.any()
    assert (state[topo.dropped] == Reason.TERMINALS).all()
    assert (state[~topo.dropped] == Reason.UP).all()


@pytest.mark.parametrize("field, value", [
    ("terminals", 9), ("terminals", 2.0), ("cross_shell_share", 1.5), ("min_hold_s", -1.0), ("max_range_km", 0.0), ("polar_cutoff_deg", 95.0),
    ("max_slew_rate_deg_s", 0.0), ("acquisition_s", -1.0), ("loss_pct", 101.0), ("rate_mbps", float("nan")),
])
def test_config_errors_name_the_field_and_value(field, value):
    with pytest.raises(ConfigError) as e:
        IslConfig(**{field: value})
    assert e.value.key == field
    assert field in str(e.value) and repr(value) in str(e.value)


def test_real_tle_shell_with_ragged_planes_keeps_degree_and_one_to_one_sides():
    from topologies.shells import constellation_from_tle
    from topologies.tle import load_tle

    const = constellation_from_tle(load_tle(Path(__file__).resolve().parents[2] / "topologies" / "data" / "starlink-2023-07.tle"),
                                   inclination_deg=53.0, altitude_km=550.0)
    # these are V1.0 satellites (no lasers by default): give them the full +Grid to test the matching
    topo = plus_grid(const, IslConfig(terminals=4, lasers_from_launch=None))
    assert topo.n_isl > 1.8 * const.n_sats
    assert topo.degree(const.n_sats).max() <= 4
    inter = topo.pairs[topo.role == 1]
    assert len(set(inter[:, 0].tolist())) == len(inter) == len(set(inter[:, 1].tolist()))
    assert len(undirected(topo.pairs)) == topo.n_isl
    # every inter-plane link joins neighbouring planes (with the wrap)
    planes = int(const.plane.max()) + 1
    assert ((const.plane[inter[:, 1]] - const.plane[inter[:, 0]]) % planes == 1).all()
