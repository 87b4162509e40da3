"""Parsers and summaries of the traffic programs, on hand-written records (no root, no network)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emulator.traffic import CsvLog, read_records
from emulator.traffic.iperf import IperfFlow, client_argv, parse_iperf_json, parse_iperf_text, server_argv
from emulator.traffic.pathprobe import checksum, echo_request, parse_answer, parse_paths, path_rounds
from emulator.traffic.service import NearestSchedule, parse_targets, summarise_requests
from emulator.traffic.udpprobe import SendConfig, decode, encode, summarise_udp, udp_samples
from topologies.errors import ConfigError

MS = 1_000_000  # ns


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------- common reader

def test_reader_drops_partial_last_line_and_bad_rows(tmp_path):
    p = write(tmp_path, "r.csv", "a,b\n1,2\nx,3\n4\n5,6\n7,")
    assert read_records(p, {"a": int, "b": int}) == [{"a": 1, "b": 2}, {"a": 5, "b": 6}]


def test_reader_empty_and_header_only(tmp_path):
    assert read_records(write(tmp_path, "e.csv", ""), {"a": int}) == []
    assert read_records(write(tmp_path, "h.csv", "a,b\n"), {"a": int}) == []


def test_reader_names_missing_column_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="lacks column"):
        read_records(write(tmp_path, "h.csv", "a,b\n1,2\n"), {"c": int})
    with pytest.raises(ConfigError, match="cannot read"):
        read_records(tmp_path / "nope.csv", {"a": int})


def test_csvlog_header_is_on_disk_before_any_row(tmp_path):
    p = tmp_path / "l.csv"
    log = CsvLog(p, ("x", "y"))
    try:
        assert p.read_text() == "x,y\n"
        with pytest.raises(ValueError):
            log.row((1,))
    finally:
        log.close()


# ---------------------------------------------------------------- udp probe

SENT = "flow,seq,sent_ns\n" + "".join(f"1,{k},{1_000_000_000_000 + k * 10 * MS}\n" for k in range(6))


def recv_csv(order: list[int], delay_ms: float = 5.0, extra: str = "") -> str:
    rows = "".join(f"1,{k},{1_000_000_000_000 + k * 10 * MS},{1_000_000_000_000 + k * 10 * MS + int(delay_ms * MS)}\n"
                   for k in order)
    return "flow,seq,sent_ns,recv_ns\n" + rows + extra


def test_udp_summary_loss_reordering_duplicates(tmp_path):
    s = write(tmp_path, "s.csv", SENT)
    # seq 3 lost, 2 overtaken by 4 (arrives late), 1 duplicated
    r = write(tmp_path, "r.csv", recv_csv([0, 1, 1, 4, 2, 5]))
    d = summarise_udp(s, r)
    assert (d["sent"], d["received"], d["lost"]) == (6, 5, 1)
    assert d["loss_pct"] == pytest.approx(100 / 6)
    assert d["duplicates"] == 1
    assert d["reordered"] == 1
    assert d["p50_ms"] == pytest.approx(5.0)
    assert d["one_way_ms"].shape == (5,)


def test_udp_in_order_has_no_reordering(tmp_path):
    d = summarise_udp(write(tmp_path, "s.csv", SENT), write(tmp_path, "r.csv", recv_csv(list(range(6)), 2.5)))
    assert (d["lost"], d["reordered"], d["duplicates"]) == (0, 0, 0)
    assert d["mean_ms"] == pytest.approx(2.5)


def test_udp_samples_nan_where_lost_and_truncated_last_line(tmp_path):
    s = write(tmp_path, "s.csv", SENT + "1,6,10000")  # partial last line of the sender: dropped
    r = write(tmp_path, "r.csv", recv_csv([0, 2, 5], 7.0, extra="1,9,100"))
    smp = udp_samples(s, r)
    assert smp.seq.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(smp.one_way_ms, [7, np.nan, 7, np.nan, np.nan, 7])
    assert smp.lost == 3
    assert smp.sent_unix_s[1] == pytest.approx(1000.01)


def test_udp_received_but_not_in_sender_file_counts_as_sent(tmp_path):
    s = write(tmp_path, "s.csv", "flow,seq,sent_ns\n1,0,1000000000000\n")  # sender killed before flushing
    r = write(tmp_path, "r.csv", recv_csv([0, 1, 2]))
    d = summarise_udp(s, r)
    assert (d["sent"], d["received"], d["lost"]) == (3, 3, 0)


def test_udp_empty_files(tmp_path):
    d = summarise_udp(write(tmp_path, "s.csv", ""), write(tmp_path, "r.csv", ""))
    assert d["sent"] == 0 and d["received"] == 0 and math.isnan(d["loss_pct"]) and math.isnan(d["p50_ms"])
    d = summarise_udp(write(tmp_path, "s2.csv", SENT), write(tmp_path, "r2.csv", "flow,seq,sent_ns,recv_ns\n"))
    assert d["lost"] == 6 and d["loss_pct"] == 100.0


def test_udp_flow_filter(tmp_path):
    r = write(tmp_path, "r.csv", recv_csv([0, 1]) + "2,0,5,6\n")
    s = write(tmp_path, "s.csv", SENT)
    assert summarise_udp(s, r, flow=1)["received"] == 2
    assert summarise_udp(s, r, flow=2)["sent"] == 1  # flow 2 has no sender file rows: only what arrived


def test_udp_datagram_roundtrip_and_validation():
    pkt = encode(7, 123456, 42, 64)
    assert len(pkt) == 64 and decode(pkt) == (7, 123456, 42)
    assert decode(b"XX" + pkt[2:]) is None and decode(pkt[:10]) is None
    with pytest.raises(ConfigError, match="size"):
        SendConfig("10.0.0.1", 5001, 10, 8, 1)
    with pytest.raises(ConfigError, match="rate"):
        SendConfig("10.0.0.1", 5001, 0, 64, 1)


# ---------------------------------------------------------------- iperf3

TCP_JSON = {
    "start": {"test_start": {"protocol": "TCP", "duration": 2}},
    "intervals": [
        {"sum": {"start": 0, "end": 1.0, "bytes": 1250000, "bits_per_second": 10e6, "retransmits": 2}},
        {"sum": {"start": 1.0, "end": 2.0, "bytes": 2500000, "bits_per_second": 20e6, "retransmits": 0}},
    ],
    "end": {"sum_sent": {"bits_per_second": 15e6, "retransmits": 2, "bytes": 3750000},
            "sum_received": {"bits_per_second": 14.5e6, "bytes": 3625000}},
}
UDP_JSON = {
    "start": {"test_start": {"protocol": "UDP"}},
    "intervals": [{"sum": {"start": 0, "end": 1.0, "bits_per_second": 5e6, "packets": 400}}],
    "end": {"sum": {"bits_per_second": 5e6, "jitter_ms": 0.3, "lost_packets": 4, "packets": 400,
                    "lost_percent": 1.0},
            "sum_sent": {"bits_per_second": 5e6, "packets": 400, "jitter_ms": 0},
            "sum_received": {"bits_per_second": 4.9e6, "jitter_ms": 0.3, "lost_packets": 4, "packets": 400,
                             "lost_percent": 1.0}},
}


def test_iperf_tcp_json():
    d = parse_iperf_json(json.dumps(TCP_JSON))
    assert d["complete"] and d["error"] is None and d["protocol"] == "TCP"
    assert (d["sent_mbps"], d["received_mbps"], d["retransmits"]) == (15.0, 14.5, 2)
    assert [iv["mbps"] for iv in d["intervals"]] == [10.0, 20.0]
    assert d["intervals"][0]["retransmits"] == 2
    assert math.isnan(d["jitter_ms"])


def test_iperf_udp_json():
    d = parse_iperf_json(json.dumps(UDP_JSON))
    assert d["protocol"] == "UDP" and d["received_mbps"] == pytest.approx(4.9)
    assert (d["jitter_ms"], d["lost_packets"], d["packets"], d["lost_pct"]) == (0.3, 4, 400, 1.0)
    assert d["intervals"] == [{"start_s": 0.0, "end_s": 1.0, "mbps": 5.0, "packets": 400}]


def test_iperf_interrupted_client_keeps_intervals_received_unknown():
    doc = json.loads(json.dumps(TCP_JSON))
    doc["error"] = "interrupt - the client has terminated"
    doc["end"]["sum_received"] = {"bits_per_second": 0, "bytes": 0}
    d = parse_iperf_json(json.dumps(doc))
    assert not d["complete"] and "interrupt" in d["error"]
    assert len(d["intervals"]) == 2 and d["sent_mbps"] == 15.0
    assert math.isnan(d["received_mbps"])


@pytest.mark.parametrize("text", ["", "   \n", json.dumps(TCP_JSON)[:200], "[1, 2]"])
def test_iperf_empty_or_truncated_json_is_reported_not_raised(text):
    d = parse_iperf_json(text)
    assert not d["complete"] and d["error"] and d["intervals"] == [] and math.isnan(d["sent_mbps"])


def test_iperf_connection_refused_json():
    d = parse_iperf_json('{"start": {"connected": []}, "intervals": [], "end": {}, '
                         '"error": "unable to connect to server: Connection refused"}')
    assert not d["complete"] and "refused" in d["error"] and math.isnan(d["sent_mbps"])


SERVER_TCP = """\
1795594602 -----------------------------------------------------------
1795594602 Server listening on 52011 (test #1)
1795594603 [  6] local 127.0.0.1 port 52011 connected to 127.0.0.1 port 60446
1795594604 [ ID] Interval           Transfer     Bitrate
1795594604 [  6]   0.00-1.00   sec  6.00 MBytes  50.3 Mbits/sec                  
1795594605 [  6]   1.00-2.00   sec  6.00 MBytes  950 Kbits/sec                  
1795594605 [  6]   1.00-2.00   sec  6.00 MBytes  950 Kbits/sec                  
1795594605 - - - - - - - - - - - - - - - - - - - - - - - - -
1795594605 [  6]   0.00-2.00   sec  13.8 MBytes  25.6 Mbits/sec                  receiver
"""
SERVER_UDP = """\
1795594669 [  6]   0.00-1.00   sec  2.39 MBytes  20.1 Mbits/sec  0.016 ms  2/114 (1.8%)  
1795594670 [  6]   1.00-2.00   sec  2.39 MBytes  1.1 Gbits/sec  0.046 ms  0/114 (0%)  
1795594670 [  6]   2.00-3.00   sec  2.3"""


def test_iperf_server_text_tcp():
    d = parse_iperf_text(SERVER_TCP)
    assert d["complete"] and d["received_mbps"] == 25.6
    assert [(iv["t_unix_s"], iv["start_s"], iv["mbps"]) for iv in d["intervals"]] == [
        (1795594604.0, 0.0, 50.3), (1795594605.0, 1.0, 0.95)]


def test_iperf_server_text_udp_truncated():
    d = parse_iperf_text(SERVER_UDP)
    assert not d["complete"] and len(d["intervals"]) == 2
    assert d["intervals"][0]["lost_packets"] == 2 and d["intervals"][0]["packets"] == 114
    assert d["intervals"][0]["lost_pct"] == 1.8 and d["intervals"][1]["mbps"] == 1100.0
    assert d["received_mbps"] == pytest.approx((20.1 + 1100) / 2)
    e = parse_iperf_text("")
    assert e["intervals"] == [] and math.isnan(e["received_mbps"])


def test_iperf_argv():
    f = IperfFlow("10.0.0.2", 5201, 10, udp=True, rate_mbps=25)
    c = client_argv(f, "/tmp/c.json")
    assert c[:3] == ["iperf3", "-c", "10.0.0.2"] and "-u" in c and c[c.index("-b") + 1] == "25M"
    assert c[c.index("-t") + 1] == "10" and c[c.index("--logfile") + 1] == "/tmp/c.json" and "-J" in c
    s = server_argv(f, "/tmp/s.txt")
    assert "-s" in s and "-1" in s and s[s.index("-B") + 1] == "10.0.0.2" and "--forceflush" in s
    assert int(s[s.index("--idle-timeout") + 1]) == 40
    with pytest.raises(ConfigError, match="rate_mbps"):
        IperfFlow("10.0.0.2", 5201, 10, udp=True)


# ---------------------------------------------------------------- path probe

PATHS = """\
t_unix_s,round,ttl,hop_addr,rtt_ms,kind
100.0,0,1,10.0.1.2,0.2,time-exceeded
100.0,0,2,10.0.2.2,0.3,time-exceeded
100.0,0,3,10.0.3.2,0.4,echo-reply
101.0,1,1,10.0.1.2,0.2,time-exceeded
101.0,1,2,,,none
101.0,1,3,10.0.3.2,0.5,echo-reply
102.0,2,1,,,none
103.0,3,1,10.0.1.2,0.2,time-exceeded
103.0,3,2,10.0.4.2,0.3,unreachable
104.0,4,1,10.0.1.2,0.2,time-exc"""


def test_parse_paths_rounds_in_order_with_gaps(tmp_path):
    p = write(tmp_path, "p.csv", PATHS)
    assert parse_paths(p) == [
        (100.0, ["10.0.1.2", "10.0.2.2", "10.0.3.2"]),
        (101.0, ["10.0.1.2", None, "10.0.3.2"]),
        (102.0, [None]),
        (103.0, ["10.0.1.2", "10.0.4.2"]),
    ]  # the partial last line (round 4) is dropped
    rounds = path_rounds(p)
    assert [r.reached for r in rounds] == [True, True, False, False]
    assert math.isnan(rounds[1].rtt_ms[1]) and rounds[0].rtt_ms[2] == 0.4


def test_parse_paths_empty(tmp_path):
    assert parse_paths(write(tmp_path, "e.csv", "")) == []
    assert parse_paths(write(tmp_path, "h.csv", "t_unix_s,round,ttl,hop_addr,rtt_ms,kind\n")) == []


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    import socket
    import struct
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def test_icmp_answers_are_matched_to_our_probes():
    import struct
    probe = echo_request(0x1234, 0x0042)
    assert checksum(probe) == 0  # a message with its checksum in place sums to zero
    sent = _ipv4("10.0.1.1", "10.0.3.2", 1, probe)
    exceeded = _ipv4("10.0.2.1", "10.0.1.1", 1, struct.pack("!BBHI", 11, 0, 0, 0) + sent[:28])
    assert parse_answer(exceeded, 0x1234, "10.0.3.2") == (11, 0x42, "10.0.2.1")
    assert parse_answer(exceeded, 0x9999, "10.0.3.2") is None  # another probe's
    assert parse_answer(exceeded, 0x1234, "10.0.9.9") is None  # quoted packet went elsewhere
    reply = _ipv4("10.0.3.2", "10.0.1.1", 1, struct.pack("!BBHHH", 0, 0, 0, 0x1234, 0x42) + b"satnetem")
    assert parse_answer(reply, 0x1234, "10.0.3.2") == (0, 0x42, "10.0.3.2")
    assert parse_answer(reply[:22], 0x1234, "10.0.3.2") is None


# ---------------------------------------------------------------- service

REQ = """\
t_send_unix_s,seq,target,addr,status,ok,total_ms,service_ms,network_ms,new_conn
1.0,0,A,10.0.0.1,200,1,12.0,5.0,7.0,1
1.2,1,B,10.0.0.2,200,1,30.0,10.0,20.0,1
1.4,2,A,10.0.0.1,timeout,0,,,,0
1.6,3,A,10.0.0.1,200,1,14.0,5.0,9.0,0
1.8,4,B,10.0.0.2,refused,0,,,,1
2.0,5,A,10.0.0.1,200,1,1"""


def test_summarise_requests(tmp_path):
    d = summarise_requests(write(tmp_path, "q.csv", REQ))
    assert (d["count"], d["ok"], d["failures"]) == (5, 3, 2)
    assert d["failure_pct"] == 40.0 and d["statuses"] == {"200": 3, "timeout": 1, "refused": 1}
    assert d["total_ms"]["p50"] == 14.0 and d["network_ms"]["max"] == 20.0
    a, b = d["per_target"]["A"], d["per_target"]["B"]
    assert (a["count"], a["failures"], b["count"], b["failures"]) == (3, 1, 2, 1)
    assert a["service_ms"]["p99"] == 5.0 and a["network_ms"]["mean"] == 8.0
    assert b["total_ms"]["p95"] == 30.0


def test_summarise_requests_empty(tmp_path):
    d = summarise_requests(write(tmp_path, "q.csv", ""))
    assert d["count"] == 0 and d["per_target"] == {} and math.isnan(d["total_ms"]["p50"])


def test_parse_targets():
    t = parse_targets("sat-1=10.0.0.1, sat-2=10.0.0.2:9000", default_port=8080)
    assert [(x.name, x.addr, x.port) for x in t] == [("sat-1", "10.0.0.1", 8080), ("sat-2", "10.0.0.2", 9000)]
    for bad in ("", "sat-1", "=10.0.0.1", "a=1.2.3.4:x", "a=1.2.3.4,a=1.2.3.5"):
        with pytest.raises(ConfigError):
            parse_targets(bad)


def test_nearest_schedule_entry_in_force(tmp_path):
    p = write(tmp_path, "s.json", json.dumps([{"t_unix_s": 20, "target": "B"}, {"t_unix_s": 10, "target": "A"},
                                              {"t_unix_s": 30, "target": "A"}]))
    s = NearestSchedule(p, {"A", "B"})
    assert [s.target_at(t) for t in (5, 10, 19.9, 20, 29, 31)] == ["A", "A", "A", "B", "B", "A"]
    with pytest.raises(ConfigError, match="'C'"):
        NearestSchedule(write(tmp_path, "c.json", '[{"t_unix_s": 1, "target": "C"}]'), {"A"})
    with pytest.raises(ConfigError, match="JSON"):
        NearestSchedule(write(tmp_path, "t.json", '[{"t_unix_s": 1, "tar'), {"A"})


def test_progress_counts_read_only_what_was_appended(tmp_path):
    """The run's progress line counts received pings and probe records from files that grow for hours: the
    counts, read incrementally, equal a whole read's of the complete lines at every call, and a call reads
    only the bytes appended since the last."""
    from emulator.runner import Tally

    ping, rec = tmp_path / "ping.txt", tmp_path / "recv.csv"
    t = Tally()
    assert t.count(ping, b"bytes from") == 0 and t.count(rec) == 0  # not there yet
    lines = ["PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data."] + [
        f"[1.{k}] 64 bytes from 10.0.0.2: icmp_seq={k} ttl=60 time=40.{k} ms" if k % 7 else
        f"no answer yet for icmp_seq={k}" for k in range(1, 200)]
    text = "\n".join(lines) + "\n"
    csv_text = "seq,sent_ns,recv_ns\n" + "".join(f"{k},{k * 10},{k * 10 + 5}\n" for k in range(500))
    written = 0
    for cut in (0, 1, 57, 58, 900, 901, 4000, len(text)):  # mid-line cuts included
        with open(ping, "a") as f:
            f.write(text[written:cut])
        written = max(written, cut)
        complete = text[:cut][:text[:cut].rfind("\n") + 1]
        assert t.count(ping, b"bytes from") == complete.count("bytes from")
    for cut in (10, 20, 21, 3000, len(csv_text)):
        rec.write_text(csv_text[:cut])
        assert t.count(rec) == csv_text[:cut].count("\n")
    # what the last call read: nothing new, so the offset is at the end and the count unchanged
    before = dict(t._seen)
    assert t.count(rec) == 501 and t._seen == before
