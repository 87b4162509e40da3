"""The dawn-dusk sun-synchronous Walker preset and the ltan_h / raan_span_deg shell keys (issue 14).

References computed here: the sun-synchronous inclination from the J2 nodal rate with EGM96-style
constants (not the product's WGS72 ones), the Sun from the Astronomical Almanac's low-precision
formulas (0.01 deg, 1950-2050), the node from r x v of SGP4 called directly, the shadow from the
umbra and penumbra cones by their vertices and half-angles.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from sgp4.api import SatrecArray, jday

from topologies.errors import ConfigError
from topologies.plan import build_constellation
from topologies.propagate import propagate
from topologies.scenario import parse_scenario
from topologies.sunlight import SUNLIT, UMBRA, sunlight_states
from topologies.walker import PRESETS, walker_constellation

R_EARTH_KM = 6378.137
R_SUN_KM = 695_700.0
AU_KM = 149_597_870.7
JUNE = datetime(2026, 6, 21, tzinfo=UTC)


def sso_inclination_deg(altitude_km: float) -> float:
    # dOmega/dt = -3/2 n J2 (R/a)^2 cos i, equal to 360 deg per 365.2422 days
    mu, j2, r = 398600.4418, 1.08262668e-3, 6378.137
    a = r + altitude_km
    n = math.sqrt(mu / a**3)
    rate = 2 * math.pi / (365.2422 * 86400.0)
    return math.degrees(math.acos(-rate / (1.5 * n * j2 * (r / a) ** 2)))


def sun_km(jd: np.ndarray) -> np.ndarray:
    """Astronomical Almanac low-precision Sun, equator and equinox of date, km; shape (n, 3)."""
    n = jd - 2451545.0
    g = np.radians(357.528 + 0.9856003 * n)
    lam = np.radians(280.460 + 0.9856474 * n + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 0.0000004 * n)
    dist = (1.00014 - 0.01671 * np.cos(g) - 0.00014 * np.cos(2 * g)) * AU_KM
    return dist[:, None] * np.stack([np.cos(lam), np.cos(eps) * np.sin(lam), np.sin(eps) * np.sin(lam)], axis=1)


def states(const, start: datetime, step_s: float, n_steps: int):
    jd0, fr0 = jday(start.year, start.month, start.day, start.hour, start.minute, start.second)
    fr = fr0 + np.arange(n_steps) * step_s / 86400.0
    err, r, v = SatrecArray(list(const.satrecs)).sgp4(np.full(n_steps, jd0), fr)
    assert not err.any()
    return r, v, jd0 + fr


def penumbra_margin_km(r: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Distance outside the penumbra cone (km, negative inside); r (n_sat, n_t, 3), sun (n_t, 3)."""
    d = np.linalg.norm(sun, axis=-1)
    s_hat = sun / d[:, None]
    behind = -np.einsum("stk,tk->st", r, s_hat)
    rho = np.linalg.norm(r + behind[..., None] * s_hat[None], axis=-1)
    alpha = np.arcsin((R_SUN_KM + R_EARTH_KM) / d)
    x_p = d * R_EARTH_KM / (R_SUN_KM + R_EARTH_KM)
    return np.where(behind > 0, rho - (x_p + behind) * np.tan(alpha), np.inf)


def test_preset_inclination_is_sun_synchronous_and_the_node_follows_the_sun() -> None:
    shell = PRESETS["dawn-dusk"]
    assert shell.ltan_h == 6.0
    assert shell.inclination_deg == pytest.approx(sso_inclination_deg(shell.altitude_km), abs=0.005)
    one = dataclasses.replace(shell, planes=1, sats_per_plane=1, phasing=0)
    const = walker_constellation([one], JUNE)
    r, v, _jd = states(const, JUNE, 600.0, 6 * 24 * 5 + 1)  # five days
    h = np.cross(r[0], v[0])
    raan = np.unwrap(np.arctan2(h[:, 0], -h[:, 1]))
    days = np.arange(raan.size) / (6 * 24)
    drift_deg_day = math.degrees(np.polyfit(days, raan, 1)[0])
    assert drift_deg_day == pytest.approx(360.0 / 365.2422, rel=0.003)


