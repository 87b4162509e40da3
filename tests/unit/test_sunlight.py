"""Sunlight and eclipse (issue 14) against references the product does not use.

The Sun of the reference comes from skyfield (its own DE430 excerpt shipped with skyfield for
2015-02-26 .. 03-06, apparent position, its own TEME frame), the satellite from the sgp4 package
called here, and the shadow from a different formulation: the ray from the satellite to the Sun's
centre against the Earth's sphere, and the umbra and penumbra cones by their vertices and half-angles.
The product uses DE421 from the de421 package, its own frame rotation and angular radii.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sgp4.api import jday

from topologies.constellation import Shell
from topologies.propagate import propagate
from topologies.sunlight import BOUNDARIES, SUNLIT, UMBRA, shadow_crossings, sunlight_states
from topologies.walker import walker_constellation

skyfield_api = pytest.importorskip("skyfield.api")
from skyfield.sgp4lib import TEME  # noqa: E402

R_EARTH_KM = 6378.137
R_SUN_KM = 695_700.0
START = datetime(2015, 3, 1, 6, 0, tzinfo=UTC)  # inside the DE430 excerpt skyfield ships for its tests


@pytest.fixture(scope="module")
def sky():
    import skyfield

    path = Path(skyfield.__file__).parent / "tests" / "data" / "de430-2015-03-02.bsp"
    assert path.exists(), f"skyfield's DE430 excerpt is missing at {path}"
    eph = skyfield_api.load_file(str(path))
    return skyfield_api.load.timescale(builtin=True), eph["earth"], eph["sun"]


@pytest.fixture(scope="module")
def planned():
    # two shells of different geometry: 53 deg at 550 km and a polar one at 800 km (longer, slanted passes)
    shells = [Shell("a", "delta", 550.0, 53.0, 3, 2, 1), Shell("b", "star", 800.0, 88.0, 2, 2, 1)]
    const = walker_constellation(shells, START)
    eph = propagate(const, START, 60.0, 6 * 60)  # six hours, 60 s steps
    return const, eph, shadow_crossings(eph)


def _reference(sky, satrecs, t_s: np.ndarray):
    """Satellite and Sun in TEME (km) at seconds after START, from sgp4 and skyfield directly."""
    ts, earth, sun = sky
    t0 = ts.from_datetime(START)
    sun_km = earth.at(ts.tt_jd(t0.tt + t_s / 86_400.0)).observe(sun).apparent().frame_xyz(TEME).km.T
    jd_utc, fr0 = jday(START.year, START.month, START.day, START.hour, START.minute, START.second)
    fr_utc = fr0 + t_s / 86_400.0
    r = np.empty((t_s.size, 3))
    for i, rec in enumerate(satrecs):
        err, pos, _vel = rec.sgp4(jd_utc, float(fr_utc[i]))
        assert err == 0
        r[i] = pos
    return r, sun_km


def _centre_margin_km(r: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Closest approach of the ray satellite -> Sun centre to the Earth's centre, minus the radius."""
    u = sun - r
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    along = np.sum(r * u, axis=1)
    closest = np.where(along < 0.0, np.linalg.norm(np.cross(r, u), axis=1), np.linalg.norm(r, axis=1))
    return closest - R_EARTH_KM


