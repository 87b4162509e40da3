"""Handover gaps (issue 11): a ground link that changes satellite carries nothing for
``handover_interruption_ms``; the timeline places a gap at every change of satellite on the slot grid and
nowhere else, and a probe sent into one on its predicted path is predicted lost."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from routing.predict import in_handover_gap
from topologies.errors import ConfigError
from topologies.gsl import handover_gaps, satellite_changes
from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario
from topologies.timeline import LINK_CLASSES

START = datetime(2023, 7, 18, 12, 0, 0, tzinfo=UTC)
N_STEPS = 90
GW_GAP_MS, UT_GAP_MS = 20.0, 45.0


def scenario_text(gsl: str = f"handover_interruption_ms = {GW_GAP_MS}",
                  terminal: str = f"handover_interruption_ms = {UT_GAP_MS}") -> str:
    return f"""
name = "gap"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {N_STEPS}
step_s = 1.0
[[constellation.shells]]
name = "small"
altitude_km = 550
inclination_deg = 53
planes = 20
sats_per_plane = 20
phasing = 7
[gsl]
min_elevation_deg = 15.0
antennas = 2
reconfiguration_interval_s = 15.0
slot_offset_s = 12.0
{gsl}
[terminal]
{terminal}
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[terminals]]
name = "ut-dublin"
lat_deg = 53.3498
lon_deg = -6.2603
country = "IE"
[[terminals]]
name = "ut-chicago"
lat_deg = 41.8781
lon_deg = -87.6298
country = "US"
"""


@pytest.fixture(scope="module")
def tl():
    return plan_scenario(parse_scenario(scenario_text()))


def slot_openings(n: int) -> set[int]:
    """Steps at seconds 12, 27, 42, 57 of a minute (the run starts on a full minute, 1 s steps), counted
    out by hand."""
    return {k for k in range(1, n) if (k - 12) % 15 == 0}


def test_gaps_fall_exactly_on_the_changes_of_satellite_at_slot_boundaries(tl):
    links, steps, gap_ms = handover_gaps(tl)
    # independently: walk every ground link's peers and note where one satellite follows another
    want = []
    for l in np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl")).tolist():
        owner = tl.nodes[int(tl.link_a[l])]
        row = tl.peer[l].tolist()
        for k in range(1, len(row)):
            if row[k - 1] >= 0 and row[k] >= 0 and row[k] != row[k - 1]:
                want.append((l, k, UT_GAP_MS if owner.kind == "terminal" else GW_GAP_MS))
    got = sorted(zip(links.tolist(), steps.tolist(), gap_ms.tolist()))
    assert got == sorted(want)
    kinds = {tl.nodes[int(tl.link_a[l])].kind for l in links.tolist()}
    assert kinds == {"gateway", "terminal"}, kinds  # both kinds of ground link change satellite here
    assert set(steps.tolist()) <= slot_openings(tl.n_steps), sorted(set(steps.tolist()) - slot_openings(tl.n_steps))
    # the gap is shorter than a step: the link stays up in the timeline's state
    assert (tl.state[links, steps] == 0).all()


def test_no_gap_without_the_parameter():
    tl0 = plan_scenario(parse_scenario(scenario_text(gsl="", terminal="")))
    assert len(handover_gaps(tl0)[0]) == 0
    assert satellite_changes(tl0.peer[tl0.link_class == LINK_CLASSES.index("gsl")]).any()


def test_satellite_changes_leave_out_gaining_and_losing_a_satellite():
    peer = np.array([[-1, 4, 4, 9, -1, -1, 2, 3], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert np.argwhere(satellite_changes(peer)).tolist() == [[0, 3], [0, 7]]


def test_probes_sent_into_a_gap_on_their_path_are_predicted_lost(tl):
    links, steps, gap_ms = handover_gaps(tl)
    i = int(np.flatnonzero([tl.nodes[int(tl.link_a[l])].kind == "terminal" for l in links.tolist()])[0])
    l, k, g = int(links[i]), int(steps[i]), float(gap_ms[i])
    a = int(tl.link_a[l])
    n = tl.n_steps
    # a hand-built path per step that uses the beam (terminal -> its satellite of that step -> elsewhere)
    paths = [[a, int(tl.peer[l, s]), 10_000] for s in range(n)]
    far = [[a, 10_001] for _ in range(n)]  # a path that avoids the beam
    t = k + np.array([-0.2, -0.05, 0.0, g / 1000 * 0.5, g / 1000 - 1e-4, g / 1000 + 1e-3, 0.5])
    one_way = in_handover_gap(tl, paths, t)
    assert one_way.tolist() == [False, False, True, True, True, False, False]
    # a round trip of 100 ms sent 50 ms before the change comes back through the gap
    rtt = np.full(len(t), 100.0)
    assert in_handover_gap(tl, paths, t, rtt).tolist() == [False, True, True, True, True, False, False]
    assert not in_handover_gap(tl, far, t, rtt).any()


@pytest.mark.parametrize("section, value", [("gsl", "-1.0"), ("terminal", "nan"), ("gsl", "1000.0"),
                                            ("terminal", "2500.0"), ("gsl", '"10"')])
def test_a_bad_gap_is_a_one_line_config_error_naming_the_key(section, value):
    kw = {section: f"handover_interruption_ms = {value}"}
    with pytest.raises(ConfigError) as e:
        parse_scenario(scenario_text(**kw), "gap.toml")
    msg = str(e.value)
    assert "\n" not in msg and f"key '{section}.handover_interruption_ms'" in msg, msg
    assert msg.startswith("gap.toml:"), msg
