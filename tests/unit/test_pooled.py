"""Pooled delay-error tails over several results folders (``satnetem report RUN1 RUN2 ...``)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from emulator.cli import main
from emulator.pooled import pool
from emulator.report import SAMPLE_COLUMNS
from topologies.errors import ConfigError


def _run_folder(path, name, rows):
    """A results folder with ``rows`` of (flow, metric, measured or None, predicted)."""
    path.mkdir()
    (path / "scenario.json").write_text(json.dumps({"name": name}))
    with open(path / "samples.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SAMPLE_COLUMNS)
        for k, (flow, metric, meas, pred) in enumerate(rows):
            w.writerow([flow, "ping", metric, f"{k * 0.2:.4f}", k // 5, k, "" if meas is None else f"{meas:.3f}",
                        f"{pred:.3f}", f"{pred:.3f}"])
    return path


def test_pooled_tails_are_those_of_all_samples_together(tmp_path):
    rng = np.random.default_rng(7)
    # Three runs whose tails differ: one run carries most of the large errors, so no single run's p99 is
    # the pooled p99.
    errs = [rng.normal(0.1, 0.05, 600), rng.normal(0.1, 0.05, 600), np.r_[rng.normal(0.1, 0.05, 570),
                                                                            rng.uniform(2, 9, 30)]]
    folders = []
    for i, e in enumerate(errs):
        rows = [("ping:a--b", "rtt", 40.0 + x, 40.0) for x in e]
        rows += [("ping:a--b", "rtt", None, 40.0)] * i  # i lost in run i
        rows += [("udp:c--d", "one_way", 20.0 + x / 2, 20.0) for x in e[:100]]
        folders.append(_run_folder(tmp_path / f"r{i}", "default", rows))
    got = {f.flow: f for f in pool(folders)}
    allerr = np.concatenate(errs)
    ping = got["ping:a--b"]
    assert (ping.runs, ping.sent, ping.lost, ping.samples) == (3, 1803, 3, 1800)
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert ping.error_ms[key] == pytest.approx(np.quantile(allerr, q), abs=2e-3)
    assert ping.error_ms["max"] == pytest.approx(allerr.max(), abs=1e-3)
    per_run_p99 = [np.quantile(e, 0.99) for e in errs]
    assert all(abs(p - ping.error_ms["p99"]) > 0.1 for p in per_run_p99)
    udp = got["udp:c--d"]
    assert udp.metric == "one_way" and udp.samples == 300
    assert udp.error_ms["p50"] == pytest.approx(np.quantile(np.concatenate([e[:100] for e in errs]) / 2, 0.5),
                                                abs=2e-3)


def test_report_with_several_folders_prints_the_pooled_table(tmp_path, capsys):
    a = _run_folder(tmp_path / "a", "s", [("ping:x--y", "rtt", 10.0 + k / 100, 10.0) for k in range(101)])
    b = _run_folder(tmp_path / "b", "s", [("ping:x--y", "rtt", 10.0 + k / 100, 10.0) for k in range(101, 201)])
    assert main(["report", str(a), str(b)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "ping:x--y" in ln)
    # errors 0.00 .. 2.00 in steps of 0.01: p50 1.00, p95 1.90, p99 1.98, max 2.00
    assert line.split()[-6:] == ["201", "0", "1.00", "1.90", "1.98", "2.00"]


def test_bad_folders_are_one_line_errors(tmp_path):
    a = _run_folder(tmp_path / "a", "s1", [("ping:x--y", "rtt", 10.0, 10.0)])
    b = _run_folder(tmp_path / "b", "s2", [("ping:x--y", "rtt", 10.0, 10.0)])
    with pytest.raises(ConfigError, match="different scenarios"):
        pool([a, b])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty/samples.csv: no samples"):
        pool([a, tmp_path / "empty"])
