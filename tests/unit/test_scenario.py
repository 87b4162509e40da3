"""Scenario files: the default loads, and malformed ones fail with file, line and key."""

import pytest

from topologies.errors import ConfigError
from topologies.scenario import default_scenario, load_scenario, parse_scenario


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_scenario_loads():
    sc = default_scenario()
    assert sc.constellation.preset == "starlink-shell1"
    assert {s.name for s in sc.ground.sites} == {"gs-london", "gs-new-york"}
    assert sc.time.n_steps == 60


def test_full_example_loads(tmp_path):
    p = write(tmp_path, """
name = "two"
[time]
start = 2023-07-18T00:00:00Z
duration_s = 30
step_s = 0.5
[constellation]
preset = "iridium"
[isl]
terminals = 3
[gsl]
min_elevation_deg = 20.0
[[ground.sites]]
name = "gs-a"
lat_deg = 10
lon_deg = 20
[[hosts]]
name = "h-x"
gateway = "gs-a"
""")
    sc = load_scenario(p)
    assert sc.time.n_steps == 60
    assert sc.isl["terminals"] == 3
    assert sc.hosts[0].gateway == "gs-a"
    assert sc.ground.sites[0].lat_deg == 10.0  # int accepted for a float


@pytest.mark.parametrize("text, key, line, words", [
    ("[time]\nduration_s = 60\nstep_seconds = 1\n", "time.step_seconds", 3, "unknown key"),
    ("[time]\nduration_s = 'long'\n", "time.duration_s", 2, "expected a number"),
    ("[time]\nstep_s = -1.0\n", "time.step_s", 2, "step_s must be in"),
    ("[gsl]\nmin_elevation_deg = 95.0\n", "gsl.min_elevation_deg", 2, "min_elevation_deg"),
    ("[isl]\nterminals = 9\n", "isl.terminals", 2, "terminals"),
    ("[isl]\ncross_shell = 'yes'\n", "isl.cross_shell", 2, "cross_shell"),
    ("[isl]\nmin_hold_s = -5.0\n", "isl.min_hold_s", 2, "min_hold_s"),
    ("[isl]\nlaser_colour = 'green'\n", "isl.laser_colour", 2, "unknown key"),
    ("[[ground.sites]]\nname = 'gs-x; rm -rf /'\nlat_deg = 1\nlon_deg = 2\n", "ground.sites[0].name", 2,
     "not allowed"),
    ("[[ground.sites]]\nname = 'gs-x'\nlat_deg = 91\nlon_deg = 2\n", "ground.sites[0].lat_deg", 3,
     "lat_deg must be in"),
    ("[[hosts]]\nname = 'h-1'\n", "hosts[0].gateway", None, "missing required"),
    ("[emulation]\nshaper = 'magic'\n", "emulation.shaper", 2, "auto, netem, userspace"),
    ("[emulation]\ncarry_lateness = 1\n", "emulation.carry_lateness", 2, "true or false"),
    ("[emulation]\nkeep_cpus_awake = 'no'\n", "emulation.keep_cpus_awake", 2, "true or false"),
    ("[emulation]\nclock_priority = 10\n", "emulation.clock_priority", 2, "below the delay daemon"),
    ("[emulation]\nclock_priority = 2.5\n", "emulation.clock_priority", 2, "expected an integer"),
    ("[[ground.sites]]\nname='gs-a'\nlat_deg=1\nlon_deg=1\n[[hosts]]\nname='gs-a'\ngateway='gs-a'\n",
     "hosts[0].name", 6, "used twice"),
    ("[constellation]\ntle = 'nope.tle'\n", "constellation.tle", 2, "does not exist"),
    ("[constellation]\npreset = 'iridium'\ntle = 'x.tle'\n", "constellation", None, "only one of"),
    ("[[traffic]]\nsrc = 'h-a'\ndst = 'h-b'\nkind = 'carrier-pigeon'\n", "traffic[0].kind", 4, "kind must be"),
    ("[[traffic]]\nsrc = 'h-a'\ndst = 'h-b'\nrate_pps = -5\n", "traffic[0].rate_pps", 4, "rate_pps must be"),
    ("[[traffic]]\nsrc = 'h-a'\ndst = 'h-b'\n[[traffic]]\nsrc = 'h-a'\ndst = 'h-b'\n", "traffic[1].name",
     None, "same name"),
    ("[[traffic]]\nsrc = 'h-a'\nkind = 'udp-probe'\n", "traffic[0]", None, "dst must name a node"),
])
def test_malformed_scenarios_name_file_line_and_key(tmp_path, text, key, line, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert str(p) in msg
    assert e.value.key == key, msg
    if line is not None:
        assert e.value.line == line, msg
    assert words in msg


def test_not_toml(tmp_path):
    p = write(tmp_path, "[time\nduration_s = 1\n")
    with pytest.raises(ConfigError, match=r"s\.toml:1: not valid TOML"):
        load_scenario(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(tmp_path / "nope.toml")


def test_parse_from_string_names_source():
    with pytest.raises(ConfigError, match="<string>"):
        parse_scenario("[routing]\nprotocol = 3\n")


def test_traffic_to_an_unknown_endpoint_names_the_entry(tmp_path):
    from topologies.plan import plan_scenario

    p = write(tmp_path, """
[time]
duration_s = 2
[constellation]
preset = "iridium"
[[ground.sites]]
name = "gs-a"
lat_deg = 0
lon_deg = 0
[[traffic]]
name = "lost"
src = "h-a"
dst = "h-nowhere"
""")
    with pytest.raises(ConfigError) as e:
        plan_scenario(load_scenario(p))
    assert e.value.key == "traffic[0].dst" and e.value.line == 13
    assert "'lost'" in str(e.value) and "h-nowhere" in str(e.value)
