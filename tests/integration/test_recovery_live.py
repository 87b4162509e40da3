"""Recovery after a scheduled ISL failure on the active path, as `satnetem run` measures it, recomputed in
the test from the raw per-packet records (the udp-probe's sent.csv/recv.csv, ping's own output) and the
best path from networkx on the timeline's arrays: packets lost in the window after the event, time to the
first arrival, time until the delay is back within the bound. For `shortest-delay` and `predictive` on a
planned failure, the first packet arrives within one step."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from topologies.plan import plan_scenario
from topologies.scenario import parse_scenario

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]

BASE = """
name = "recovery-live"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 8
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 12
sats_per_plane = 12
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
[[traffic]]
kind = "ping"
src = "h-london"
dst = "h-new-york"
rate_pps = 20
[[traffic]]
kind = "udp-probe"
src = "h-london"
dst = "h-new-york"
rate_pps = 100
"""
T, DURATION_S, WINDOW_STEPS = 4, 3, 5  # event step, its duration, recovery.WINDOW_STEPS
SRC, DST = "h-london", "h-new-york"


def nx_graph(tl, step: int) -> nx.Graph:
    g = nx.Graph()
    for l in range(tl.n_links):
        a, b = int(tl.link_a[l]), int(tl.peer[l, step])
        if tl.state[l, step] == 0 and b >= 0 and (not g.has_edge(a, b) or g[a][b]["weight"] > tl.delay_ms[l, step]):
            g.add_edge(a, b, weight=float(tl.delay_ms[l, step]))
    return g


def nx_path(tl, step: int) -> list[int]:
    return nx.shortest_path(nx_graph(tl, step), tl.node_index(SRC), tl.node_index(DST), weight="weight")


def nx_best_one_way_ms(tl, step: int) -> float:
    return nx.shortest_path_length(nx_graph(tl, step), tl.node_index(SRC), tl.node_index(DST), weight="weight")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def scenario_text() -> str:
    """BASE with a failure, at step T for DURATION_S, of an ISL on the least-delay path at T - 1 and T."""
    base = plan_scenario(parse_scenario(BASE, "<test>"))
    sats = {i for i, n in enumerate(base.nodes) if n.kind == "sat"}
    on = [{frozenset(e) for e in zip(p, p[1:])} for p in (nx_path(base, T - 1), nx_path(base, T))]
    common = sorted(sorted(e) for e in on[0] & on[1] if e <= sats)
    assert common, "the test needs an ISL on the least-delay path at both steps"
    a, b = (base.nodes[i].name for i in common[0])
    return BASE + f'[[events]]\nkind = "fail"\ntarget = ["{a}", "{b}"]\nat_s = {T}\nduration_s = {DURATION_S}\n'


@pytest.mark.parametrize("protocol", ["shortest-delay", "predictive"])
def test_recovery_after_a_planned_isl_failure_is_within_one_step(tmp_path, scenario_text, protocol):
    scenario = tmp_path / "recovery.toml"
    scenario.write_text(scenario_text + f'[routing]\nprotocol = "{protocol}"\n')
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "emulator.cli", "run", str(scenario), "-o", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "recovery after scheduled events" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"]
    [rec] = summary["recovery"]
    assert rec["step"] == T and rec["kind"] == "fail"
    got = {f["flow"]: f for f in rec["flows"]}
    tl = plan_scenario(parse_scenario(scenario_text, "<test>"))
    step_s = tl.step_s
    run = json.loads((out / "run.json").read_text())
    t0, speed = run["t0_unix"], run["speed"]
    t_event = t0 + T * step_s / speed  # wall clock
    t_end = t0 + min(T + WINDOW_STEPS, T + DURATION_S, tl.n_steps) * step_s / speed

    # udp-probe: every datagram from the sender's and the receiver's records
    d = out / "flows" / "udp-probe_h-london--h-new-york"
    sent = {int(x["seq"]): int(x["sent_ns"]) / 1e9 for x in rows(d / "sent.csv")}
    recv: dict[int, float] = {}
    for x in rows(d / "recv.csv"):
        recv.setdefault(int(x["seq"]), int(x["recv_ns"]) / 1e9)
    window = [s for s, t in sent.items() if t_event <= t < t_end]
    lost = [s for s in window if s not in recv]
    after = [s for s, t in sent.items() if t >= t_event and s in recv]
    first = min(recv[s] for s in after) - t_event
    best = {}

    def within(s: int) -> bool:
        k = min(int((sent[s] - t0) * speed // step_s), tl.n_steps - 1)
        if k not in best:
            best[k] = nx_best_one_way_ms(tl, k)
        return (recv[s] - sent[s]) * 1e3 <= best[k] + max(1.0, 0.03 * best[k])

    back = [recv[s] for s in after if within(s)]
    u = got["udp-probe:h-london--h-new-york"]
    assert u["sent"] == len(window) and u["lost"] == len(lost), (u, len(window), len(lost))
    assert u["first_arrival_s"] == pytest.approx(first, abs=1e-4)
    assert back and u["within_bound_s"] == pytest.approx(min(back) - t_event, abs=1e-4)
    # recovery within one step: a datagram sent after the event arrives within a step of it, and no
    # more than a step's worth of datagrams is lost
    assert first * speed <= step_s and len(lost) <= 100 * step_s
    assert u["route_changes"] >= 1  # the protocol moved the flow (predictive at T - 1, shortest-delay at T)

    # ping: replies from its own output (reply time and RTT: sent at reply - RTT)
    text = (out / "flows" / "ping_h-london--h-new-york" / "ping.txt").read_text()
    replies = [(float(m.group(1)), float(m.group(2)) / 1e3)
               for m in re.finditer(r"^\[(\d+\.\d+)\].*icmp_seq=\d+ .*time=([\d.]+) ms", text, re.M)]
    assert len(replies) > 100
    first_ping = min(t for t, rtt in replies if t - rtt >= t_event - 1e-6) - t_event
    p = got["ping:h-london--h-new-york"]
    assert p["first_arrival_s"] == pytest.approx(first_ping, abs=2e-4)
    assert first_ping * speed <= step_s and not math.isnan(first_ping)
    assert (out / "plots" / "rtt.png").is_file() and (out / "plots" / "loss.png").is_file()
