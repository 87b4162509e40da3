"""Link counters and the matrix load's records, without root: the RTM_NEWSTATS parser on a message built
here by hand, utilisation from a hand-written linkload.csv, the matrix summary from hand-written records,
and two matrix senders on loopback addresses exchanging paced datagrams."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from emulator.linkload import LinkCounters, link_utilisation, parse_stats
from emulator.traffic import read_records
from emulator.traffic.matrix import summarise_matrix


def stats_msg(ifindex: int, rx_bytes: int, tx_bytes: int) -> bytes:
    # struct if_stats_msg, then IFLA_STATS_LINK_64 holding struct rtnl_link_stats64 (24 u64 counters here:
    # rx_packets, tx_packets, rx_bytes, tx_bytes, then zeros)
    counters = struct.pack("=24Q", 11, 22, rx_bytes, tx_bytes, *([0] * 20))
    attr = struct.pack("=HH", 4 + len(counters), 1) + counters
    other = struct.pack("=HH", 8, 2) + b"\xff" * 4  # another attribute, skipped
    return struct.pack("=BBHII", 0, 0, 0, ifindex, 1) + other + attr


def test_parse_stats_reads_bytes_per_interface():
    got = parse_stats([(92, stats_msg(7, 1000, 2000)), (92, stats_msg(9, 5, 6)), (92, b"\x00" * 4)])
    assert got == {7: (1000, 2000), 9: (5, 6)}


class Dumps:
    """One namespace's answers to successive RTM_GETSTATS dumps, as the kernel would give them."""

    def __init__(self, readings: list[dict[int, tuple[int, int]]]) -> None:
        self.readings = readings

    def dump(self, _kind: int, _body: bytes) -> list[tuple[int, bytes]]:
        return [(92, stats_msg(ix, rx, tx)) for ix, (rx, tx) in self.readings.pop(0).items()]


def test_link_counters_go_on_across_a_remade_pair():
    """Link 0's two pairs (ifindex 5 and 6, near end here): pair 6 carries traffic, goes down at a handover,
    is remade at the next satellite (its counters back to zero) and carries again after the next handover.
    The link's bytes only grow, by what each interface counted since the reading before."""
    counters = LinkCounters.__new__(LinkCounters)
    counters.n_links = 1
    counters._last, counters._total, counters._request = {}, np.zeros((1, 2), np.int64), b""
    counters._by_ns = [(Dumps([{5: (100, 1000), 6: (0, 0)},
                               {5: (150, 1500), 6: (0, 0)},  # a handover to pair 6
                               {5: (150, 1500), 6: (40, 400)},
                               {5: (0, 0), 6: (60, 600)},  # pair 5 remade meanwhile (down, at zero)
                               {5: (7, 70), 6: (60, 600)}]),  # and taken over again
                        {5: 0, 6: 0})]
    got = [counters.read().tolist() for _ in range(5)]
    # column 0: sent by a (tx), column 1: received by a (rx)
    assert got == [[[1000, 100]], [[1500, 150]], [[1900, 190]], [[2100, 210]], [[2170, 217]]]


def test_link_utilisation_from_bytes_and_rates(tmp_path):
    p = tmp_path / "linkload.csv"
    p.write_text("step,t_unix_s,interval_s,link,bytes_ab,bytes_ba\n"
                 "0,1.0,0.5,1,500000,0\n"     # 8 Mbit/s a -> b over 0.5 s
                 "1,2.0,1.0,1,250000,125000\n"  # 2 and 1 Mbit/s
                 "1,2.0,1.0,0,1250000,0\n"      # 10 Mbit/s on a 0-rate link: no utilisation
                 "2,3.0,1.0,1,99")             # cut line: dropped
    rate = np.array([[0.0, 0.0, 0.0], [10.0, 4.0, 4.0]])
    mbps, util = link_utilisation(p, rate, 3)
    assert mbps[1, 0].tolist() == pytest.approx([8.0, 2.0, 0.0])
    assert mbps[1, 1].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert util[1, 0].tolist() == pytest.approx([0.8, 0.5, 0.0])
    assert np.isnan(util[0, 0, 1]) and mbps[0, 0, 1] == pytest.approx(10.0)


def test_matrix_summary_from_records(tmp_path):
    meta = {"source": "gravity", "endpoints": ["h-a", "h-b"], "rates_mbps": [[0, 3.0], [1.0, 0]],
            "duration_s": 2.0, "files": {"h-a": "h-a.csv", "h-b": "h-b.csv"}, "matches": [], "tcp": []}
    (tmp_path / "matrix.json").write_text(json.dumps(meta))
    head = "t_unix_s,peer,sent_bytes,sent_packets,recv_bytes,recv_packets,unsent_packets\n"
    # h-a sent 750,000 B to h-b in 2 s (3 Mbit/s); h-b received 500,000 of them and sent 250,000 back
    (tmp_path / "h-a.csv").write_text(head + "1,h-b,400000,1,200000,1,0\n2,h-b,350000,1,50000,1,2\n")
    (tmp_path / "h-b.csv").write_text(head + "1,h-a,250000,1,500000,1,0\n2,other,0,0,999,1,0\n")
    s = summarise_matrix(tmp_path)
    assert s["offered_mbps"] == 4.0 and s["pairs"] == 2
    assert s["sent_mbps"] == pytest.approx((750000 + 250000) * 8 / 2 / 1e6)
    assert s["received_mbps"] == pytest.approx((500000 + 250000) * 8 / 2 / 1e6)
    assert s["unsent_packets"] == 2
    top = s["top_pairs"][0]
    assert (top["src"], top["dst"], top["sent_mbps"], top["received_mbps"]) == ("h-a", "h-b", 3.0, 2.0)


def test_two_senders_on_loopback_exchange_paced_datagrams(tmp_path):
    """h-a sends 2 Mbit/s to h-b, h-b 1 Mbit/s back, for 1.5 s from a common start: every datagram
    scheduled is sent or counted unsent, and loopback delivers every one sent."""
    port, dur, payload = 29000 + os.getpid() % 1000, 1.5, 1000
    ends = {"h-a": ("127.0.0.2", 2.0), "h-b": ("127.0.0.3", 1.0)}
    start = time.time() + 1.5
    procs = []
    for name, (addr, rate) in ends.items():
        other = next(n for n in ends if n != name)
        (tmp_path / f"{name}.json").write_text(json.dumps([{"name": other, "addr": ends[other][0],
                                                             "rate_mbps": rate}]))
        procs.append(subprocess.Popen([sys.executable, "-m", "emulator.traffic.matrix", "--bind", addr,
                                       "--port", str(port), "--peers", str(tmp_path / f"{name}.json"),
                                       "--start-at", f"{start:.3f}", "--duration", str(dur), "--payload",
                                       str(payload), "--out", str(tmp_path / f"{name}.csv")]))
    for p in procs:
        assert p.wait(timeout=30) == 0
    conv = {"peer": str, "sent_packets": int, "recv_packets": int, "unsent_packets": int}
    rec = {n: read_records(tmp_path / f"{n}.csv", conv) for n in ends}
    for name, (_, rate) in ends.items():
        other = next(n for n in ends if n != name)
        sent = sum(r["sent_packets"] for r in rec[name])
        unsent = sum(r["unsent_packets"] for r in rec[name])
        scheduled = dur * rate * 1e6 / (payload * 8)  # 375 and 187.5 datagrams
        assert abs(sent + unsent - scheduled) <= 1, (name, sent, unsent)
        assert sum(r["recv_packets"] for r in rec[other] if r["peer"] == name) == sent
