"""The compute nodes' battery model (topologies.power, issue 14).

The references are computed here: the satellite by SGP4 called directly, the shadow by casting rays from
the satellite to points spread over the Sun's disc and testing them against the Earth's sphere (no use of
the product's shadow geometry), the energy by integrating that lit share on a 0.25 s grid. Only the Sun's
position is the product's (topologies.sunlight.sun_teme_km, checked against skyfield in test_sunlight).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sgp4.api import SatrecArray

from emulator.cli import main
from topologies.errors import ConfigError
from topologies.plan import build_constellation, plan_scenario
from topologies.power import POWER_STATES, PowerConfig, battery_series, power_events
from topologies.propagate import julian_date
from topologies.scenario import parse_scenario
from topologies.sunlight import sun_teme_km
from topologies.timeline import Timeline

R_EARTH_KM = 6378.137
R_SUN_KM = 695_700.0
FINE_S = 0.25

ONE_SAT = """
name = "power"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {duration}
step_s = {step}
[[constellation.shells]]
name = "s"
altitude_km = 550.0
inclination_deg = 53.0
planes = 3
sats_per_plane = 3
phasing = 1
[[compute]]
name = "dc"
satellite = "sat-0-0"
[power]
{power}
"""


def disc_points(n: int = 2000) -> np.ndarray:
    """Points spread evenly over the unit disc (a sunflower pattern), shape (n, 2)."""
    k = np.arange(n) + 0.5
    r = np.sqrt(k / n)
    t = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def lit_share(r_km: np.ndarray, sun_km: np.ndarray) -> np.ndarray:
    """Share of the Sun's disc visible past the Earth's sphere from each position, by ray casting; shape (n,)."""
    pts = disc_points()
    out = np.empty(len(r_km))
    for i, (r, s) in enumerate(zip(r_km, sun_km)):
        to_sun = s - r
        d = np.linalg.norm(to_sun)
        u = to_sun / d
        # quick answers far from the shadow: the Earth's centre well away from the line to the Sun
        e1 = np.cross(u, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        targets = s + R_SUN_KM * (pts[:, :1] * e1 + pts[:, 1:] * e2)  # points on the Sun's disc
        rays = targets - r
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        # ray r + t v meets the sphere |x| = R for some t > 0?
        b = rays @ r
        disc = b * b - (r @ r - R_EARTH_KM**2)
        blocked = (disc > 0) & (-b - np.sqrt(np.maximum(disc, 0.0)) > 0)
        out[i] = 1.0 - blocked.mean()
    return out


def reference_lit(sc, n_steps: int, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) on a FINE_S grid over the plan and the lit share of sat-0-0 at each."""
    const = build_constellation(sc)
    sat = const.satrecs[list(const.names).index("sat-0-0")]
    t = np.arange(0.0, (n_steps - 1) * step_s + 1e-9, FINE_S)
    jd0, fr0 = julian_date(sc.time.start)
    err, r, _v = SatrecArray([sat]).sgp4(np.full(t.size, jd0), fr0 + t / 86400.0)
    assert not err.any()
    sun = sun_teme_km(np.full(t.size, jd0), fr0 + t / 86400.0)
    # the Sun's side of the Earth and the far side away from the shadow are decided without rays
    cos_sep = np.einsum("ij,ij->i", -r[0], sun - r[0]) / (np.linalg.norm(r[0], axis=1)
                                                            * np.linalg.norm(sun - r[0], axis=1))
    lit = np.ones(t.size)
    near = cos_sep > math.cos(math.radians(75.0))  # the Earth's disc is ~66 deg in radius from 550 km
    lit[near] = lit_share(r[0][near], sun[near])
    return t, lit


def integrate(t: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(t)))


