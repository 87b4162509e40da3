"""Scheduled events ([[events]], topologies.events): what they do to a timeline, checked against the same
scenario planned without them, paths recomputed here with networkx from the timeline's arrays, distances
with a haversine written here; and the one-line errors of bad events."""

from __future__ import annotations

import math
import re

import networkx as nx
import numpy as np
import pytest

from emulator.cli import plan_summary, print_plan
from routing.base import get_protocol
from routing.paths import table_path
from topologies.errors import ConfigError
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario
from topologies.timeline import LINK_CLASSES, Reason

BASE = """
name = "events"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 12
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 20
sats_per_plane = 20
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
"""
SRC, DST = "h-london", "h-new-york"


def plan(extra: str = "", base: str = BASE):
    return plan_scenario(parse_scenario(base + extra, "<test>"))


@pytest.fixture(scope="module")
def base_tl():
    return plan()


def nx_path(tl, step: int, src: str, dst: str) -> tuple[list[int], float]:
    """Least-delay path (node indices) and its RTT (ms) at ``step``, from the arrays alone."""
    g = nx.Graph()
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] != 0 or b < 0:
            continue
        w = float(tl.delay_ms[l, step])
        if not g.has_edge(a, b) or g[a][b]["weight"] > w:
            g.add_edge(a, b, weight=w)
    s, d = tl.node_index(src), tl.node_index(dst)
    try:
        p = nx.shortest_path(g, s, d, weight="weight")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return [], math.nan
    return p, 2 * sum(g[u][v]["weight"] for u, v in zip(p, p[1:]))


def hops(p: list[int]) -> set[frozenset[int]]:
    return {frozenset(e) for e in zip(p, p[1:])}


def haversine_km(lat1, lon1, lat2, lon2, r_km=6371.0088):
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r_km * math.asin(math.sqrt(h))


def test_scheduled_isl_failure_on_the_path_moves_it_at_t(base_tl, capsys):
    t = 6
    sats = {i for i, n in enumerate(base_tl.nodes) if n.kind == "sat"}
    before, _ = nx_path(base_tl, t - 1, SRC, DST)
    at, rtt_base = nx_path(base_tl, t, SRC, DST)
    common = [e for e in hops(before) & hops(at) if e <= sats]
    assert common, "the test needs an ISL on the least-delay path at both t-1 and t"
    a, b = sorted(common[0])
    names = [base_tl.nodes[a].name, base_tl.nodes[b].name]
    tl = plan(f'[[events]]\nkind = "fail"\ntarget = ["{names[0]}", "{names[1]}"]\nat_s = {t}\nduration_s = 3\n')

    p_before, rtt_before = nx_path(tl, t - 1, SRC, DST)
    p_at, rtt_at = nx_path(tl, t, SRC, DST)
    assert frozenset((a, b)) in hops(p_before)
    assert frozenset((a, b)) not in hops(p_at)
    assert rtt_at > rtt_base + 1e-6  # the best path was through the link: its replacement is longer
    # the slot is down for exactly steps t .. t+2, with the planned reason; nothing else changed
    slot = np.flatnonzero(((tl.link_a == a) & (tl.peer[:, 0] == b)) | ((tl.link_a == b) & (tl.peer[:, 0] == a)))
    assert len(slot) == 1
    changed = np.argwhere(tl.state != base_tl.state)
    assert sorted(map(tuple, changed.tolist())) == [(int(slot[0]), k) for k in (t, t + 1, t + 2)]
    assert np.all(tl.state[slot[0], t:t + 3] == Reason.SCHEDULED)

    # plan shows it: path changed at t, RTT before/after as networkx finds them
    ev = plan_summary(tl, [(SRC, DST)])["events"][0]
    assert ev["links"] == 1 and ev["occurrences"][0]["step"] == t
    eff = ev["occurrences"][0]["effects"][0]
    assert eff["path_changed"] and eff["reachable_after"]
    assert eff["rtt_before_ms"] == pytest.approx(rtt_before, abs=1e-3)
    assert eff["rtt_after_ms"] == pytest.approx(rtt_at, abs=1e-3)
    s = plan_summary(tl, [(SRC, DST)])
    print_plan(s, None)
    out = capsys.readouterr().out
    assert f"event 0: fail {names[0]}~{names[1]} at {t} s for 3 s (step {t}): 1 link slot(s) down" in out
    m = re.search(rf"{SRC} -> {DST}: path changed at {t} s, RTT ([\d.]+) -> ([\d.]+) ms", out)
    assert m, out
    assert float(m.group(1)) == pytest.approx(rtt_before, abs=0.006)  # printed to 0.01 ms
    assert float(m.group(2)) == pytest.approx(rtt_at, abs=0.006)

    # routing: every protocol routes around it at t; predictive already at t-1 (it is planned)
    s, d = tl.node_index(SRC), tl.node_index(DST)
    for name in ("shortest-delay", "min-hop", "ecmp", "predictive"):
        table = get_protocol(name).compute(tl, t)
        used = table.links_wide()
        assert not np.isin(used[used >= 0], slot).any(), name
    sd_nodes, _ = table_path(get_protocol("shortest-delay").compute(tl, t - 1), s, d)
    pr_nodes, _ = table_path(get_protocol("predictive").compute(tl, t - 1), s, d)
    assert frozenset((a, b)) in hops(sd_nodes)
    assert frozenset((a, b)) not in hops(pr_nodes)


