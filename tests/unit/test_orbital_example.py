"""examples/orbital-datacenter.toml plans with an eclipse entry and exit of its compute nodes and migrations.

The eclipse transitions are checked against a shadow computed here, not by topologies.sunlight: the Sun
from the Astronomical Almanac's low-precision formulae (about 0.01 deg), turned into the Earth-fixed frame
by the mean sidereal time, and a cylindrical shadow of the 6,378.137 km sphere. The cylinder is ~30 km
wider than the product's umbra cone at 1,200 km and treats penumbra as shadow, so the two may disagree for
a few seconds at a boundary; the test asks for each transition at least 5 s from the window's ends.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "orbital-datacenter.toml"
R_EARTH_KM = 6378.137
WGS84_E2 = 6.69437999014e-3


@pytest.fixture(scope="module")
def planned():
    from topologies.plan import plan_scenario
    from topologies.scenario import load_scenario

    sc = load_scenario(EXAMPLE)
    return sc, plan_scenario(sc)


def _sun_ecef_unit(t_unix: float) -> np.ndarray:
    n = t_unix / 86400.0 + 2440587.5 - 2451545.0  # days from J2000.0 (UT as TT: ~70 s, 0.0008 deg of Sun)
    g = math.radians(357.528 + 0.9856003 * n)
    lam = math.radians(280.460 + 0.9856474 * n + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g))
    eps = math.radians(23.439 - 0.0000004 * n)
    ra = math.atan2(math.cos(eps) * math.sin(lam), math.cos(lam))
    dec = math.asin(math.sin(eps) * math.sin(lam))
    gmst = math.radians((280.46061837 + 360.98564736629 * n) % 360.0)
    lon = ra - gmst
    return np.array([math.cos(dec) * math.cos(lon), math.cos(dec) * math.sin(lon), math.sin(dec)])


def _ecef_km(lat_deg: float, lon_deg: float, alt_km: float) -> np.ndarray:
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    n = R_EARTH_KM / math.sqrt(1 - WGS84_E2 * math.sin(lat) ** 2)
    return np.array([(n + alt_km) * math.cos(lat) * math.cos(lon), (n + alt_km) * math.cos(lat) * math.sin(lon),
                     (n * (1 - WGS84_E2) + alt_km) * math.sin(lat)])


def _in_shadow(tl, sat_row: int, k: int) -> bool:
    lat, lon, alt = (float(x) for x in tl.sat_lla[sat_row, k])
    r = _ecef_km(lat, lon, alt)
    s = _sun_ecef_unit(tl.time_of(k).timestamp())
    along = float(r @ s)
    return along < 0 and float(np.linalg.norm(r - along * s)) < R_EARTH_KM


def test_a_compute_node_enters_and_one_leaves_the_shadow(planned):
    _, tl = planned
    sats = tl.nodes_of("sat")
    rows = [sats.index(tl.node_index(tl.nodes[c].info["satellite"])) for c in tl.nodes_of("compute")]
    state = tl.sat_sunlight[rows]  # 0 sunlit, 1 penumbra, 2 umbra
    lit = state == 0
    moving = np.flatnonzero((state[:, 1:] != state[:, :-1]).any(axis=1))
    assert (lit[:, :-1] & ~lit[:, 1:]).any() and (~lit[:, :-1] & lit[:, 1:]).any()  # entry and exit planned
    # the cylinder's boundary (the Sun's centre on the limb) lies inside the penumbra: off by at most a
    # few seconds from where the product's penumbra and umbra begin and end
    margin = 4
    cyl_entries = cyl_exits = 0
    for r in moving.tolist():
        cyl = np.array([_in_shadow(tl, rows[r], k) for k in range(tl.n_steps)])
        cyl_entries += int((~cyl[:-1] & cyl[1:]).sum())
        cyl_exits += int((cyl[:-1] & ~cyl[1:]).sum())
        for k in range(tl.n_steps):
            near = state[r, max(0, k - margin):k + margin + 1]
            if (near == 0).all():
                assert not cyl[k], (r, k)
            elif (near == 2).all():
                assert cyl[k], (r, k)
    assert cyl_entries >= 1 and cyl_exits >= 1


def test_plan_lists_migrations_with_their_lead(planned, capsys):
    from emulator.cli import main

    sc, tl = planned
    assert main(["plan", str(EXAMPLE), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    migrations = out["migrations"]
    assert len(migrations) >= 1
    assert {m["flow"] for m in migrations} <= {f.label for f in sc.traffic if f.policy == "best"}
    assert any(e["state"] == "throttled" for e in out["power"]["events"])
    for m in migrations:
        assert m["from"] != m["to"] and m["mb"] == 5
        # the transfer starts 1.5 x 5 MB at the slowest link up + 2 s ahead; every link here is >= 100 Mbit/s
        up = tl.state[:, m["switch_step"]] == 0
        slowest = float(tl.rate_mbps[up, m["switch_step"]].min())
        assert slowest == 100.0
        lead = math.ceil((1.5 * 5e6 * 8 / (slowest * 1e6) + 2.0) / tl.step_s)
        assert m["switch_step"] - lead <= m["start_step"] < m["switch_step"]


def test_allreduce_nodes_and_clients_exist(planned):
    sc, tl = planned
    names = {n.name for n in tl.nodes}
    ring = next(f for f in sc.traffic if f.kind == "allreduce")
    assert set(ring.nodes) <= names and len(ring.nodes) == 4
    kinds = {tl.nodes[tl.node_index(f.src)].kind for f in sc.traffic if f.kind == "request"}
    assert kinds <= {"terminal", "host"} and "terminal" in kinds


def test_availability_from_the_power_events_and_its_map(planned, tmp_path):
    import csv

    from emulator.report import compute_availability, plot_availability
    from topologies.power import power_events

    _, tl = planned
    avail = compute_availability(tl, tl.n_steps, tmp_path)
    n = len(tl.nodes_of("compute"))
    # replay the plan's events node by node: how many are normal at each step
    state = {tl.nodes[c].name: "normal" for c in tl.nodes_of("compute")}
    events = power_events(tl)
    normal = []
    for k in range(tl.n_steps):
        for e in events:
            if e["step"] == k:
                state[e["node"]] = e["state"]
        normal.append(sum(v == "normal" for v in state.values()))
    with open(tmp_path / "availability.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["normal"]) for r in rows] == normal
    assert all(int(r["normal"]) + int(r["throttled"]) + int(r["stopped"]) == n for r in rows)
    assert all(int(r["sunlit"]) + int(r["penumbra"]) + int(r["umbra"]) == n for r in rows)
    assert avail["fewest_available"] == min(normal) < n
    assert avail["normal_pct"] == pytest.approx(100 * sum(normal) / (n * tl.n_steps), abs=0.01)
    (png, svg) = plot_availability(tl, tl.n_steps, tmp_path)
    assert png.name == "availability.png" and png.stat().st_size > 20_000 and svg.is_file()
    assert "scheduled event" not in svg.read_text()
    # a scheduled event is marked on the time panel (issue 16: markers on every time plot)
    (_, svg) = plot_availability(tl, tl.n_steps, tmp_path, events_s=np.array([tl.step_s * 3]))
    assert "scheduled event" in svg.read_text()


def test_migration_cost_hand_built(tmp_path):
    from emulator.report import migration_cost
    from emulator.traffic.service import COLUMNS

    rows = [  # t, seq, target, addr, status, ok, total, service, network, new_conn
        ("100.0", 0, "a", "x", "200", 1, "50.0", "5.0", "45.0", 0),
        ("101.0", 1, "a", "x", "200", 1, "90.0", "5.0", "85.0", 0),   # during the transfer
        ("101.5", 2, "a", "x", "200", 1, "70.0", "5.0", "65.0", 0),   # during
        ("102.5", 3, "b", "y", "timeout", 0, "", "", "", 0),          # during, failed
        ("104.0", 4, "b", "y", "200", 1, "40.0", "5.0", "35.0", 0),
    ]
    p = tmp_path / "requests.csv"
    p.write_text(",".join(COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    moves = [{"from": "a", "to": "b", "bytes": 5_000_000, "t_begin_unix_s": 100.8, "t_end_unix_s": 102.6,
              "duration_s": 1.8, "ok": True, "switched_before_state": False},
             {"from": "b", "to": "c", "bytes": 5_000_000, "t_begin_unix_s": None, "t_end_unix_s": None,
              "duration_s": None, "ok": False, "switched_before_state": True}]
    c = migration_cost(moves, p)
    assert (c["count"], c["ok"], c["switched_before_state"], c["bytes"]) == (2, 1, 1, 10_000_000)
    assert (c["transfer_s_total"], c["transfer_s_max"]) == (1.8, 1.8)
    assert (c["requests_during"], c["failed_during"]) == (3, 1)
    assert c["latency_p50_during_ms"] == 80.0 and c["latency_p50_otherwise_ms"] == 45.0
