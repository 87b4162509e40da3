"""``[[traffic]] kind = "allreduce"`` (issue 14): its keys and their errors, the ring's schedule against a sum
computed here, the program itself on loopback addresses (no root: three ranks on 127.0.0.x), and the summary
against hand-written records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator.traffic.allreduce import chunk_edges, initial_vector, ring_schedule, summarise_allreduce
from topologies.errors import ConfigError
from topologies.plan import plan_scenario
from topologies.scenario import check_traffic_endpoints, parse_scenario

BASE = """
name = "allreduce"
[time]
duration_s = 2
step_s = 1.0
[[constellation.shells]]
name = "s"
planes = 4
sats_per_plane = 8
[[ground.sites]]
name = "gs-a"
lat_deg = 0.0
lon_deg = 0.0
[[compute]]
every_nth = 4
"""


@pytest.mark.parametrize("extra, match", [
    ('nodes = ["dc-0-0"]\nsize_mb = 1\nrounds = 2\n', "at least two compute nodes"),
    ('nodes = ["dc-0-0", "dc-0-0"]\nsize_mb = 1\nrounds = 2\n', "names a node twice"),
    ('nodes = ["dc-0-0", "dc-1-0"]\nrounds = 2\n', "size_mb is required"),
    ('nodes = ["dc-0-0", "dc-1-0"]\nsize_mb = 1\n', "rounds is required"),
    ('nodes = ["dc-0-0", "dc-1-0"]\nsize_mb = 0\nrounds = 2\n', "size_mb must be in"),
    ('nodes = ["dc-0-0", "dc-1-0"]\nsize_mb = nan\nrounds = 2\n', "size_mb.*expected a finite number"),
    ('nodes = ["dc-0-0", "dc-1-0"]\nsize_mb = 1\nrounds = 0\n', "rounds must be an integer"),
    ('nodes = ["dc-0-0", "dc-1-0"]\nsize_mb = 1\nrounds = 2\nsrc = "h-a"\n', "src does not apply"),
    ('nodes = "dc-0-0"\nsize_mb = 1\nrounds = 2\n', "expected an array"),
])
def test_scenario_rejects_bad_allreduce_keys(extra, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_scenario(BASE + '[[traffic]]\nkind = "allreduce"\n' + extra, "s.toml")
    assert "s.toml" in str(e.value) and "traffic[0]" in str(e.value)


def test_allreduce_keys_belong_to_allreduce_only():
    with pytest.raises(ConfigError, match="rounds applies to kind 'allreduce' only"):
        parse_scenario(BASE + '[[traffic]]\nkind = "ping"\nsrc = "h-a"\ndst = "dc-0-0"\nrounds = 3\n', "s.toml")


def test_ring_members_must_be_compute_nodes():
    ok = parse_scenario(BASE + '[[traffic]]\nkind = "allreduce"\nnodes = ["dc-0-0", "dc-1-4", "dc-3-0"]\n'
                               'size_mb = 2\nrounds = 3\n', "s.toml")
    assert ok.traffic[0].label == "allreduce:dc-0-0-dc-1-4-dc-3-0"
    tl = plan_scenario(ok)
    kinds = {n.name: n.kind for n in tl.nodes}
    check_traffic_endpoints(ok, set(kinds), kinds)
    for name, what in (("h-a", "is a host"), ("dc-9-9", "is not a node of this network")):
        bad = parse_scenario(BASE + f'[[traffic]]\nkind = "allreduce"\nnodes = ["dc-0-0", "{name}"]\n'
                                    'size_mb = 2\nrounds = 3\n', "s.toml")
        with pytest.raises(ConfigError, match=f"node '{name}' {what}; the ring is made of compute nodes") as e:
            check_traffic_endpoints(bad, set(kinds), kinds)
        assert "traffic[0].nodes" in str(e.value)


@pytest.mark.parametrize("k, n", [(2, 10), (3, 7), (4, 1000), (5, 5)])
def test_ring_schedule_leaves_every_rank_with_the_sum(k, n):
    """Play the schedule step by step (all ranks at once, as the ring does) and compare with np.sum."""
    edges = chunk_edges(n, k)
    bufs = [initial_vector(n, r) for r in range(k)]
    want = np.sum(np.stack(bufs), axis=0)
    for s in range(2 * (k - 1)):
        sent = [ring_schedule(r, k)[s] for r in range(k)]
        payload = [bufs[r][edges[c]:edges[c + 1]].copy() for r, (_, c, _) in enumerate(sent)]
        for r in range(k):
            phase, _, c_recv = ring_schedule(r, k)[s]
            pred = (r - 1) % k
            assert sent[pred][1] == c_recv  # what the predecessor sends is what this rank expects
            a, b = edges[c_recv], edges[c_recv + 1]
            bufs[r][a:b] = bufs[r][a:b] + payload[pred] if phase == "reduce" else payload[pred]
    for r in range(k):
        np.testing.assert_array_equal(bufs[r], want)


def test_program_on_loopback(tmp_path):
    """Three ranks as processes on 127.0.0.1-3: every round's record, bytes per rank 2 (K-1)/K x S."""
    k, size, rounds, port = 3, 120_000, 3, 39000 + (hash(str(tmp_path)) % 500)
    (tmp_path / "b").mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "emulator.traffic.allreduce", "--rank", str(r), "--ranks",
                               str(k), "--bind", f"127.0.0.{r + 1}", "--port", str(port),
                               "--succ", f"127.0.0.{(r + 1) % k + 1}", "--pred", f"127.0.0.{(r - 1) % k + 1}",
                               "--size-bytes", str(size), "--rounds", str(rounds), "--duration", "20",
                               "--barrier", str(tmp_path / "b"), "--out", str(tmp_path / f"n{r}.csv")],
                              cwd=Path(__file__).resolve().parents[2], stderr=subprocess.PIPE, text=True)
             for r in range(k)]
    for p in procs:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    starts = []
    for r in range(k):
        rows = [ln.split(",") for ln in (tmp_path / f"n{r}.csv").read_text().splitlines()[1:]]
        assert [int(x[0]) for x in rows] == list(range(rounds))
        assert all(float(x[5]) == 0 for x in rows)
        assert all(int(x[3]) + 8 >= 2 * (k - 1) * size // k for x in rows)  # chunks differ by <= one float
        starts.append([float(x[1]) for x in rows])
    assert starts[0] == starts[1] == starts[2]  # a common start per round


def test_program_rejects_bad_rank(tmp_path):
    p = subprocess.run([sys.executable, "-m", "emulator.traffic.allreduce", "--rank", "3", "--ranks", "3",
                        "--bind", "127.0.0.1", "--port", "39999", "--succ", "127.0.0.2", "--pred", "127.0.0.3",
                        "--size-bytes", "1000", "--rounds", "1", "--duration", "5", "--barrier", str(tmp_path),
                        "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=30,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "rank 3 of 3" in p.stderr


def test_summary_from_records(tmp_path):
    (tmp_path / "allreduce.json").write_text('{"nodes": ["a", "b"], "size_bytes": 2000000, "rounds": 3, '
                                             '"files": {"a": "a.csv", "b": "b.csv"}}')
    head = "round,start_unix_s,end_unix_s,bytes_sent,bytes_received,max_error\n"
    (tmp_path / "a.csv").write_text(head + "0,100.0,101.0,1,1,0\n1,102.0,102.5,1,1,0\n")
    (tmp_path / "b.csv").write_text(head + "0,100.0,101.2,1,1,0\n1,102.0,102.4,1,1,0\n2,103.0,10")  # cut short
    s = summarise_allreduce(tmp_path)
    assert s["rounds"] == 2 and s["rounds_planned"] == 3 and s["correct"]
    assert s["round_s"] == pytest.approx([1.2, 0.5])
    assert s["round_s_p50"] == pytest.approx(0.85)
    # 2 (K-1)/K x 2 MB = 2 MB per node, over the median round
    assert s["busbw_mbps"] == pytest.approx(2e6 * 8 / 0.85 / 1e6, abs=0.01)
    (tmp_path / "b.csv").write_text(head + "0,100.0,101.2,1,1,3\n")
    assert summarise_allreduce(tmp_path)["correct"] is False