REGION_SITES = {  # name: (lat, lon); the region is 800 km around Munich (48.14, 11.58)
    "gs-munich": (48.14, 11.58), "gs-paris": (48.86, 2.35), "gs-vienna": (48.21, 16.37),
    "gs-madrid": (40.42, -3.70), "gs-oslo": (59.91, 10.75), "gs-cairo": (30.04, 31.24),
}
CENTRE, RADIUS_KM = (48.14, 11.58), 800.0


def region_base() -> str:
    sites = "".join(f'[[ground.sites]]\nname = "{n}"\nlat_deg = {la}\nlon_deg = {lo}\n'
                    for n, (la, lo) in REGION_SITES.items())
    # a user terminal inside (Zurich, ~240 km) and one outside (Lisbon): beams are ground links too
    terms = ('[[terminals]]\nname = "ut-zurich"\nlat_deg = 47.37\nlon_deg = 8.54\n'
             '[[terminals]]\nname = "ut-lisbon"\nlat_deg = 38.72\nlon_deg = -9.14\n')
    return BASE + sites + terms


def test_region_outage_takes_down_exactly_the_ground_links_inside_the_radius():
    base = region_base()
    event = (f'[[events]]\nkind = "region-outage"\nlat_deg = {CENTRE[0]}\nlon_deg = {CENTRE[1]}\n'
             f'radius_km = {RADIUS_KM}\nat_s = 4\nduration_s = 5\n')
    tl0, tl = plan(base=base), plan(event, base=base)
    where = {**REGION_SITES, "gs-london": (51.5074, -0.1278), "gs-new-york": (40.7128, -74.006),
             "ut-zurich": (47.37, 8.54), "ut-lisbon": (38.72, -9.14)}
    dist = {n: haversine_km(*CENTRE, *p) for n, p in where.items()}
    assert all(abs(d - RADIUS_KM) > 100 for d in dist.values())  # no site near the edge
    inside = {tl.node_index(n) for n, d in dist.items() if d <= RADIUS_KM}
    assert {tl.nodes[i].name for i in inside} == {"gs-munich", "gs-paris", "gs-vienna", "ut-zurich"}
    gsl = tl.link_class == LINK_CLASSES.index("gsl")
    covered = gsl & np.isin(tl.link_a, list(inside))
    expected = np.zeros(tl.state.shape, bool)
    expected[:, 4:9] = covered[:, None] & (tl0.state[:, 4:9] == Reason.UP)
    assert expected.any() and (gsl & ~covered & (tl0.state[:, 4:9] == Reason.UP).any(axis=1)).any()
    assert np.array_equal(tl.state != tl0.state, expected)
    assert np.all(tl.state[expected] == Reason.SCHEDULED)
    for name in ("peer", "delay_ms", "rate_mbps", "loss_pct"):
        assert np.array_equal(getattr(tl, name), getattr(tl0, name)), name