@pytest.mark.parametrize("efficiency", [1.0, 0.92])
def test_energy_balance_over_one_orbit(efficiency: float) -> None:
    step_s = 2.0
    power = (f"battery_wh = 10000\ninitial_pct = 50\nsolar_w = 400\nbus_w = 80\ncompute_w = 60\n"
             f"charge_efficiency = {efficiency}")
    sc = parse_scenario(ONE_SAT.format(duration=5800, step=step_s, power=power))
    tl = plan_scenario(sc)
    assert tl.compute_charge_wh is not None and tl.compute_power is not None
    assert (tl.compute_power == 0).all()  # far from every threshold: the load stays 140 W
    t, lit = reference_lit(sc, tl.n_steps, step_s)
    assert lit.min() == 0.0 and lit.max() == 1.0  # the window holds an eclipse and sunlight
    assert (lit == 1.0).mean() > 0.5
    solar_w, load_w = 400.0, 140.0
    energy_in_wh = integrate(t, solar_w * lit) / 3600.0
    energy_out_wh = load_w * t[-1] / 3600.0
    surplus = np.maximum(solar_w * lit - load_w, 0.0)
    deficit = np.maximum(load_w - solar_w * lit, 0.0)
    stored_wh = efficiency * integrate(t, surplus) / 3600.0
    drawn_wh = integrate(t, deficit) / 3600.0
    change_wh = float(tl.compute_charge_wh[0, -1] - tl.compute_charge_wh[0, 0])
    # The plan averages the lit share over each 2 s step (trapezoid); where it is constant over a step the
    # two agree exactly. A step in which it is not (the penumbra, ~9 s at each end of the eclipse) lies,
    # in both, between a step of darkness and a step of full sun: off by at most the net flow's swing.
    per = int(round(step_s / FINE_S))
    mixed = sum(1 for j in range(tl.n_steps - 1) if np.ptp(lit[j * per:(j + 1) * per + 1]) > 0)
    partial_s = float(((lit > 0.0) & (lit < 1.0)).sum()) * FINE_S  # the penumbra, both ways
    assert 2 <= mixed and mixed * step_s <= partial_s + 4 * step_s
    tol_wh = mixed * step_s * (efficiency * (solar_w - load_w) + load_w) / 3600.0
    if efficiency == 1.0:
        # no loss: the change of charge is energy in - energy out
        assert change_wh == pytest.approx(energy_in_wh - energy_out_wh, abs=tol_wh)
    assert change_wh == pytest.approx(stored_wh - drawn_wh, abs=tol_wh)
    # The same rule on this test's own lit shares at the plan's steps (trapezoid, surplus stored at the
    # efficiency, deficit drawn): equal up to the ray sampling's error (2,000 points: well under 0.5 % of
    # the disc) in the steps where the share is partial.
    f = lit[::per][: tl.n_steps]
    net_wh = (solar_w * 0.5 * (f[:-1] + f[1:]) - load_w) * step_s / 3600.0
    same_rule_wh = float(np.sum(np.where(net_wh > 0, efficiency * net_wh, net_wh)))
    assert change_wh == pytest.approx(same_rule_wh, abs=mixed * solar_w * 0.005 * step_s / 3600.0)
    # forgetting the efficiency would be caught: the surplus alone is worth more than the tolerance
    if efficiency < 1.0:
        assert (1 - efficiency) * integrate(t, surplus) / 3600.0 > 5 * tol_wh