@pytest.mark.parametrize("ltan_h", [6.0, 18.0, 10.5])
def test_ascending_node_is_at_the_local_time_asked(ltan_h: float) -> None:
    shell = dataclasses.replace(PRESETS["dawn-dusk"], ltan_h=ltan_h, planes=4, sats_per_plane=1, phasing=0)
    const = walker_constellation([shell], JUNE)
    r, v, jd = states(const, JUNE, 60.0, 1)
    h = np.cross(r[:, 0], v[:, 0])
    raan_deg = np.degrees(np.arctan2(h[:, 0], -h[:, 1]))
    s = sun_km(jd)[0]
    sun_ra_deg = math.degrees(math.atan2(s[1], s[0]))
    ltan = np.mod(12.0 + (raan_deg - sun_ra_deg) / 15.0, 24.0)
    expected = np.mod(ltan_h + np.arange(4) * (8.0 / 4) / 15.0, 24.0)  # planes 2 deg of RAAN apart
    assert np.allclose(ltan, expected, atol=0.01)  # 0.01 h = 0.15 deg; the reference Sun is good to 0.01


def test_dawn_dusk_preset_stays_sunlit_over_a_june_day() -> None:
    const = walker_constellation([PRESETS["dawn-dusk"]], JUNE)
    r, _v, jd = states(const, JUNE, 60.0, 24 * 60 + 1)
    margin = penumbra_margin_km(r, sun_km(jd))
    assert margin.min() > 100.0  # clear of the penumbra cone by more than a margin for the reference Sun
    eph = propagate(const, JUNE, 60.0, 24 * 60 + 1)
    assert np.all(sunlight_states(eph) == SUNLIT)


def test_the_other_dawn_dusk_node_is_eclipsed_in_june() -> None:
    """Ascending at 18:00 the same orbit dips into the shadow around the June solstice: the checks
    above can fail."""
    shell = dataclasses.replace(PRESETS["dawn-dusk"], ltan_h=18.0, planes=1, sats_per_plane=4, phasing=0)
    const = walker_constellation([shell], JUNE)
    r, _v, jd = states(const, JUNE, 60.0, 24 * 60 + 1)
    dark_ref = penumbra_margin_km(r, sun_km(jd)) < 0.0
    assert dark_ref.any(axis=1).all()
    got = sunlight_states(propagate(const, JUNE, 60.0, 24 * 60 + 1))
    assert (got == UMBRA).any(axis=1).all()
    # per step the product's dark steps and the reference's agree but for steps at a boundary
    assert np.mean((got != SUNLIT) != dark_ref) < 0.01


SCENARIO = """
[time]
start = "2026-06-21T00:00:00Z"
duration_s = 60
step_s = 60.0
[[constellation.shells]]
name = "dd"
pattern = "star"
altitude_km = 700.0
{extra}planes = 3
sats_per_plane = 10
phasing = 1
"""


def test_scenario_keys_build_a_sun_synchronous_shell() -> None:
    sc = parse_scenario(SCENARIO.format(extra="ltan_h = 18.0\nraan_span_deg = 6.0\n"))
    spec = sc.constellation.shells[0]
    assert spec.inclination_deg == pytest.approx(sso_inclination_deg(700.0), abs=0.005)
    const = build_constellation(sc)
    r, v, jd = states(const, sc.time.start, 60.0, 1)
    h = np.cross(r[::10, 0], v[::10, 0])
    raan_deg = np.degrees(np.arctan2(h[:, 0], -h[:, 1]))
    # osculating RAANs (r x v) differ from the mean elements' by J2's short-period terms, ~0.002 deg
    assert np.allclose(np.mod(np.diff(raan_deg), 360.0), 2.0, atol=0.01)
    s = sun_km(jd)[0]
    ltan0 = (12.0 + (raan_deg[0] - math.degrees(math.atan2(s[1], s[0]))) / 15.0) % 24.0
    assert ltan0 == pytest.approx(18.0, abs=0.01)


@pytest.mark.parametrize(("extra", "key", "line"), [
    ("ltan_h = 6.0\ninclination_deg = 97.0\n", "inclination_deg", 11),
    ("ltan_h = 24.0\n", "ltan_h", 10),
    ("raan_span_deg = 0.0\n", "raan_span_deg", 10),
])
def test_bad_sun_synchronous_keys_name_key_and_line(extra: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as e:
        parse_scenario(SCENARIO.format(extra=extra), "dd.toml")
    assert e.value.key == f"constellation.shells[0].{key}"
    assert e.value.line == line
    assert "\n" not in str(e.value)