def _cone_margins_km(r: np.ndarray, sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance outside the penumbra cone and outside the umbra cone (km; negative inside)."""
    d = np.linalg.norm(sun, axis=1)
    s_hat = sun / d[:, None]
    behind = -np.sum(r * s_hat, axis=1)  # along the anti-Sun axis from the Earth's centre
    rho = np.linalg.norm(r + behind[:, None] * s_hat, axis=1)  # off that axis
    alpha_p = np.arcsin((R_SUN_KM + R_EARTH_KM) / d)  # penumbra cone, vertex d R_e / (R_s + R_e) sunward
    alpha_u = np.arcsin((R_SUN_KM - R_EARTH_KM) / d)  # umbra cone, vertex d R_e / (R_s - R_e) behind
    x_p = d * R_EARTH_KM / (R_SUN_KM + R_EARTH_KM)
    x_u = d * R_EARTH_KM / (R_SUN_KM - R_EARTH_KM)
    pen = rho - (x_p + behind) * np.tan(alpha_p)
    umb = rho - (x_u - behind) * np.tan(alpha_u)
    return np.where(behind > 0, pen, 1.0), np.where(behind > 0, umb, 1.0)


def _bisect(sky, satrecs, lo_s: np.ndarray, hi_s: np.ndarray, margin, entering: np.ndarray) -> np.ndarray:
    lo, hi = lo_s.copy(), hi_s.copy()
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        r, sun = _reference(sky, satrecs, mid)
        lit = margin(r, sun) > 0.0
        keep_lo = lit == entering  # still on the side the crossing starts from
        lo = np.where(keep_lo, mid, lo)
        hi = np.where(keep_lo, hi, mid)
    return 0.5 * (lo + hi)


def _passes(cross, boundary: str):
    """(sat, entry s, exit s) of each whole pass through a boundary."""
    k = cross.boundary == BOUNDARIES.index(boundary)
    sat, t, ent = cross.sat[k], cross.time_s[k], cross.entering[k]
    whole = ent[:-1] & ~ent[1:] & (sat[:-1] == sat[1:])
    return sat[:-1][whole], t[:-1][whole], t[1:][whole]


def test_limb_crossings_agree_with_skyfield(sky, planned) -> None:
    const, _eph, cross = planned
    sat, t_in, t_out = _passes(cross, "centre")
    long_ = (t_out - t_in) >= 300.0
    assert long_.sum() >= 10, "too few eclipses of >= 5 min to test"
    sat, t_in, t_out = sat[long_], t_in[long_], t_out[long_]
    recs = [const.satrecs[i] for i in sat]
    for times, entering in ((t_in, True), (t_out, False)):
        ref = _bisect(sky, recs, times - 30.0, times + 30.0, _centre_margin_km, np.full(times.size, entering))
        err = np.abs(ref - times)
        assert err.max() < 2.0, f"limb crossings off skyfield by up to {err.max():.3f} s"
        # the bracket was wide enough: the reference crossing is not at its edge
        assert np.all(np.abs(ref - times) < 29.0)


def test_penumbra_durations_match_the_cones(sky, planned) -> None:
    const, _eph, cross = planned
    pen = cross.boundary == BOUNDARIES.index("penumbra")
    umb = cross.boundary == BOUNDARIES.index("umbra")
    pairs = []  # (penumbra crossing, the same satellite's umbra crossing next to it)
    for i in np.flatnonzero(pen):
        same = np.flatnonzero(umb & (cross.sat == cross.sat[i]) & (cross.entering == cross.entering[i]))
        if same.size:
            j = same[np.argmin(np.abs(cross.time_s[same] - cross.time_s[i]))]
            if abs(cross.time_s[j] - cross.time_s[i]) < 120.0:
                pairs.append((i, j))
    assert len(pairs) >= 10
    i, j = np.array(pairs).T
    recs = [const.satrecs[k] for k in cross.sat[i]]
    e = cross.entering[i]
    t_p = _bisect(sky, recs, cross.time_s[i] - 30.0, cross.time_s[i] + 30.0,
                  lambda r, s: _cone_margins_km(r, s)[0], e)
    t_u = _bisect(sky, recs, cross.time_s[j] - 30.0, cross.time_s[j] + 30.0,
                  lambda r, s: _cone_margins_km(r, s)[1], e)
    ref_s = np.abs(t_u - t_p)
    got_s = np.abs(cross.time_s[j] - cross.time_s[i])
    assert np.all((ref_s > 5.0) & (ref_s < 60.0))  # a LEO penumbra lasts seconds, not minutes
    err = np.abs(got_s - ref_s)
    assert err.max() < 1.0, f"penumbra durations off the cones' by up to {err.max():.3f} s"


def test_states_follow_the_crossings(planned) -> None:
    """The per-step states agree with the refined crossings: a step in umbra lies inside an umbra pass."""
    _const, eph, cross = planned
    states = sunlight_states(eph)
    sat, t_in, t_out = _passes(cross, "umbra")
    step_t = np.arange(eph.n_steps) * eph.step_s
    for s, a, b in zip(sat, t_in, t_out, strict=True):
        inside = (step_t > a) & (step_t < b)
        assert np.all(states[s, inside] == UMBRA)
    # about a third of a low orbit is in the shadow at an equinox; none is in it all the time
    share = float((states == UMBRA).mean())
    assert 0.2 < share < 0.45
    assert np.all((states == SUNLIT).any(axis=1))
    assert math.isfinite(share)


def test_plan_stores_sunlight_and_it_survives_save_and_load(tmp_path) -> None:
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario
    from topologies.timeline import Timeline

    sc = parse_scenario("""
[time]
start = "2015-03-01T06:00:00Z"
duration_s = 7200
step_s = 30.0
[[constellation.shells]]
name = "s"
altitude_km = 550.0
inclination_deg = 53.0
planes = 4
sats_per_plane = 4
phasing = 1
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5
lon_deg = -0.13
""")
    tl = plan_scenario(sc)
    assert tl.sat_sunlight is not None and tl.sat_sunlight.shape == (16, tl.n_steps)
    # two hours at an equinox: every satellite goes round once at least, so each sees the shadow
    report = tl.report["sunlight"]
    assert report["sats_eclipsed"] == 16
    assert report["eclipses"] >= 16
    assert 0.0 < report["penumbra_pct"] < report["umbra_pct"]
    assert report["umbra_pct"] == pytest.approx(100.0 * float((tl.sat_sunlight == UMBRA).mean()))
    back = Timeline.load(tl.save(tmp_path / "t.npz"))
    assert back.sat_sunlight is not None
    assert np.array_equal(back.sat_sunlight, tl.sat_sunlight)
