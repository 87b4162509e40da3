"""What ``satnetem run --cluster`` checks before it touches a cluster (emulator.cluster.run): the head's address,
the [cluster] section, the flows and protocols a clustered run cannot play yet, and the VNI blocks that keep
two runs on the same hosts apart. No root, no Ray."""

from __future__ import annotations

import argparse

import pytest

from emulator.cluster.placement import STRATEGIES
from emulator.cluster.run import cluster_config, head_addr, lateness, vni_base_for
from emulator.cluster.vxlan import VNI_MAX
from topologies.errors import ConfigError
from topologies.scenario import CLUSTER_PLACEMENTS, parse_scenario

BASE = """
name = "c"
[[constellation.shells]]
name = "s"
altitude_km = 550.0
inclination_deg = 53.0
planes = 4
sats_per_plane = 4

[[ground.sites]]
name = "gs-a"
lat_deg = 10.0
lon_deg = 10.0

[[ground.sites]]
name = "gs-b"
lat_deg = 20.0
lon_deg = 20.0
"""


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**({"cluster": None, "protocol": None} | kw))


def test_placements_are_the_emulators():
    assert CLUSTER_PLACEMENTS == STRATEGIES


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "head:6379", "10.0.0:6379", ":6379",
                                 "10.0.0.1:x"])
def test_bad_head_address_is_one_line(bad):
    with pytest.raises(ConfigError, match="IPv4:PORT") as e:
        head_addr(bad)
    assert "\n" not in str(e.value) and "--cluster" in str(e.value)


def test_head_address():
    assert head_addr("172.31.213.1:6379") == ("172.31.213.1", 6379)


def test_cluster_section_and_option():
    sc = parse_scenario(BASE, "s.toml")
    assert cluster_config(args(), sc) is None  # no address: a single-host run
    cfg = cluster_config(args(cluster="10.1.2.3:6379"), sc)
    assert (cfg.address, cfg.hosts, cfg.placement) == ("10.1.2.3:6379", 0, "plane")
    sc = parse_scenario(BASE + '\n[cluster]\naddress = "10.1.2.3:6379"\nhosts = 3\nplacement = "partition"\n',
                        "s.toml")
    cfg = cluster_config(args(), sc)
    assert (cfg.address, cfg.hosts, cfg.placement) == ("10.1.2.3:6379", 3, "partition")
    assert cluster_config(args(cluster="10.9.9.9:1"), sc).address == "10.9.9.9:1"  # the option wins
    with pytest.raises(ConfigError, match=r"s.toml.*key 'cluster.address'.*IPv4:PORT"):
        cluster_config(args(), parse_scenario(BASE + '\n[cluster]\naddress = "head"\n', "s.toml"))


@pytest.mark.parametrize("body, key", [
    ('hosts = -1', "cluster.hosts"), ('hosts = 1.5', "cluster.hosts"), ('placement = "metis"', "cluster.placement"),
    ('max_clock_offset_ms = 0', "cluster.max_clock_offset_ms"), ('max_clock_offset_ms = nan', "cluster.max_clock"),
    ('vni_base = 16777216', "cluster.vni_base"), ('port = 1', "port")])
def test_bad_cluster_section(body, key):
    with pytest.raises(ConfigError, match=key) as e:
        parse_scenario(BASE + f"\n[cluster]\n{body}\n", "s.toml")
    assert "\n" not in str(e.value)


