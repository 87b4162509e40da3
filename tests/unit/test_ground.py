"""Ground sites, the built-in city list and Starlink's gateways (topologies/ground.py)."""

import csv
from pathlib import Path

import pytest

from topologies.errors import ConfigError
from topologies.ground import GroundSite, builtin_cities, city_slug, slug, starlink_gateways
from topologies.plan import ground_sites
from topologies.scenario import NAME_RE, parse_scenario

STARLINK_CSV = Path(__file__).resolve().parents[2] / "topologies" / "data" / "starlink-ground-stations-2026-03.csv"


@pytest.mark.parametrize("name, expected", [
    ("São-Paulo", "sao-paulo"),
    ("Bogotá", "bogota"),
    ("Thành-Pho-Ho-Chí-Minh", "thanh-pho-ho-chi-minh"),
    ("Kinki M.M.A. (Osaka)", "kinki-mma-osaka"),
    ("  New York / Newark ", "new-york-newark"),
])
def test_slug_folds_to_ascii_node_names(name, expected):
    assert slug(name) == expected


def test_slug_truncates_at_a_hyphen_and_rejects_empty_results():
    assert slug("Los-Angeles-Long-Beach-Santa-Ana", max_len=28) == "los-angeles-long-beach-santa"
    assert len(slug("abcdefghijklmnopqrstuvwxyz", max_len=10)) == 10
    with pytest.raises(ConfigError):
        slug("東京")


def test_city_slug_drops_the_parenthesised_alias():
    assert city_slug("Mumbai-(Bombay)") == "mumbai"
    assert city_slug("Ciudad-de-México-(Mexico-City)") == "ciudad-de-mexico"


def test_builtin_cities_are_100_unique_valid_gateway_names():
    cities = builtin_cities()
    assert len(cities) == 100
    names = [c.name for c in cities]
    assert len(set(names)) == 100
    for n in names:  # the plan names gateways gs-<city> and hosts h-<city>
        assert NAME_RE.match("gs-" + n), n
        assert NAME_RE.match("h-" + n), n
    assert cities[0].name == "tokyo"
    sp = next(c for c in cities if c.name == "sao-paulo")
    assert (sp.lat_deg, sp.lon_deg, sp.alt_m) == (-23.5475, -46.63611, 0.0)
    assert sp.antennas is None
    assert all(-90 <= c.lat_deg <= 90 and -180 <= c.lon_deg <= 180 for c in cities)


def test_builtin_cities_limit():
    assert [c.name for c in builtin_cities(3)] == ["tokyo", "delhi", "shanghai"]
    assert builtin_cities(0) == []
    with pytest.raises(ConfigError, match="limit"):
        builtin_cities(101)


def test_ground_site_validation_names_the_field():
    with pytest.raises(ConfigError) as e:
        GroundSite("gs-x", 91.0, 0.0)
    assert e.value.key == "lat_deg" and "91.0" in str(e.value)
    with pytest.raises(ConfigError) as e:
        GroundSite("gs-x", 0.0, 0.0, antennas=0)
    assert e.value.key == "antennas"
    with pytest.raises(ConfigError, match="sao-paulo"):
        GroundSite("São Paulo", 0.0, 0.0)


def test_starlink_gateways_are_the_214_operational_gateways_of_the_csv():
    with STARLINK_CSV.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["type"] == "gateway" and r["status"] == "operational"]
    assert len(rows) == 214
    sites = starlink_gateways()
    assert len(sites) == 214
    assert [(s.lat_deg, s.lon_deg) for s in sites] == [(float(r["lat_deg"]), float(r["lon_deg"])) for r in rows]
    names = [s.name for s in sites]
    assert len(set(names)) == 214 and all(NAME_RE.match(n) and n.startswith("gs-") for n in names)
    assert NAME_RE.match("h-" + max(names, key=len)[3:])  # the host behind it is a valid name too
    assert names[rows.index(next(r for r in rows if r["name"] == "Tromsø, Norway"))] == "gs-tromso-norway"
    assert {s.antennas for s in sites} == {8} and {s.antennas for s in starlink_gateways(3)} == {3}
    with pytest.raises(ConfigError, match="antennas"):
        starlink_gateways(17)


def test_scenario_ground_gateways_starlink():
    sc = parse_scenario('[ground]\ngateways = "starlink"\ngateway_antennas = 9\ncities = 2\n')
    sites = ground_sites(sc)
    assert len(sites) == 216 and sites[-2:] == [GroundSite("gs-tokyo", 35.6895, 139.69171),
                                                 GroundSite("gs-delhi", 28.66667, 77.21667)]
    assert all(s.antennas == 9 for s in sites[:214])
    assert len(ground_sites(parse_scenario("[ground]\ncities = 1\n"))) == 1
    for text, key, line in (('[ground]\ngateways = "oneweb"\n', "ground.gateways", 2),
                            ('[ground]\n\ngateways = 1\n', "ground.gateways", 3),
                            ('[ground]\ngateway_antennas = 0\n', "ground.gateway_antennas", 2)):
        with pytest.raises(ConfigError) as e:
            parse_scenario(text, "s.toml")
        assert e.value.key == key and e.value.line == line and "\n" not in str(e.value)
