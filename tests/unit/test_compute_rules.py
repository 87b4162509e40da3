"""[[compute]] by rule (issue 14): every Nth satellite of each plane, a shell, a list; expanded at plan time
into ordinary compute nodes, each with its access link to its satellite."""

from __future__ import annotations

import pytest

from topologies.errors import ConfigError
from topologies.plan import plan_scenario
from topologies.scenario import load_scenario, parse_scenario
from topologies.timeline import LINK_CLASSES

TWO_SHELLS = """
[time]
duration_s = 2
[[constellation.shells]]
name = "low"
altitude_km = 550.0
planes = 4
sats_per_plane = 6
[[constellation.shells]]
name = "high"
altitude_km = 1100.0
planes = 3
sats_per_plane = 5
"""


def compute_nodes(tl):
    return [(tl.nodes[i].name, tl.nodes[i].info["satellite"], tl.nodes[i].info["entry"]) for i in tl.nodes_of("compute")]


def test_rules_expand_to_named_nodes_on_the_chosen_satellites() -> None:
    tl = plan_scenario(parse_scenario(TWO_SHELLS + """
[[compute]]
shell = "low"
every_nth = 3
[[compute]]
shell = 1
prefix = "edge"
[[compute]]
every_nth = 5
prefix = "n5"
[[compute]]
satellites = ["sat-1-2-4", "sat-0-3-1"]
prefix = "ml"
[[compute]]
name = "one"
satellite = "sat-0-0-0"
"""))
    nodes = compute_nodes(tl)
    # chosen independently from the node table: each satellite's shell, plane and slot
    sats = {n.name: n.info for n in tl.nodes if n.kind == "sat"}
    want = [(f"dc-{s[4:]}", s, 0) for s, i in sats.items() if i["shell"] == 0 and i["slot"] % 3 == 0]
    want += [(f"edge-{s[4:]}", s, 1) for s, i in sats.items() if i["shell"] == 1]
    want += [(f"n5-{s[4:]}", s, 2) for s, i in sats.items() if i["slot"] % 5 == 0]
    want += [("ml-1-2-4", "sat-1-2-4", 3), ("ml-0-3-1", "sat-0-3-1", 3), ("one", "sat-0-0-0", 4)]
    assert nodes == want
    assert len(want) == 8 + 15 + (8 + 3) + 2 + 1
    # each is a compute node as the emulator knows them: one access link, up, to its satellite
    acc = tl.link_class == LINK_CLASSES.index("access")
    for name, sat, _ in nodes:
        rows = [k for k in range(tl.n_links) if acc[k] and tl.link_a[k] == tl.node_index(name)]
        assert len(rows) == 1
        assert (tl.peer[rows[0]] == tl.node_index(sat)).all() and (tl.state[rows[0]] == 0).all()
    assert tl.compute_power is not None and tl.compute_power.shape == (len(nodes), tl.n_steps)


def test_the_default_scenario_is_unchanged() -> None:
    from topologies.scenario import default_scenario

    tl = plan_scenario(default_scenario())
    assert compute_nodes(tl) == [("dc-0-0", "sat-0-0", 0)]


@pytest.mark.parametrize("entry,words,key", [
    ('every_nth = 0', "every_nth must be in [1, 1000], got 0", "compute[0].every_nth"),
    ('name = "x"\nsatellite = "sat-0-0-0"\nevery_nth = 2', "satellite names one satellite; every_nth is a rule",
     "compute[0].satellite"),
    ('name = "x"\nevery_nth = 2', "name names one node", "compute[0].name"),
    ('satellites = ["sat-0-0-0"]\nshell = 0', "satellites is a list of its own", "compute[0].satellites"),
    ('satellites = ["sat-0-0-0", "sat-0-0-0"]', "satellites names a satellite twice", "compute[0].satellites"),
    ('prefix = "x"', "satellite is required, or a rule", "compute[0]"),
    ('shell = true', "expected str or int", "compute[0].shell"),
    ('every_nth = 2\nprefix = "Bad"', "compute prefix name 'Bad' is not allowed", "compute[0].prefix"),
    ('satellite = "sat-0-0-0"', "name is required with satellite", "compute[0]"),
])
def test_bad_entries_are_one_line_errors_with_key_and_line(tmp_path, entry: str, words: str, key: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(TWO_SHELLS + "[[compute]]\n" + entry + "\n")
    with pytest.raises(ConfigError) as e:
        load_scenario(path)
    assert words in e.value.message and e.value.key == key
    assert e.value.line is not None and e.value.line > TWO_SHELLS.count("\n")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("entry,words,key", [
    ('shell = "mid"', "shell 'mid' does not exist; shells: 0 low, 1 high", "compute[0].shell"),
    ('shell = 2', "shell 2 does not exist; shells are 0..1", "compute[0].shell"),
    ('satellites = ["sat-9-9-9"]', "satellite 'sat-9-9-9' does not exist", "compute[0].satellites"),
    ('every_nth = 2\nprefix = "a-very-long-prefix-for-nodes-x"', "is not allowed", "compute[0].prefix"),
    ('every_nth = 5\n[[compute]]\nname = "dc-0-0-0"\nsatellite = "sat-0-1-0"',
     "compute node name 'dc-0-0-0' comes from entries 0 and 1", "compute[1].name"),
    ('name = "h-x"\nsatellite = "sat-0-0-0"\n[[hosts]]\nname = "h-x"\ngateway = "gs-a"',
     "name 'h-x' is used twice", "compute[0].name"),
])
def test_rules_checked_against_the_constellation_at_plan_time(tmp_path, entry: str, words: str, key: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(TWO_SHELLS + '[[ground.sites]]\nname = "gs-a"\nlat_deg = 0\nlon_deg = 0\n[[compute]]\n'
                    + entry + "\n")
    with pytest.raises(ConfigError) as e:
        plan_scenario(load_scenario(path))
    assert words in e.value.message and e.value.key == key
    assert e.value.line is not None