def test_what_a_cluster_cannot_play_yet_is_refused_naming_the_key():
    two_sided = BASE + '\n[[traffic]]\nkind = "ping"\nsrc = "gs-a"\ndst = "gs-b"\n' \
                       '\n[[traffic]]\nkind = "udp-probe"\nsrc = "gs-a"\ndst = "gs-b"\n' \
                       '\n[[traffic]]\nkind = "iperf3-tcp"\nsrc = "gs-b"\ndst = "gs-a"\n'
    assert cluster_config(args(cluster="10.1.2.3:6379"), parse_scenario(two_sided, "s.toml")) is not None
    matrix = two_sided + '\n[[traffic]]\nkind = "matrix"\naggregate_mbps = 1.0\n'  # its endpoints on their hosts
    assert cluster_config(args(cluster="10.1.2.3:6379"), parse_scenario(matrix, "s.toml")) is not None
    compute = matrix + '\n[[compute]]\nevery_nth = 4\n'  # each host starts its own compute nodes' services
    for policy in ('policy = "fixed"\ndst = "dc-0-0"', 'policy = "nearest"'):
        ok = compute + f'\n[[traffic]]\nkind = "request"\nsrc = "h-gs-a"\n{policy}\n'
        assert cluster_config(args(cluster="10.1.2.3:6379"), parse_scenario(ok, "s.toml")) is not None
    best = compute + '\n[[traffic]]\nkind = "request"\nsrc = "h-gs-a"\npolicy = "best"\n'  # driven from the head
    assert cluster_config(args(cluster="10.1.2.3:6379"), parse_scenario(best, "s.toml")) is not None
    ring = compute + '\n[[traffic]]\nkind = "allreduce"\nnodes = ["dc-0-0", "dc-1-0"]\nsize_mb = 1\nrounds = 1\n'
    # its ranks on their hosts, the barrier's files copied between them
    assert cluster_config(args(cluster="10.1.2.3:6379"), parse_scenario(ring, "s.toml")) is not None
    ospf = BASE + '\n[routing]\nprotocol = "ospf"\n'  # its daemons run in each host's own routers
    assert cluster_config(args(cluster="10.1.2.3:6379"), parse_scenario(ospf, "s.toml")) is not None


def test_vni_blocks():
    # every VNI of a run lies in 1..VNI_MAX, and a block holds 2 VNIs per link slot
    for n_links in (1, 500, 3173, 32768, 40000, 4_000_000):
        for rid in ("h2a", "h2b", "123-abcdef", "x" * 41):
            base = vni_base_for(rid, n_links)
            assert 1 <= base and base + 2 * n_links - 1 <= VNI_MAX
    # two run ids in different blocks never share a VNI; the block is chosen by run id, the same every time
    a, b = vni_base_for("h2a", 3173), vni_base_for("h2b", 3173)
    assert a == vni_base_for("h2a", 3173)
    assert a != b and abs(a - b) >= 2 * 3173
    # spread: 200 run ids take many blocks, not a few
    assert len({vni_base_for(f"run-{i}", 3173) for i in range(200)}) > 120
    with pytest.raises(ConfigError, match="VNIs"):
        vni_base_for("h2a", VNI_MAX)


def test_lateness_summary():
    s = lateness([{"late_ms": x, "apply_ms": 2 * x} for x in (1.0, 2.0, 3.0, 10.0)])
    assert (s["steps"], s["late_ms_median"], s["late_ms_max"], s["apply_ms_median"]) == (4, 2.5, 10.0, 5.0)
    assert lateness([])["steps"] == 0


def test_steps_rows_count_lateness_as_one_host_does():
    # two hosts' records of step 1 (due at 10 s): a single-host run counts a step late from its due instant to
    # the end of its apply (emulator.clock.Playback); the agents record the beginning, kept beside
    from emulator.cluster.run import _csv_rows, done_late

    due = 10_000_000_000
    rec = [{"host": h, "steps": [{"step": 1, "due_ns": due, "begin_ns": due + b * 1_000_000,
                                  "end_ns": due + e * 1_000_000, "late_ms": float(b), "apply_ms": float(e - b),
                                  "stats": {"links_up": h + 1, "routes_changed": 10 * (h + 1),
                                            "timings_ms": {"routes": 2.0 + h, "before": 0.5,
                                                           "links_down": 1.25 * h}}}]}
           for h, (b, e) in enumerate(((1, 5), (3, 4)))]
    played = done_late(rec)
    assert [r["late_ms"] for p in played for r in p["steps"]] == [5.0, 4.0]
    assert [r["begin_late_ms"] for p in played for r in p["steps"]] == [1.0, 3.0]
    rows, per_host = _csv_rows(played, 10.0, 1.0)
    # one row per step: the latest host's lateness (host 0, 5 ms) and apply time (4 ms), counts added
    assert rows == [[1, "10.000", "5.00", "4.00", 3, 0, 0, 0, 30, "3.00", 0, "nan"]]
    assert [r[:6] for r in per_host] == [[0, 1, due, "5.00", "1.00", "4.00"], [1, 1, due, "4.00", "3.00", "1.00"]]
    # then each host's route phase and the phases of steps.csv's last columns, nan for one not timed
    assert [r[11:] for r in per_host] == [["2.00", "0.50", "nan", "nan", "nan", "0.00"],
                                          ["3.00", "0.50", "nan", "nan", "nan", "1.25"]]
    assert lateness([r for p in played for r in p["steps"]])["late_ms_max"] == 5.0


