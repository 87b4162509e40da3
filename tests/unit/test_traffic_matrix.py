"""The load of ``[[traffic]] kind = "matrix"``: gravity-model rates against population products computed here
from the bundled city list, city matching by name and by position, the CSV matrix and its errors, the
scenario keys."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from topologies.errors import ConfigError
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario
from topologies.traffic_matrix import csv_rates, plan_matrix

CITIES = Path(__file__).resolve().parents[2] / "topologies" / "data" / "cities-top100.csv"

BASE = """
name = "matrix"
[time]
duration_s = 2
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 6
sats_per_plane = 6
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[ground.sites]]
name = "gs-frankfurt"
lat_deg = 50.1109
lon_deg = 8.6821
[[ground.sites]]
name = "gs-bombay"
lat_deg = 19.07
lon_deg = 72.88
[[terminals]]
name = "t-sydney"
lat_deg = -33.87
lon_deg = 151.21
"""


def city_rows() -> list[dict[str, str]]:
    with open(CITIES, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def population(name: str) -> float:
    """Rank-size weight of a city read here from the file: 1 / (1 + its rank, the 'id' column)."""
    row = next(r for r in city_rows() if r["name"] == name)
    return 1.0 / (1 + int(row["id"]))


def nearest_city(lat: float, lon: float) -> str:
    """Nearest city by chord length between unit vectors (monotone in great-circle distance)."""
    def vec(la: float, lo: float) -> np.ndarray:
        la, lo = math.radians(la), math.radians(lo)
        return np.array([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])

    here = vec(lat, lon)
    rows = city_rows()
    d = [np.linalg.norm(vec(float(r["latitude_deg"]), float(r["longitude_deg"])) - here) for r in rows]
    return rows[int(np.argmin(d))]["name"]


def planned(extra: str):
    sc = parse_scenario(BASE + extra, "<test>")
    return sc, plan_scenario(sc)


def test_gravity_rates_are_proportional_to_population_products():
    sc, tl = planned('[[traffic]]\nkind = "matrix"\naggregate_mbps = 40\n')
    m = plan_matrix(sc.traffic[0], tl)
    assert m.endpoints == ("h-london", "h-new-york", "h-frankfurt", "h-bombay", "t-sydney")
    # which city each endpoint stands for, decided here: by name where the list has it, else nearest
    cities = {"h-london": "London", "h-new-york": "New-York-Newark", "h-bombay": "Mumbai-(Bombay)",
              "h-frankfurt": nearest_city(50.1109, 8.6821), "t-sydney": "Sydney"}
    assert cities["h-frankfurt"] == "Paris"
    assert {x.endpoint: x.city for x in m.matches} == cities
    assert {x.endpoint: x.how for x in m.matches} == {"h-london": "name", "h-new-york": "name",
                                                      "h-bombay": "name", "h-frankfurt": "nearest",
                                                      "t-sydney": "name"}
    pop = np.array([population(cities[e]) for e in m.endpoints])
    prod = np.outer(pop, pop)
    np.fill_diagonal(prod, 0)
    want = 40.0 * prod / prod.sum()
    np.testing.assert_allclose(m.rates_mbps, want, rtol=1e-12, atol=1e-12)
    assert m.rates_mbps.sum() == pytest.approx(40.0)
    assert np.all(np.diag(m.rates_mbps) == 0)
    # the largest pair is the two most populous cities' (New York and Mumbai in this list)
    assert m.top_pairs(2)[0][:2] in (("h-new-york", "h-bombay"), ("h-bombay", "h-new-york"))


def test_endpoints_subset_and_errors():
    sc, tl = planned('[[traffic]]\nkind = "matrix"\naggregate_mbps = 10\nendpoints = ["h-london", "t-sydney"]\n')
    m = plan_matrix(sc.traffic[0], tl)
    assert m.rates_mbps[0, 1] == m.rates_mbps[1, 0] == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="'gs-london' is a gateway; matrix endpoints are hosts and terminals"):
        planned('[[traffic]]\nkind = "matrix"\naggregate_mbps = 10\nendpoints = ["h-london", "gs-london"]\n')
    with pytest.raises(ConfigError, match="'h-paris' is not a node"):
        planned('[[traffic]]\nkind = "matrix"\naggregate_mbps = 10\nendpoints = ["h-london", "h-paris"]\n')


@pytest.mark.parametrize("extra, match", [
    ('kind = "matrix"\n', "aggregate_mbps is required"),
    ('kind = "matrix"\naggregate_mbps = 10\nsrc = "h-london"\n', "src does not apply"),
    ('kind = "matrix"\naggregate_mbps = 0\n', "aggregate_mbps must be in"),
    ('kind = "matrix"\naggregate_mbps = 10\nendpoints = "h-london"\n', "expected an array"),
    ('kind = "ping"\nsrc = "h-london"\ndst = "h-new-york"\naggregate_mbps = 5\n', "kind 'matrix' only"),
    ('kind = "ping"\ndst = "h-new-york"\n', "src must name a node"),
])
def test_scenario_rejects_bad_matrix_keys(extra, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_scenario(BASE + "[[traffic]]\n" + extra, "s.toml")
    assert "s.toml" in str(e.value)


def test_csv_matrix_scaled_and_checked(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("src,dst,rate_mbps\nh-a,h-b,3\nh-b,h-a,1\nh-a,h-b,2\n")
    r = csv_rates(p, ["h-a", "h-b"], None)
    assert r.tolist() == [[0, 5], [1, 0]]
    r = csv_rates(p, ["h-a", "h-b"], 12.0)
    assert r.tolist() == [[0, 10], [2, 0]]
    p.write_text("src,dst,rate_mbps\nh-a,h-b,3\nh-a,h-c,1\n")
    with pytest.raises(ConfigError, match="'h-c' is not an endpoint") as e:
        csv_rates(p, ["h-a", "h-b"], None)
    assert e.value.line == 3
    p.write_text("src,dst,rate_mbps\nh-a,h-b,nan\n")
    with pytest.raises(ConfigError, match="finite"):
        csv_rates(p, ["h-a", "h-b"], None)
    p.write_text("a,b\n")
    with pytest.raises(ConfigError, match="header"):
        csv_rates(p, ["h-a", "h-b"], None)


def test_queue_packets_per_link_class():
    from emulator.shaping.base import QUEUE_PACKETS, LinkShape, netem_limit_packets, token_bucket

    sc = parse_scenario(BASE + "[emulation]\nqueue_packets = {isl = 50, gsl = 20}\n", "<test>")
    assert sc.emulation.queue_packets == {"isl": 50, "gsl": 20}
    # the token bucket's limit is the queue in full-size Ethernet frames (1500 + 14 bytes)
    assert token_bucket(LinkShape(1.0, 8.0, 0.0, 20)).limit_bytes == 20 * 1514
    assert token_bucket(LinkShape(1.0, 8.0)).limit_bytes == QUEUE_PACKETS * 1514
    # netem's limit holds the packets in flight too: 2 x bandwidth-delay product (100 Mbit/s x 12.11 ms
    # = 151,375 bytes = 100 frames, x2) plus the queue
    assert netem_limit_packets(LinkShape(12.11, 100.0, 0.0, 20)) == 200 + 20
    for bad in ("{laser = 5}", "{isl = 1}", "{isl = 2.5}"):
        with pytest.raises(ConfigError, match="queue_packets"):
            parse_scenario(BASE + f"[emulation]\nqueue_packets = {bad}\n", "s.toml")
    with pytest.raises(ConfigError, match="queue_packets"):
        LinkShape(1.0, 8.0, 0.0, 1)