def test_battery_accounting_on_a_hand_built_day() -> None:
    # 10 steps of 360 s (0.1 h): full sun, then 5 steps dark, then sun; 100 Wh, starts at 90 %
    cfg = PowerConfig(solar_w=300.0, bus_w=50.0, compute_w=50.0, compute_idle_w=10.0, battery_wh=100.0,
                      initial_pct=90.0, charge_efficiency=0.5, throttle_pct=40.0, stop_pct=20.0,
                      throttle_share=0.5, hysteresis_pct=5.0)
    lit = np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1]], float)
    s = battery_series(lit, cfg, 360.0)
    e = [90.0]
    # step 0-1: surplus 200 W x 0.1 h = 20 Wh, half stored: 10 Wh fits (to 100), the rest shed
    e.append(100.0)
    e.append(100.0)
    # step 2-3: the trapezoid sees half sun: 150 - 100 = 50 W x 0.1 h = 5 Wh surplus, 2.5 stored; full
    e.append(100.0)
    # dark at 100 W: 10 Wh a step -> 90, 80, 70, 60, 50
    e += [90.0, 80.0, 70.0, 60.0, 50.0]
    # step 8-9: half sun again: +2.5 Wh; then full sun +10 Wh a step
    e += [52.5, 62.5, 72.5]
    assert np.allclose(s.charge_wh[0], e)
    assert (s.state == 0).all()
    assert s.shed_wh[0, 0] == pytest.approx(0.0) and s.shed_wh[0, 1] == pytest.approx(20.0)
    # conservation: solar + taken from the battery + unmet = loads + put into it / efficiency + shed
    lhs = s.solar_wh + s.drawn_wh + s.unmet_wh
    rhs = s.load_wh + s.stored_wh / cfg.charge_efficiency + s.shed_wh
    assert np.allclose(lhs, rhs)

    # a long night: throttled below 40 Wh (draw 50 + 10 + 20 = 80 W), stopped below 20 Wh (60 W), empty
    dark = battery_series(np.zeros((1, 12)), cfg, 360.0)
    levels = dark.charge_wh[0]
    assert np.allclose(levels[:7], [90, 80, 70, 60, 50, 40, 30])
    # 40 is not below 40: still normal at 40; 30 throttles; then 8 Wh a step: 22, 14 (stopped), 8, 2, 0
    assert [POWER_STATES[x] for x in dark.state[0]] == (["normal"] * 6 + ["throttled"] * 2 + ["stopped"] * 4)
    assert np.allclose(levels[7:], [22, 14, 8, 2, 0])
    assert dark.unmet_wh[0, -1] == pytest.approx(4.0)  # 6 Wh asked, 2 Wh left

    # hysteresis: back from stopped only at 25 %, from throttled only at 45 %
    sunrise = battery_series(np.array([[0.0] * 1 + [1.0] * 14]), PowerConfig(
        solar_w=110.0, bus_w=50.0, compute_w=50.0, compute_idle_w=10.0, battery_wh=100.0, initial_pct=15.0,
        charge_efficiency=1.0, hysteresis_pct=5.0), 360.0)
    pct = sunrise.charge_wh[0]
    st = sunrise.state[0]
    for p, x in zip(pct, st):
        if p < 20:
            assert x == 2
        elif p < 25:
            assert x == 2  # still stopped (came from below)
        elif p < 40:
            assert x == 1
        elif p < 45:
            assert x == 1
        else:
            assert x == 0
    assert set(st.tolist()) == {0, 1, 2}


def eclipse_times(t: np.ndarray, lit: np.ndarray) -> tuple[float, float]:
    """First time the Sun starts to go (lit < 1 after full light) and the first time it is whole again."""
    start = int(np.flatnonzero((lit[:-1] == 1.0) & (lit[1:] < 1.0))[0]) + 1
    end = start + int(np.flatnonzero(lit[start:] == 1.0)[0])
    return float(t[start]), float(t[end])


