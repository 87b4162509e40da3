"""Many antennas per gateway (issue 11, "Done means"): on the default constellation (Starlink's first shell)
the predicted London - New York RTT is within 5 % (median) and 10 % (p95) of the least-delay bound where a
gateway may use any satellite above its mask at every step.

The bound is computed here, independently of the product's ground links: satellite positions from the
timeline's geodetic track turned into Earth-fixed vectors by WGS84 formulas written for the test, elevation
from each gateway's geodetic up vector, laser delays from those positions / c on the ISLs the timeline has
up, and networkx's Dijkstra over every satellite above 25 deg at each step (no antenna count, slot grid,
hysteresis or per-satellite cap). The product's prediction is routing.predict's, on the planned timeline
with 8 antennas per gateway on the 15 s slot grid, under the "spread" antenna policy (topologies.gsl: half a
site's antennas on the highest satellites, the others spread over its sky, so that one holds a satellite
towards wherever the route leaves).

Measured here (600 s at 5 s steps, 120 steps): bound median 42.85 ms, p95 45.72 ms; "spread" 43.23 ms
(+0.9 %) and 46.44 ms (+1.6 %); "highest-elevation" 45.32 ms (+5.8 %, misses the 5 %) and 47.93 ms
(+4.8 %). London sees 17-20 satellites above 25 deg, and highest-elevation gives its 8 antennas the 8
highest, bunched overhead and blind to routing, while the least-delay path enters on a lower satellite
towards New York; spread holds one that way."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from routing.predict import predict
from topologies.plan import plan_scenario
from topologies.scenario import DEFAULT_SCENARIO_TOML, parse_scenario
from topologies.timeline import LINK_CLASSES, Reason

C_KM_S = 299_792.458
A_KM, F = 6378.137, 1 / 298.257223563
MASK_DEG = 25.0
STEP_S, DURATION_S = 5.0, 600.0

# the built-in scenario, over 10 minutes at 5 s steps, with 8 antennas per gateway on the 15 s slot grid
SCENARIO = DEFAULT_SCENARIO_TOML.replace("duration_s = 60\nstep_s = 1.0",
                                         f"duration_s = {DURATION_S:g}\nstep_s = {STEP_S:g}").replace(
    '[constellation]\npreset = "starlink-shell1"\n',
    '[constellation]\npreset = "starlink-shell1"\n\n[gsl]\nantennas = 8\nreconfiguration_interval_s = 15.0\n'
    f"min_elevation_deg = {MASK_DEG}\n")


def ecef_km(lat_deg, lon_deg, alt_km):
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    e2 = F * (2 - F)
    n = A_KM / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    return np.stack([(n + alt_km) * np.cos(lat) * np.cos(lon), (n + alt_km) * np.cos(lat) * np.sin(lon),
                     (n * (1 - e2) + alt_km) * np.sin(lat)], axis=-1)


def bound_rtt_ms(tl, src: tuple[float, float], dst: tuple[float, float]) -> np.ndarray:
    """Per step: twice the least one-way delay between two ground points over the ISLs up in the timeline,
    entering and leaving at any satellite above the mask."""
    lla = tl.sat_lla.astype(np.float64)  # (n_sat, n_t, 3)
    r = ecef_km(lla[..., 0], lla[..., 1], lla[..., 2])
    isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
    out = np.full(tl.n_steps, np.nan)
    ends = []
    for lat, lon in (src, dst):
        up = np.array([math.cos(math.radians(lat)) * math.cos(math.radians(lon)),
                       math.cos(math.radians(lat)) * math.sin(math.radians(lon)), math.sin(math.radians(lat))])
        ends.append((ecef_km(lat, lon, 0.0), up))
    for k in range(tl.n_steps):
        g = nx.Graph()
        for l in isl[tl.state[isl, k] == Reason.UP].tolist():
            a, b = int(tl.link_a[l]), int(tl.peer[l, k])
            g.add_edge(a, b, weight=float(np.linalg.norm(r[a, k] - r[b, k])) / C_KM_S * 1000.0)
        for name, (pos, up) in zip(("src", "dst"), ends):
            rel = r[:, k] - pos
            rng = np.linalg.norm(rel, axis=1)
            el = np.degrees(np.arcsin(rel @ up / rng))
            for s in np.flatnonzero(el >= MASK_DEG).tolist():
                g.add_edge(name, s, weight=float(rng[s]) / C_KM_S * 1000.0)
        out[k] = 2 * nx.dijkstra_path_length(g, "src", "dst")
    return out


def rtts(antennas: int, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """The product's predicted RTT h-london -> h-new-york and the bound, per step, with this many antennas per
    gateway under this antenna policy."""
    text = SCENARIO.replace("antennas = 8\n", f'antennas = {antennas}\npolicy = "{policy}"\n')
    sc = parse_scenario(text, "<many-antennas>")
    assert sc.gsl_config().policy == policy
    tl = plan_scenario(sc)
    gw = [tl.nodes[i] for i in tl.nodes_of("gateway")]
    assert [n.info["antennas"] for n in gw] == [antennas, antennas]
    a, b = tl.node_index("h-london"), tl.node_index("h-new-york")
    pred = predict(tl, "shortest-delay", [(a, b)])[(a, b)].rtt_ms
    london, new_york = [(n.info["lat_deg"], n.info["lon_deg"]) for n in gw]
    bound = bound_rtt_ms(tl, london, new_york)
    assert np.isfinite(pred).all() and np.isfinite(bound).all()
    # a bound: no step may beat it (up to float32 rounding of the timeline's positions and delays)
    assert (pred >= bound - 0.01).all(), float(np.min(pred - bound))
    print(f"\n{antennas} antennas, {policy}: predicted RTT median {np.median(pred):.2f} ms, p95 {np.percentile(pred, 95):.2f} "
          f"ms; bound median {np.median(bound):.2f} ms, p95 {np.percentile(bound, 95):.2f} ms ({tl.n_steps} steps)")
    return pred, bound


@pytest.fixture(scope="module")
def eight():
    return rtts(8, "spread")  # 8: the default for Starlink's gateways ([ground] gateway_antennas, docs/model.md)


def test_median_rtt_with_eight_spread_antennas_is_within_5_pct_of_the_any_satellite_bound(eight):
    pred, bound = eight
    assert np.median(pred) <= 1.05 * np.median(bound)


def test_p95_rtt_with_eight_spread_antennas_is_within_10_pct_of_the_any_satellite_bound(eight):
    pred, bound = eight
    assert np.percentile(pred, 95) <= 1.10 * np.percentile(bound, 95)


def test_highest_elevation_antennas_stay_further_from_the_bound_than_spread_ones(eight):
    """The comparison behind the policy: with the same 8 antennas, the highest-elevation rule's median is
    further above the bound than spread's (measured 45.32 against 43.23 ms, +5.8 % against +0.9 %), and by more
    than a slot's worth of noise (half a millisecond)."""
    pred, bound = eight
    high, high_bound = rtts(8, "highest-elevation")
    assert np.array_equal(high_bound, bound)  # the same timeline geometry: the bound ignores the antennas
    assert np.median(high) > np.median(pred) + 0.5


def test_with_16_antennas_the_median_is_within_5_pct_of_the_bound():
    """Enough highest-elevation antennas to hold nearly every satellite in view close the gap too, so routing
    and the slot grid are not what costs the 8 highest-elevation antennas (measured: median within 0.7 %)."""
    pred, bound = rtts(16, "highest-elevation")
    assert np.median(pred) <= 1.05 * np.median(bound)
    assert np.percentile(pred, 95) <= 1.10 * np.percentile(bound, 95)
