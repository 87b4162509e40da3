"""Ground sites and the built-in city list (topologies/ground.py)."""

import pytest

from topologies.errors import ConfigError
from topologies.ground import GroundSite, builtin_cities, city_slug, slug
from topologies.scenario import NAME_RE


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
