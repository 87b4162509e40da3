"""`satnetem clean --run-id x` removes run x's state files and folder, and none of run x2's (a run id that
merely starts with x): two runs side by side must not clean each other up."""

from __future__ import annotations

import json

from emulator import clean as clean_mod


def test_clean_takes_only_its_own_run(tmp_path, monkeypatch):
    monkeypatch.setattr(clean_mod, "STATE_DIR", tmp_path)
    monkeypatch.setattr(clean_mod, "NETNS_DIR", tmp_path / "no-netns")
    for rid in ("h14-run", "h14-run2", "h14-run-b"):
        (tmp_path / f"{rid}.json").write_text(json.dumps({"netns_inodes": []}))
        (tmp_path / rid / "nodes").mkdir(parents=True)
        (tmp_path / rid / "nodes" / "x").write_text("x")
    report = clean_mod.clean("h14-run")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["h14-run-b", "h14-run-b.json", "h14-run2", "h14-run2.json"]
    assert sorted(report.state_files_removed) == sorted([str(tmp_path / "h14-run") + "/", str(tmp_path / "h14-run.json")])


def test_clean_takes_a_cluster_agents_temporary_files(tmp_path, monkeypatch):
    """A killed cluster agent leaves its flows' folder and its monitor rows in the temporary folder; clean
    --run-id removes that run's, not another's."""
    import tempfile

    monkeypatch.setattr(clean_mod, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(clean_mod, "NETNS_DIR", tmp_path / "no-netns")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for rid in ("exp1-h1", "exp1-h10", "exp1"):
        (tmp / f"satnetem-{rid}-flows-abc" / "flows").mkdir(parents=True)
        (tmp / f"satnetem-{rid}-monitor-def.csv").write_text("t_s\n")
    (tmp / "satnetem-fuzz-1").mkdir()
    report = clean_mod.clean("exp1-h1")
    assert sorted(p.name for p in tmp.iterdir()) == ["satnetem-exp1-flows-abc", "satnetem-exp1-h10-flows-abc",
                                                    "satnetem-exp1-h10-monitor-def.csv",
                                                    "satnetem-exp1-monitor-def.csv", "satnetem-fuzz-1"]
    assert len(report.state_files_removed) == 2
