"""Delay error tails pooled over several runs of one scenario (``satnetem report RUN1 RUN2 ...``).

One run of the default scenario gives a few hundred samples per flow: its p99 is the third or fourth
largest error and moves a lot from run to run. Pooling the samples of several runs of the same scenario
(the same flows, the same clock) gives a p95 and p99 worth quoting. The samples are read from each
folder's ``samples.csv`` (written by ``satnetem run`` and ``satnetem report``): measured minus predicted
delay per probe, the metric of its flow (RTT for pings, one-way for UDP probes).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topologies.errors import ConfigError

#: Quantiles of the error reported per flow.
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class PooledFlow:
    """One flow's samples over every run: counts and the error's quantiles (ms, NaN without samples)."""

    flow: str
    metric: str
    runs: int
    sent: int
    lost: int
    error_ms: dict[str, float]

    @property
    def samples(self) -> int:
        return self.sent - self.lost


def _scenario_name(folder: Path) -> str:
    try:
        return str(json.loads((folder / "scenario.json").read_text()).get("name", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def _read(folder: Path) -> dict[str, tuple[str, list[float], int]]:
    """flow -> (metric, errors of the answered samples, lost count) of one results folder."""
    path = folder / "samples.csv"
    out: dict[str, tuple[str, list[float], int]] = {}
    try:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                metric, errors, lost = out.get(row["flow"], (row["metric"], [], 0))
                if not row["measured_ms"]:
                    lost += 1
                elif row["predicted_ms"]:
                    errors.append(float(row["measured_ms"]) - float(row["predicted_ms"]))
                out[row["flow"]] = (metric, errors, lost)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no samples (not a results folder of 'satnetem run', or the run had no "
                          f"ping or udp-probe flow)") from None
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the samples: {e}") from None
    return out


def pool(folders: Sequence[str | Path]) -> list[PooledFlow]:
    """Pool the samples of ``folders`` (runs of one scenario) per flow.

    Raises
    ------
    ConfigError
        A folder has no readable ``samples.csv``, or the folders hold runs of different scenarios.
    """
    paths = [Path(f) for f in folders]
    per_run = [_read(p) for p in paths]
    names = {p: _scenario_name(p) for p in paths}
    if len(set(names.values())) > 1:
        raise ConfigError("results folders of different scenarios cannot be pooled: "
                          + ", ".join(f"{p} ({n or 'unknown'})" for p, n in names.items()))
    flows = sorted({f for run in per_run for f in run})
    out = []
    for f in flows:
        metric, errors, sent, lost, runs = "", [], 0, 0, 0
        for run in per_run:
            if f not in run:
                continue
            m, e, lo = run[f]
            metric, runs = m, runs + 1
            errors += e
            lost += lo
            sent += len(e) + lo
        arr = np.asarray(errors, float)
        q = {f"p{round(x * 100)}": float(np.quantile(arr, x)) if len(arr) else float("nan") for x in QUANTILES}
        q["max"] = float(arr.max()) if len(arr) else float("nan")
        out.append(PooledFlow(f, metric, runs, sent, lost, q))
    return out


def print_pooled(flows: Sequence[PooledFlow], folders: Sequence[str | Path]) -> None:
    print(f"pooled over {len(folders)} runs: measured - predicted delay per flow (ms)")
    print(f"  {'flow':40s} {'metric':8s} {'runs':>4s} {'samples':>7s} {'lost':>5s} "
          + " ".join(f"{k:>8s}" for k in ("p50", "p95", "p99", "max")))
    for f in flows:
        print(f"  {f.flow:40s} {f.metric:8s} {f.runs:4d} {f.samples:7d} {f.lost:5d} "
              + " ".join(f"{f.error_ms[k]:8.2f}" for k in ("p50", "p95", "p99", "max")))
