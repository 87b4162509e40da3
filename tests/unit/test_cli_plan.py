"""`satnetem plan` as a user runs it: default scenario, a real TLE snapshot, errors without tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator.cli import main
from topologies.timeline import Timeline

ROOT = Path(__file__).resolve().parents[2]
TLE = ROOT / "topologies" / "data" / "starlink-2023-07.tle"


def run_json(capsys, *argv):
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_default_scenario_reports_constellation_links_and_paths(capsys, tmp_path):
    out = tmp_path / "tl.npz"
    s = run_json(capsys, "-o", str(out))
    assert s["nodes"] == {"sat": 1584, "gateway": 2, "host": 2, "compute": 1}
    assert s["isl"]["links"] == 3168
    assert s["constellation"]["planes"] == 72
    london_ny = s["paths"][0]
    assert (london_ny["src"], london_ny["dst"]) == ("h-london", "h-new-york")
    # London - New York is ~5,570 km on the ground: via 550 km satellites the one-way delay must be
    # at least ground distance / c (18.6 ms) and well below a detour around the planet
    assert 18.6 < london_ny["one_way_ms"]["min"] <= london_ny["one_way_ms"]["max"] < 40
    assert london_ny["rtt_ms"]["median"] == 2 * london_ny["one_way_ms"]["median"]
    tl = Timeline.load(out)
    assert tl.n_steps == 60 and len(tl.nodes_of("sat")) == 1584
    # a full +Grid with both gateways in view: one component, every pair always connected
    conn = s["connectivity"]
    assert conn["components"] == {"min": 1, "median": 1, "max": 1}
    assert [p["connected_fraction"] for p in conn["pairs"]] == [1.0, 1.0] and conn["warnings"] == []


def test_plan_on_the_real_starlink_snapshot_builds_the_53_degree_shell(capsys):
    s = run_json(capsys, "--tle", str(TLE), "--shell-inclination", "53.0")
    c = s["constellation"]
    placed, left = s["nodes"]["sat"], sum(c["excluded"].values())
    assert placed + left == 4428  # every TLE is placed or accounted for
    assert 1000 < placed < 1600 and 60 <= c["planes"] <= 80
    assert {"decaying", "other shell"} <= set(c["excluded"])
    assert abs(c["shells"][0]["inclination_deg"] - 53.0) < 0.2
    # the +Grid on ragged real planes: at most 4 links per satellite
    assert s["isl"]["links"] <= 2 * placed


def test_plan_prints_a_readable_summary(capsys):
    assert main(["plan", "--pair", "h-london,dc-0-0"]) == 0
    text = capsys.readouterr().out
    assert "1584 satellites in 72 planes" in text
    assert "h-london -> dc-0-0" in text


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gsl]\nmin_elevation_deg = 'high'\n")
    for argv, words in ((["plan", str(bad)], f"{bad}:2, key 'gsl.min_elevation_deg': expected a number"),
                        (["plan", "--pair", "h-london,nowhere"], "unknown node 'nowhere'"),
                        (["plan", "--tle", str(tmp_path / "none.tle")], "TLE file not found")):
        r = subprocess.run([sys.executable, "-m", "emulator.cli", *argv], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 2, r.stderr
        assert words in r.stderr
        assert "Traceback" not in r.stderr


def test_malformed_tle_file_is_reported_with_its_line(tmp_path):
    lines = TLE.read_text().splitlines()[:6]
    lines[4] = lines[4][:-1] + str((int(lines[4][-1]) + 1) % 10)  # break line 2's checksum
    f = tmp_path / "broken.tle"
    f.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "emulator.cli", "plan", "--tle", str(f)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{f}:5" in r.stderr and "checksum" in r.stderr


def test_walker_star_preset_has_seam_links_down(capsys, tmp_path):
    sc = tmp_path / "iridium.toml"
    sc.write_text('[constellation]\npreset = "iridium"\n[time]\nduration_s = 600\nstep_s = 10\n'
                  '[gsl]\nmin_elevation_deg = 10.0\n[[ground.sites]]\nname = "gs-a"\nlat_deg = 0\nlon_deg = 0\n')
    s = run_json(capsys, str(sc))
    states = s["isl"]["mean_per_step_by_state"]
    assert states.get("seam", 0) > 0 and states.get("polar", 0) > 0
    assert np.isclose(sum(states.values()), s["isl"]["links"], atol=0.6)


SUBSET_2026 = ROOT / "topologies" / "data" / "starlink-2026-08-21-subset.tle"


def test_plan_builds_every_shell_and_counts_what_it_left_out(capsys):
    from topologies.tle import load_tle

    n_file = sum(1 for ln in SUBSET_2026.read_text().splitlines() if ln.startswith("2 "))
    s = run_json(capsys, "--tle", str(SUBSET_2026))
    c = s["constellation"]
    assert len(c["shells"]) == 10 and "shells_in_file" not in c
    assert s["nodes"]["sat"] == sum(sh["satellites"] for sh in c["shells"])
    assert s["nodes"]["sat"] + sum(c["excluded"].values()) == n_file
    assert c["transient"] == {}
    # a TLE set is propagated from its own epochs: the built-in scenario starts at the latest one
    latest = max(r.epoch for r in load_tle(SUBSET_2026))
    assert s["start"] == latest.replace(second=0, microsecond=0).isoformat()

    t = run_json(capsys, "--tle", str(SUBSET_2026), "--include-transient")
    ct = t["constellation"]
    assert ct["transient"] == {k: v for k, v in c["excluded"].items() if k != "sgp4 error"}
    assert t["nodes"]["sat"] == s["nodes"]["sat"] + sum(ct["transient"].values())
    assert t["nodes"]["sat"] + sum(ct["excluded"].values()) == n_file
    assert [sh["satellites"] for sh in ct["shells"]] == [sh["satellites"] for sh in c["shells"]]

    assert main(["plan", "--tle", str(SUBSET_2026), "--include-transient"]) == 0
    text = capsys.readouterr().out
    assert f"{t['nodes']['sat']} satellites in {ct['planes']} planes of 10 shells, " \
           f"{sum(ct['transient'].values())} of them off the grid" in text
    assert text.count("\n  shell          tle-") == 10
    assert "  off the grid   " in text and "orbit-raising" in text


def test_include_transient_needs_a_tle_set(tmp_path):
    bad = tmp_path / "walker.toml"
    bad.write_text('[constellation]\npreset = "iridium"\ninclude_transient = true\n')
    for argv, words in ((["plan", "--include-transient"], "--include-transient needs a TLE constellation"),
                        (["plan", str(bad)], f"{bad}:3, key 'constellation.include_transient': "
                                             "include_transient needs tle")):
        r = subprocess.run([sys.executable, "-m", "emulator.cli", *argv], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_run_and_cli_plan_with_include_transient(tmp_path):
    from emulator.cli import build_parser
    from emulator.runner import load_inputs
    from topologies.errors import ConfigError

    sc = tmp_path / "sub.toml"
    sc.write_text(f'[time]\nstart = "2026-08-22T00:00:00Z"\nduration_s = 2\n[constellation]\ntle = "{SUBSET_2026}"\n')
    for command in ("run", "cli"):
        scenario, tl = load_inputs(build_parser().parse_args([command, str(sc), "--include-transient"]))
        off = [n for n in tl.nodes if n.kind == "sat" and n.info["shell"] == -1]
        assert scenario.constellation.include_transient and off
        assert all(n.name.startswith("sat-t-") for n in off)
    args = build_parser().parse_args(["run", "--timeline", str(tmp_path / "tl.npz"), "--include-transient"])
    with pytest.raises(ConfigError, match="already planned"):
        load_inputs(args)