def test_degrade_changes_exactly_the_targeted_link_for_exactly_the_duration(base_tl):
    tl0 = base_tl
    a, b = "sat-2-3", "sat-2-4"  # fore/aft neighbours in plane 2
    at_s, dur_s = 2.5, 3.2  # steps ceil(2.5) = 3 .. ceil(5.7) - 1 = 5
    tl = plan(f'[[events]]\nkind = "degrade"\ntarget = ["{a}", "{b}"]\nat_s = {at_s}\nduration_s = {dur_s}\n'
              f'rate_mbps = 7.0\nloss_pct = 2.0\nextra_delay_ms = 4.5\n')
    i, j = tl.node_index(a), tl.node_index(b)
    slot = np.flatnonzero(((tl.link_a == i) & (tl.peer[:, 0] == j)) | ((tl.link_a == j) & (tl.peer[:, 0] == i)))
    assert len(slot) == 1
    steps = list(range(math.ceil(at_s), math.ceil(at_s + dur_s)))
    for name in ("rate_mbps", "loss_pct", "delay_ms"):
        diff = np.argwhere(getattr(tl, name) != getattr(tl0, name))
        assert sorted(map(tuple, diff.tolist())) == [(int(slot[0]), k) for k in steps], name
    assert np.all(tl.rate_mbps[slot[0], steps] == 7.0)
    assert np.all(tl.loss_pct[slot[0], steps] == 2.0)
    np.testing.assert_allclose(tl.delay_ms[slot[0], steps], tl0.delay_ms[slot[0], steps] + 4.5, rtol=0, atol=1e-4)
    assert np.array_equal(tl.state, tl0.state) and np.array_equal(tl.peer, tl0.peer)


def test_degrade_of_a_link_class_and_a_repeating_event(base_tl):
    tl = plan('[[events]]\nkind = "degrade"\nlink_class = "gsl"\nloss_pct = 5.0\nevery_s = 4\nduration_s = 1\n')
    gsl = base_tl.link_class == LINK_CLASSES.index("gsl")
    expected = np.zeros(tl.state.shape, bool)
    expected[:, [0, 4, 8]] = gsl[:, None]
    assert np.array_equal(tl.loss_pct != base_tl.loss_pct, expected)


def test_fail_and_restore_of_a_satellite_and_one_antenna(base_tl):
    sat = "sat-5-5"
    tl = plan(f'[[events]]\nkind = "fail"\ntarget = "{sat}"\nat_s = 2\n'
              f'[[events]]\nkind = "restore"\ntarget = "{sat}"\nat_s = 7\n'
              f'[[events]]\nkind = "fail"\ntarget = "gs-london"\nantenna = 0\nat_s = 9\nduration_s = 1\n')
    n = tl.node_index(sat)
    touches = (tl.link_a[:, None] == n) | (tl.peer == n)
    expected = np.zeros(tl.state.shape, bool)
    expected[:, 2:7] = touches[:, 2:7] & (base_tl.state[:, 2:7] == Reason.UP)
    ant = np.flatnonzero((tl.link_a == tl.node_index("gs-london")) & (tl.link_class == LINK_CLASSES.index("gsl")))[0]
    expected[ant, 9] |= base_tl.state[ant, 9] == Reason.UP
    assert expected[:, 2:7].sum() >= 4 * 5  # its four laser links at least
    assert np.array_equal(tl.state != base_tl.state, expected)
    assert np.all(tl.state[expected] == Reason.SCHEDULED)


def test_event_after_the_end_is_listed_without_effect(base_tl):
    tl = plan('[[events]]\nkind = "fail"\ntarget = "sat-1-1"\nat_s = 100\n')
    assert np.array_equal(tl.state, base_tl.state)
    ev = plan_summary(tl, [(SRC, DST)])["events"][0]
    assert ev["occurrences"][0]["end_step"] is None and ev["links"] == 0