def test_one_way_delays_between_hosts_are_corrected_by_their_clock_offsets(tmp_path):
    """A UDP probe stamped by the sender's host and then by the receiver's: the report takes the offset of the
    receiver's clock from the sender's (each measured at start against the head) from its one-way delays."""
    import json

    from emulator.report import clock_skew_ms

    assert clock_skew_ms(tmp_path)("a", "b") == 0.0  # not a clustered run
    (tmp_path / "summary.json").write_text(json.dumps(
        {"cluster": {"clocks_ms": [{"offset": 0.0, "bound": 0.1}, {"offset": 2.5, "bound": 0.2},
                                   {"offset": -1.0, "bound": 0.2}]}}))
    (tmp_path / "placement.json").write_text(json.dumps({"a": 0, "b": 1, "c": 2, "d": 1}))
    skew = clock_skew_ms(tmp_path)
    # host 1's clock runs 2.5 ms ahead of host 0's: a's datagram to b looks 2.5 ms longer than it took
    assert skew("a", "b") == 2.5 and skew("b", "a") == -2.5
    assert skew("b", "c") == -3.5 and skew("b", "d") == 0.0
    assert skew("a", "nowhere") == 0.0


def test_every_hosts_monitor_rows_judge_the_run(tmp_path):
    """Each host's monitor.csv rows merged, by time, into the run's: a sample is invalid where any host was
    behind (host 1's delay daemon released 2.5 ms late from 0.6 to 1.1 s while its CPUs waited 70 %)."""
    import numpy as np

    from emulator.cluster.run import merge_monitors
    from emulator.validity import MONITOR_COLUMNS, Bounds, invalid_intervals, read_monitor

    head = ",".join(MONITOR_COLUMNS)
    h0 = f"{head}\n0.500,0.500,10.0,0.0,200.0,50,1799995000.5\n1.000,0.500,10.0,0.0,300.0,50,1799995000.5\n".encode()
    h1 = (f"{head}\n0.600,0.500,12.0,0.0,250.0,40,1799995007.6\n1.100,0.500,90.0,70.0,2500.0,40,1799995007.6\n"
          "1.6,0.5\n").encode()  # the last row cut short
    assert merge_monitors(tmp_path, [{"monitor": h0}, {"monitor": h1}, {"monitor": b""}, {}]) == 4
    mon = read_monitor(tmp_path)
    assert mon is not None and mon["t_s"].tolist() == [0.5, 0.6, 1.0, 1.1]
    assert np.isnan(mon["wall_offset_s"]).all()  # each host's wall clock is its own: none kept as the run's
    got = invalid_intervals(np.array([]), np.array([]), mon, Bounds(), 1.0)
    assert sorted((round(i.start_s, 3), round(i.end_s, 3), i.reason) for i in got) == \
        [(0.6, 1.1, "cpu"), (0.6, 1.1, "release-late")]


def test_routing_daemons_statistics_added_over_the_hosts():
    from emulator.cluster.run import routing_daemons

    h0 = {"reconfigurations": 3, "cost_reconfigurations": 1, "handovers_preformed": 0, "daemons_cpu_s": 1.25,
          "cost_tolerance_pct": 10.0, "cost_push_interval_s": 10.0, "update_ms_p50": 0.5, "update_ms_max": 4.0}
    h2 = dict(h0, reconfigurations=5, handovers_preformed=2, daemons_cpu_s=2.0, update_ms_max=9.5)
    got = routing_daemons([h0, None, h2])
    assert (got["reconfigurations"], got["cost_reconfigurations"], got["handovers_preformed"]) == (8, 2, 2)
    assert got["daemons_cpu_s"] == 3.2 and got["update_ms_max"] == 9.5 and got["cost_tolerance_pct"] == 10.0
    assert got["by_host"] == [h0, None, h2]
    assert routing_daemons([None, None]) is None