def test_a_battery_that_cannot_last_an_eclipse_throttles_then_stops(tmp_path, capsys) -> None:
    step_s = 5.0
    sc = parse_scenario(ONE_SAT.format(duration=6600, step=step_s, power="battery_wh = 40"))
    tl = plan_scenario(sc)
    events = power_events(tl)
    assert [(e["previous"], e["state"]) for e in events][:4] == [("normal", "throttled"), ("throttled", "stopped"),
                                                               ("stopped", "throttled"), ("throttled", "normal")]
    t, lit = reference_lit(sc, tl.n_steps, step_s)
    t_in, t_out = eclipse_times(t, lit)
    dark = t[(lit == 0.0) & (t > t_in) & (t < t_out)]
    pen_s = float(dark[0]) - t_in  # the penumbra on the way in
    # Full at the entry (it had been in the sun long enough): 24 Wh at 140 W to 40 %, then 8 Wh at the
    # throttled 80 + 15 + 22.5 W to 20 %. The penumbra's light delays both by at most its length, the
    # step by one step; a throttle seen up to a step late (at most 140 W x 5 s below 16 Wh) can bring the
    # stop earlier by that energy at 117.5 W.
    throttle_s = t_in + 24.0 / 140.0 * 3600.0
    stop_s = throttle_s + 8.0 / 117.5 * 3600.0
    thr, stop, back, normal = events[:4]
    assert throttle_s <= thr["t_s"] <= throttle_s + pen_s + step_s
    assert stop_s - step_s * 140.0 / 117.5 <= stop["t_s"] <= stop_s + pen_s + 2 * step_s
    assert float(dark[-1]) < back["t_s"] < normal["t_s"]
    assert all(e["node"] == "dc" and e["satellite"] == "sat-0-0" for e in events)
    assert 40.0 - 100.0 * 140.0 * step_s / 3600.0 / 40.0 - 0.01 <= thr["charge_pct"] < 40.0
    # in the timeline file, and in plan's summary (text and JSON)
    back_tl = Timeline.load(tl.save(tmp_path / "t.npz"))
    assert back_tl.compute_power is not None and back_tl.compute_charge_wh is not None
    assert power_events(back_tl) == events
    path = tmp_path / "s.toml"
    path.write_text(ONE_SAT.format(duration=6600, step=step_s, power="battery_wh = 40"))
    assert main(["plan", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["power"]["events"] == events
    assert s["power"]["nodes_throttled"] == 1 and s["power"]["nodes_stopped"] == 1
    assert s["power"]["config"]["battery_wh"] == 40.0 and s["power"]["config"]["throttle_share"] == 0.5
    assert main(["plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert "power event" in text and "normal -> throttled" in text and "throttled -> stopped" in text


def test_no_throttling_on_the_dawn_dusk_preset_in_june() -> None:
    sc = parse_scenario("""
[time]
start = "2026-06-21T00:00:00Z"
duration_s = 86400
step_s = 60
[constellation]
preset = "dawn-dusk"
[[compute]]
every_nth = 6
""")
    tl = plan_scenario(sc)
    assert len(tl.nodes_of("compute")) == 16
    assert power_events(tl) == []
    assert tl.compute_power is not None and (tl.compute_power == 0).all()
    assert tl.compute_charge_wh is not None and np.allclose(tl.compute_charge_wh, 200.0)
    assert tl.report["power"]["events"] == []
    assert tl.sat_sunlight is not None and (tl.sat_sunlight == 0).all()


@pytest.mark.parametrize("key,value,words", [
    ("battery_wh", "0", "battery_wh must be in (0"),
    ("stop_pct", "50", "stop_pct (50) must not exceed throttle_pct"),
    ("charge_efficiency", "1.5", "charge_efficiency must be in (0, 1]"),
    ("compute_idle_w", "100", "compute_idle_w (100 W) must not exceed compute_w"),
    ("solar_w", "nan", "finite"),
    ("watts", "3", "unknown key 'watts' in [power]"),
])
def test_bad_power_keys_name_key_and_line(tmp_path, key: str, value: str, words: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(ONE_SAT.format(duration=60, step=1, power=f"{key} = {value}"))
    from topologies.scenario import load_scenario

    with pytest.raises(ConfigError) as e:
        load_scenario(path)
    assert words in str(e.value)
    assert e.value.line == ONE_SAT.splitlines().index("[power]") + 2  # the line after [power], from 1
    assert f"power.{key}" in str(e.value)