BAD = [
    ('kind = "explode"\nat_s = 1', "kind"),
    ('kind = "fail"\ntarget = "sat-1-1"', "at_s"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = -1', "at_s"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = nan', "at_s"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = "soon"', "at_s"),
    ('kind = "fail"\nat_s = 1', "target"),
    ('kind = "fail"\ntarget = ["sat-1-1"]\nat_s = 1', "target"),
    ('kind = "fail"\ntarget = ["sat-1-1", "sat-1-1"]\nat_s = 1', "target"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = 1\nrate_mbps = 3', "rate_mbps"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = 1\nwhen = 3', "when"),
    ('kind = "fail"\ntarget = "sat-1-1"\nevery_s = 5', "every_s"),
    ('kind = "fail"\ntarget = "sat-1-1"\nevery_s = 5\nduration_s = 5', "duration_s"),
    ('kind = "restore"\ntarget = "sat-1-1"\nat_s = 1\nduration_s = 2', "duration_s"),
    ('kind = "degrade"\ntarget = "sat-1-1"\nat_s = 1', "rate_mbps"),
    ('kind = "degrade"\ntarget = "sat-1-1"\nat_s = 1\nloss_pct = 101', "loss_pct"),
    ('kind = "degrade"\nlink_class = "laser"\nat_s = 1\nloss_pct = 1', "link_class"),
    ('kind = "degrade"\nat_s = 1\nloss_pct = 1', "target"),
    ('kind = "region-outage"\nat_s = 1\nlat_deg = 10\nlon_deg = 10', "radius_km"),
    ('kind = "region-outage"\nat_s = 1\nlat_deg = 91\nlon_deg = 10\nradius_km = 5', "lat_deg"),
    ('kind = "region-outage"\nat_s = 1\nlat_deg = 1\nlon_deg = 10\nradius_km = 5\ntarget = "sat-1-1"', "target"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = 1\nantenna = 0', None),  # a satellite has no antenna: at plan
]
BAD_AT_PLAN = [
    ('kind = "fail"\ntarget = "sat-99-1"\nat_s = 1', "target"),
    ('kind = "fail"\ntarget = ["sat-0-0", "sat-7-7"]\nat_s = 1', "target"),
    ('kind = "restore"\ntarget = "sat-1-1"\nat_s = 1', "target"),
    ('kind = "fail"\ntarget = "gs-london"\nantenna = 1\nat_s = 1', "antenna"),
    ('kind = "fail"\ntarget = "sat-1-1"\nat_s = 1\nantenna = 0', "antenna"),
]


def _one_line(e: ConfigError, key: str) -> None:
    msg = str(e)
    assert "\n" not in msg
    assert f"key 'events[1].{key}'" in msg and "event 1" in msg or f"events[1].{key}" in msg, msg


GOOD = '[[events]]\nkind = "fail"\ntarget = "sat-0-1"\nat_s = 0\nduration_s = 1\n'


@pytest.mark.parametrize("text, key", [b for b in BAD if b[1]])
def test_bad_event_is_one_line_naming_event_and_key(text, key):
    with pytest.raises(ConfigError) as e:
        parse_scenario(BASE + GOOD + "[[events]]\n" + text + "\n", "scenario.toml")
    _one_line(e.value, key)
    assert e.value.file == "scenario.toml" and e.value.key == f"events[1].{key}"
    assert e.value.line is not None  # the line of the key (of the event's kind where the key is missing)


@pytest.mark.parametrize("text, key", BAD_AT_PLAN)
def test_bad_event_target_fails_at_plan_naming_event_and_key(text, key):
    sc = parse_scenario(BASE + GOOD + "[[events]]\n" + text + "\n", "<test>")
    with pytest.raises(ConfigError) as e:
        plan_scenario(sc)
    _one_line(e.value, key)
    assert e.value.key == f"events[1].{key}"


def test_timeline_with_events_saves_and_loads_unchanged(tmp_path):
    from topologies.timeline import Timeline

    tl = plan('[[events]]\nkind = "fail"\ntarget = "sat-0-1"\nat_s = 1\nduration_s = 2\n'
              '[[events]]\nkind = "degrade"\ntarget = "gs-london"\nextra_delay_ms = 2\nat_s = 3\n')
    back = Timeline.load(tl.save(tmp_path / "t.npz"))
    for name in ("state", "peer", "delay_ms", "rate_mbps", "loss_pct"):
        assert np.array_equal(getattr(back, name), getattr(tl, name)), name
    assert (back.state == Reason.SCHEDULED).sum() > 0
    assert back.report["events"] == tl.report["events"]