def test_every_hosts_link_load_in_one_file(tmp_path):
    """Each host counts the links whose near end it has: the run's linkload.csv holds every host's rows under
    one header, by step and link, and what the link load reader reads from it is every row."""
    from emulator.cluster.run import _merge_files
    from emulator.linkload import COLUMNS, read_linkload

    head = ",".join(COLUMNS)
    h0 = f"{head}\n0,1.0,1.0010,7,1000,10\n1,2.0,0.9990,7,1200,12\n".encode()
    h1 = f"{head}\n0,1.0,1.0002,3,500,0\n1,2.0,1.0001,3,700,5\n1,2.0,1.0001,12,64,64\n".encode()
    flows = b'[{"label": "matrix:gravity"}]'
    assert _merge_files(tmp_path, [{"host": 0, "files": {"linkload.csv": h0, "flows.json": flows}},
                                   {"host": 1, "files": {"linkload.csv": h1}}, {"host": 2, "files": {}}]) == []
    rows = read_linkload(tmp_path / "linkload.csv")
    assert [(s, link, ab, ba) for s, _, link, ab, ba in rows] == \
        [(0, 3, 500, 0), (0, 7, 1000, 10), (1, 3, 700, 5), (1, 7, 1200, 12), (1, 12, 64, 64)]
    assert (tmp_path / "linkload.csv").read_text().count("step") == 1


@pytest.mark.parametrize("argv, key", [
    (["cluster", "start", "--head", "--address", "10.0.0.300"], "--address"),
    (["cluster", "start", "--head", "--address", "host-a"], "--address"),
    (["cluster", "start", "--head", "--address", "10.0.0.1", "--host", "2"], "--host"),
    (["cluster", "start", "--join", "10.0.0.1:6379", "--address", "10.0.0.2"], "--host"),
    (["cluster", "start", "--join", "10.0.0.1:6379", "--address", "10.0.0.2", "--host", "0"], "--host"),
    (["cluster", "start", "--join", "head:6379", "--address", "10.0.0.2", "--host", "1"], "--join"),
    (["cluster", "stop", "--address", "::1"], "--address")])
def test_bad_cluster_node_arguments_are_one_line(argv, key):
    from emulator.cli import build_parser, check_args

    with pytest.raises(ConfigError) as e:
        check_args(build_parser().parse_args(argv))
    assert e.value.key == key and "\n" not in str(e.value)


def test_cluster_node_start_and_guard():
    """``ray start`` as ``satnetem cluster start`` runs it, and the guard's rules: Ray's ports (every one it is
    told to use) dropped on any interface but the cluster's and lo; names nft could misread refused."""
    from emulator.cluster.raynode import RayPorts, guard_ruleset, node_argv

    p = RayPorts()
    head = node_argv("ray", "head", "10.0.0.1", 0)
    told = {int(a.split("=")[1]) for a in head if a.split("=")[0].endswith("-port") or a.startswith("--port=")}
    assert told == {6379, 6380, 6381, 6382, 6383, 6384, 6385, 6400, 6463}
    rules = guard_ruleset("eth1", p)
    assert 'iifname { "lo", "eth1" } accept' in rules
    assert "tcp dport { 6379, 6380, 6381, 6382, 6383, 6384, 6385, 6400-6463 } drop" in rules
    assert rules.index("accept") < rules.index("drop")  # the cluster's interface first
    for bad in ('eth1" } accept; #', "a b", "", "x" * 16, "eth1\n"):
        with pytest.raises(ConfigError):
            guard_ruleset(bad, p)
    for bad in ({"gcs": 80}, {"node_manager": 6400}, {"metrics": 6379}, {"worker_max": 6403}, {"gcs": True}):
        with pytest.raises(ConfigError):
            RayPorts(**bad)


def test_the_token_file_must_be_roots_alone(tmp_path):
    import os

    from emulator.cluster.raynode import check_token

    t = tmp_path / "token"
    with pytest.raises(ConfigError, match="cannot read"):
        check_token(str(t))
    t.write_text("")
    t.chmod(0o600)
    with pytest.raises(ConfigError, match="non-empty"):
        check_token(str(t))
    t.write_text("ab" * 32)
    t.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by root only"):
        check_token(str(t))
    t.chmod(0o600)
    if os.geteuid() == 0:
        check_token(str(t))
    else:
        with pytest.raises(ConfigError, match="owned by root"):
            check_token(str(t))
