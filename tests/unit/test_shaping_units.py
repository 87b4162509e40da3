"""Shaping without the kernel: value checks, the one kernel-unit conversion, nfnetlink message layouts."""

from __future__ import annotations

import errno
import math
import socket
import struct

import pytest

from emulator.shaping import make_shaper, nfnl
from emulator.shaping.base import (
    MAX_RATE_MBPS,
    LinkShape,
    Port,
    netem_limit_packets,
    tbf_qdisc_body,
)
from topologies.errors import ConfigError


@pytest.mark.parametrize("kwargs, field", [
    ({"delay_ms": -1.0, "rate_mbps": 10.0}, "delay_ms"),
    ({"delay_ms": 1.0, "rate_mbps": 0.0}, "rate_mbps"),
    ({"delay_ms": 1.0, "rate_mbps": MAX_RATE_MBPS * 1.01}, "rate_mbps"),
    ({"delay_ms": 1.0, "rate_mbps": 10.0, "loss_pct": 100.5}, "loss_pct"),
    ({"delay_ms": float("nan"), "rate_mbps": 10.0}, "delay_ms"),
])
def test_linkshape_rejects_out_of_range_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        LinkShape(**kwargs)
    assert e.value.key == field and field in str(e.value)


def test_port_rejects_bad_ifindex():
    with pytest.raises(ConfigError):
        Port("sat-0-0", "/proc/1/ns/net", "eth0", 0)


def test_unknown_shaper_kind_lists_known_ones():
    with pytest.raises(ConfigError, match="auto, netem, userspace"):
        make_shaper("tbf")


def _attrs(data: bytes) -> dict[int, bytes]:
    """Netlink attributes (type -> payload) of ``data``, read as <linux/netlink.h> lays them out."""
    out, off = {}, 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        assert length >= 4 and off + length <= len(data)
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    assert off == len(data)
    return out


def _tc(body: bytes) -> tuple[tuple[int, int, int, int], str, bytes]:
    """(ifindex, handle, parent, info), TCA_KIND and TCA_OPTIONS of an rtnetlink tc message payload."""
    _family, ifindex, handle, parent, info = struct.unpack_from("=BxxxiIII", body)
    attrs = _attrs(body[20:])
    return (ifindex, handle, parent, info), attrs[1].rstrip(b"\0").decode(), attrs[2]


def _tbf(body: bytes) -> dict:
    """Decode a tbf qdisc message by hand: struct tc_tbf_qopt (rate and peak tc_ratespec, limit, buffer,
    mtu), the burst in bytes and the 64-bit rate when present."""
    _hdr, kind, opts = _tc(body)
    assert kind == "tbf"
    a = _attrs(opts)
    parms = a[1]  # TCA_TBF_PARMS
    assert len(parms) == 2 * 12 + 3 * 4
    rate = struct.unpack_from("=BBHhHI", parms, 0)
    peak = struct.unpack_from("=BBHhHI", parms, 12)
    limit, buffer, mtu = struct.unpack_from("=III", parms, 24)
    rate64 = struct.unpack("=Q", a[4])[0] if 4 in a else None  # TCA_TBF_RATE64
    burst = struct.unpack("=I", a[6])[0]  # TCA_TBF_BURST
    return {"rate": rate, "peak": peak, "limit": limit, "buffer": buffer, "mtu": mtu, "rate64": rate64,
            "burst": burst}


@pytest.mark.parametrize("rate_mbps", [1.0, 100.0, 10_000.0, 34_359.0, 34_360.0, 40_000.0, 100_000.0])
def test_tbf_rate_is_bytes_per_second_with_64_bit_rates_beyond_u32(rate_mbps):
    body = tbf_qdisc_body(7, LinkShape(5.0, rate_mbps))
    (ifindex, handle, parent, _info), _kind, _opts = _tc(body)
    assert (ifindex, handle, parent) == (7, 0x10000, 0xFFFFFFFF)  # root qdisc 1:
    d = _tbf(body)
    want = round(rate_mbps * 1e6 / 8)  # bytes/s
    u32_max = 2**32 - 1
    assert d["rate"][1] == 1  # TC_LINKLAYER_ETHERNET: the kernel computes times, no rate table
    assert d["peak"][5] == 0 and d["mtu"] == 0  # no peak rate
    if want <= u32_max:  # 34,359.7 Mbit/s is the last rate a u32 of bytes/s holds
        assert d["rate"][5] == want and d["rate64"] is None
    else:
        assert d["rate"][5] == u32_max and d["rate64"] == want
    # burst: the larger of 1 ms at the rate and ten 1514 B frames; the buffer is the same in 64 ns ticks
    burst_bytes = max(math.ceil(want * 1e-3), 10 * 1514)
    assert d["burst"] == burst_bytes
    assert abs(d["buffer"] * 64e-9 - burst_bytes / want) <= 64e-9
    assert d["limit"] == 1000 * 1514  # a veth's 1,000-packet transmit queue, in bytes


@pytest.mark.parametrize("delay_ms, rate_mbps", [(100.0, 1000.0), (0.0, 1000.0), (5.0, 10.0),
                                                 (40.0, 100_000.0), (1.0, 40_000.0)])
def test_netem_limit_holds_at_least_the_bandwidth_delay_product(delay_ms, rate_mbps):
    limit = netem_limit_packets(LinkShape(delay_ms, rate_mbps))
    bdp_packets = rate_mbps * 1e6 / 8 * delay_ms / 1e3 / 1514  # full-size packets in flight
    assert limit >= 1000  # the floor
    assert limit >= 2 * bdp_packets  # twice the BDP: room for smaller packets
    assert limit <= max(1000, 2 * bdp_packets + 1)
    # 1000 Mbit/s x 100 ms = 12.5 MB = 8256.3 packets of 1514 B
    if (delay_ms, rate_mbps) == (100.0, 1000.0):
        assert limit == 16513


def test_verdict_message_layout():
    data = nfnl.verdict(4711, 0xDEADBEEF, accept=True)
    length, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", data)
    assert length == len(data) == 32
    assert mtype == (nfnl.NFNL_SUBSYS_QUEUE << 8) | nfnl.NFQNL_MSG_VERDICT and flags == nfnl.NLM_F_REQUEST
    assert struct.unpack_from(">H", data, 18)[0] == 4711
    assert struct.unpack_from("=HH", data, 20) == (12, nfnl.NFQA_VERDICT_HDR)
    assert struct.unpack_from(">II", data, 24) == (nfnl.NF_ACCEPT, 0xDEADBEEF)
    assert struct.unpack_from(">I", nfnl.verdict(1, 2, accept=False), 24)[0] == nfnl.NF_DROP
    marked = nfnl.verdict(4711, 0xDEADBEEF, accept=True, mark=0)  # the same, and skb->mark set to 0
    assert struct.unpack_from("=I", marked)[0] == len(marked) == 40 and marked[4:16] == data[4:16]
    assert marked[16:32] == data[16:32]
    assert struct.unpack_from("=HH", marked, 32) == (8, nfnl.NFQA_MARK) and struct.unpack_from(">I", marked, 36)[0] == 0


def _packet(packet_id: int, hook: int, indev: int, outdev: int) -> bytes:
    body = nfnl.attr(nfnl.NFQA_PACKET_HDR, struct.pack(">IHB", packet_id, 0x0800, hook))
    if indev:
        body += nfnl.attr_be32(nfnl.NFQA_IFINDEX_INDEV, indev)
    if outdev:
        body += nfnl.attr_be32(nfnl.NFQA_IFINDEX_OUTDEV, outdev)
    return nfnl.nfmsg(nfnl.NFNL_SUBSYS_QUEUE, nfnl.NFQNL_MSG_PACKET, 0, 0, socket.AF_INET, 4711, body)


def test_parse_keys_packets_by_output_at_postrouting_and_input_at_prerouting():
    forwarded_out = _packet(77, nfnl.NF_INET_POST_ROUTING, indev=3, outdev=9)  # forwarded: both devices
    arriving = _packet(78, nfnl.NF_INET_PRE_ROUTING, indev=3, outdev=0)
    err = struct.pack("=IHHII", 36, nfnl.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", -2) \
        + struct.pack("=IHHII", 32, 0, 0, 1234, 0)
    buf = forwarded_out + arriving + err
    assert list(nfnl.parse_messages(buf, len(buf))) == [
        (nfnl.NFQNL_MSG_PACKET, 77, nfnl.hold_key(9, ingress=False)),
        (nfnl.NFQNL_MSG_PACKET, 78, nfnl.hold_key(3, ingress=True)),
        (nfnl.NLMSG_ERROR, -2, 1234)]
    assert list(nfnl.parse_messages(buf, 10)) == []  # a truncated buffer yields nothing
    # the same ifindex held both ways gives two distinct keys
    assert len({nfnl.hold_key(3, True), nfnl.hold_key(3, False), nfnl.hold_key(1, True)}) == 3


def _walk_batch(data: bytes) -> list[tuple[int, int, bytes]]:
    off, msgs = 0, []
    while off < len(data):
        length, mtype, _f, seq, _p = struct.unpack_from("=IHHII", data, off)
        assert length % 4 == 0 and length >= 20
        msgs.append((mtype, seq, data[off + 20:off + length]))
        off += length
    assert off == len(data)
    return msgs


def test_nft_table_batch_creates_two_empty_base_chains():
    data, seqs = nfnl.nft_table_batch("t", 100)
    msgs = _walk_batch(data)
    assert msgs[0][:2] == (nfnl.NFNL_MSG_BATCH_BEGIN, 100) and msgs[-1][0] == nfnl.NFNL_MSG_BATCH_END
    assert [t & 0xFF for t, _s, _b in msgs[1:-1]] == [nfnl.NFT_MSG_NEWTABLE, nfnl.NFT_MSG_DELTABLE,
                                                      nfnl.NFT_MSG_NEWTABLE, nfnl.NFT_MSG_NEWCHAIN,
                                                      nfnl.NFT_MSG_NEWCHAIN]
    assert seqs == {seq for _t, seq, _b in msgs[1:-1]}  # every message is acked
    assert b"prerouting\0" in data and b"postrouting\0" in data and b"NFQUEUE" not in data
    removal, rseqs = nfnl.nft_table_batch("t", 1, install=False)
    assert [t & 0xFF for t, _s, _b in _walk_batch(removal)[1:-1]] == [nfnl.NFT_MSG_NEWTABLE,
                                                                     nfnl.NFT_MSG_DELTABLE]
    assert len(rseqs) == 2


def _meta_key_and_ifindex(rule_body: bytes) -> tuple[int, int]:
    """(meta key, compared ifindex) of one NEWRULE built by nft_hold_rules_batch."""
    meta = struct.pack("=HH", 8, nfnl.NFTA_META_KEY)
    i = rule_body.index(meta)
    key = struct.unpack_from(">I", rule_body, i + 4)[0]
    value = struct.pack("=HHHH", 12, nfnl.NFTA_CMP_DATA | nfnl.NLA_F_NESTED, 8, nfnl.NFTA_DATA_VALUE)
    j = rule_body.index(value)
    return key, struct.unpack_from("=I", rule_body, j + 8)[0]


def test_nft_hold_rules_match_exactly_the_held_interfaces():
    data, seqs = nfnl.nft_hold_rules_batch("t", 4711, 1, egress=[7, 5, 7], ingress=[3])
    msgs = _walk_batch(data)[1:-1]
    assert [t & 0xFF for t, _s, _b in msgs] == [nfnl.NFT_MSG_DELRULE] * 2 + [nfnl.NFT_MSG_NEWRULE] * 3
    assert seqs == {seq for _t, seq, _b in msgs}
    rules = [_meta_key_and_ifindex(b) for _t, _s, b in msgs[2:]]
    assert rules == [(nfnl.NFT_META_OIF, 5), (nfnl.NFT_META_OIF, 7),
                                              (nfnl.NFT_META_IIF, 3)]
    assert all(b"NFQUEUE\0" in b and struct.pack("=H", 4711) in b for _t, _s, b in msgs[2:])
    assert [b"postrouting\0" in b for _t, _s, b in msgs[2:]] == [True, True, False]
    # nothing held: both chains are emptied and no rule is added
    empty, _ = nfnl.nft_hold_rules_batch("t", 4711, 1, egress=[], ingress=[])
    assert [t & 0xFF for t, _s, _b in _walk_batch(empty)[1:-1]] == [nfnl.NFT_MSG_DELRULE] * 2


def test_port_peer_is_validated_and_decides_where_userspace_holds():
    from emulator.shaping.userspace import UserspaceShaper

    a = Port("r1", "/run/netns/x-r1", "r1-r2", 5)
    b = Port("r2", "/run/netns/x-r2", "r2-r1", 9)
    with pytest.raises(ConfigError) as e:
        Port("r1", "/run/netns/x-r1", "r1-r2", 5, peer=("r2", 9))
    assert e.value.key == "peer"
    with pytest.raises(ConfigError):
        Port("r1", "/run/netns/x-r1", "r1-r2", 5, peer=a)
    with pytest.raises(ConfigError):
        Port("r1", "/run/netns/x-r1", "r1-r2", True)
    assert UserspaceShaper.hold_of(a) == ("/run/netns/x-r1", 5, False)
    assert UserspaceShaper.hold_of(Port("r1", "/run/netns/x-r1", "r1-r2", 5, peer=b)) == ("/run/netns/x-r2", 9, True)


def test_parse_gives_the_mark_of_queued_packets():
    arriving = _packet(5, nfnl.NF_INET_PRE_ROUTING, indev=3, outdev=0)
    marked = nfnl.nfmsg(nfnl.NFNL_SUBSYS_QUEUE, nfnl.NFQNL_MSG_PACKET, 0, 0, socket.AF_INET, 4711,
                        nfnl.attr(nfnl.NFQA_PACKET_HDR,
                                  struct.pack(">IHB", 6, 0x0800, nfnl.NF_INET_PRE_ROUTING))
                        + nfnl.attr_be32(nfnl.NFQA_MARK, 0xFFFFFFFE)
                        + nfnl.attr_be32(nfnl.NFQA_IFINDEX_INDEV, 3))
    buf = arriving + marked
    assert list(nfnl.parse_messages_marked(buf, len(buf))) == [
        (nfnl.NFQNL_MSG_PACKET, 5, nfnl.hold_key(3, True), 0),
        (nfnl.NFQNL_MSG_PACKET, 6, nfnl.hold_key(3, True), 0xFFFFFFFE)]


def _conditions(rule_body: bytes) -> list[tuple]:
    """The meta expressions of one NEWRULE, in order: (meta key, cmp op, value) for a load compared by the
    cmp after it, ("load", key) for a load into a register, ("set", key) for a set from one."""
    meta = struct.pack("=HH", 8, nfnl.NFTA_META_KEY)
    sreg = struct.pack("=HH", 8, nfnl.NFTA_META_SREG)
    op = struct.pack("=HH", 8, nfnl.NFTA_CMP_OP)
    value = struct.pack("=HHHH", 12, nfnl.NFTA_CMP_DATA | nfnl.NLA_F_NESTED, 8, nfnl.NFTA_DATA_VALUE)
    starts = [k for k in range(len(rule_body)) if rule_body.startswith(b"meta\0", k)] + [len(rule_body)]
    out = []
    for a, b in zip(starts, starts[1:]):
        seg = rule_body[a:b]
        k = seg.index(meta)
        key = struct.unpack_from(">I", seg, k + 4)[0]
        if b"cmp\0" in seg:
            j = seg.index(op, seg.index(b"cmp\0"))
            v = seg.index(value, j)
            out.append((key, struct.unpack_from(">I", seg, j + 4)[0], struct.unpack_from("=I", seg, v + 8)[0]))
        else:
            out.append(("set" if sreg in seg else "load", key))
    return out


def test_catch_all_rules_queue_arrivals_but_lo_and_the_pass_group_and_departures_of_the_hold_group():
    data, seqs = nfnl.nft_hold_rules_batch("t", 4711, 1, egress=[], ingress=[], ingress_all=True)
    msgs = _walk_batch(data)[1:-1]
    assert [t & 0xFF for t, _s, _b in msgs] == [nfnl.NFT_MSG_DELRULE] * 2 + [nfnl.NFT_MSG_NEWRULE] * 2
    pre, post = msgs[-2][2], msgs[-1][2]
    assert b"prerouting\0" in pre and b"postrouting\0" in post
    assert _conditions(pre) == [(nfnl.NFT_META_IIF, nfnl.NFT_CMP_NEQ, nfnl.LOOPBACK_IFINDEX),
                                (nfnl.NFT_META_IIFGROUP, nfnl.NFT_CMP_NEQ, nfnl.PASS_INGRESS_GROUP)]
    # a departure is stamped as queued: mark = the realtime clock's ns (the daemon reads its low 32 bits)
    stamp = [("load", nfnl.NFT_META_TIME_NS), ("set", nfnl.NFT_META_MARK)]
    assert _conditions(post) == [(nfnl.NFT_META_OIFGROUP, nfnl.NFT_CMP_EQ, nfnl.HOLD_EGRESS_GROUP), *stamp]
    per_port, _ = nfnl.nft_hold_rules_batch("t", 4711, 1, egress=[9], ingress=[3])
    msgs = _walk_batch(per_port)[1:-1]
    assert _conditions(msgs[2][2]) == [(nfnl.NFT_META_OIF, nfnl.NFT_CMP_EQ, 9), *stamp]
    assert _conditions(msgs[3][2]) == [(nfnl.NFT_META_IIF, nfnl.NFT_CMP_EQ, 3)]
    assert nfnl.PASS_INGRESS_GROUP != nfnl.HOLD_EGRESS_GROUP and 0 not in (nfnl.PASS_INGRESS_GROUP,
                                                                          nfnl.HOLD_EGRESS_GROUP)
    table, _ = nfnl.nft_table_batch("t", 1, ingress_all_queue=4711)
    assert [t & 0xFF for t, _s, _b in _walk_batch(table)[1:-1]][-2:] == [nfnl.NFT_MSG_NEWRULE] * 2


def test_lateness_quantiles_from_the_histogram():
    from emulator.shaping import delayd

    st = delayd.Stats()
    assert st.late_quantile_us(0.5) is None  # nothing released yet
    width = delayd.LATE_BIN_NS
    low = delayd.LATE_LOW_NS

    def add(late_ns: int, n: int = 1) -> None:
        st.late_hist[min(max((late_ns + low) // width, 0), delayd.LATE_BINS)] += n

    add(-20_000, 60)  # 60 packets released 20 us early
    add(40_000, 39)  # 39 released 40 us late
    add(50_000_000)  # one 50 ms late: beyond the last bin
    # bin centres: the 20 us early bin is [-20, -15) us, the 40 us late one [40, 45) us
    assert st.late_quantile_us(0.5) == pytest.approx(-17.5)
    assert st.late_quantile_us(0.99) == pytest.approx(42.5)
    assert st.late_quantile_us(1.0) is None


def test_daemons_statistics_merge_as_one_daemons():
    """The hosts of a clustered run each have a delay daemon: their statistics as one daemon's, worked out here
    by hand from two made-up hosts."""
    from emulator.shaping import delayd

    def host(released: int, late_us: list[int], late_max_us: float, stamped: int, lag_us: float, cpu: list[float],
             locked: bool) -> dict:
        hist = [0] * (delayd.LATE_BINS + 1)
        for us in late_us:
            hist[(us * 1000 + delayd.LATE_LOW_NS) // delayd.LATE_BIN_NS] += 1
        return {"queued": released + 1, "dropped": 1, "released": released, "late_sum_us": float(sum(late_us)),
                "late_mean_us": sum(late_us) / released, "late_max_us": late_max_us, "late_p50_us": 0.0,
                "late_p99_us": 0.0, "stamped": stamped, "read_lag_mean_us": lag_us, "shards": len(cpu),
                "cpu_s_per_shard": cpu, "rt_priority": 10, "memory_locked": locked, "backend": "compiled",
                "ops": {"set": {"n": 2, "ms": 1.0, "max_ms": 0.75}}, "late_hist": hist}

    a = host(4, [10, 10, 10, 10], 12.0, 10, 3.0, [1.5], True)
    b = host(6, [100] * 6, 240.0, 30, 7.0, [2.0, 0.5], False)
    m = delayd.merge_stats([a, {}, b])  # {}: a host whose shaper has no daemon
    assert m["released"] == 10 and m["queued"] == 12 and m["dropped"] == 2 and m["shards"] == 3
    assert m["late_max_us"] == 240.0 and m["rt_priority"] == 10
    assert m["late_mean_us"] == pytest.approx((40 + 600) / 10)
    # 4 packets in the [10, 15) us bin and 6 in [100, 105): the median and p99 are in the second
    assert m["late_p50_us"] == pytest.approx(102.5) and m["late_p99_us"] == pytest.approx(102.5)
    assert m["read_lag_mean_us"] == pytest.approx((10 * 3.0 + 30 * 7.0) / 40)
    assert m["cpu_s_per_shard"] == [1.5, 2.0, 0.5] and m["memory_locked"] is False
    assert m["ops"] == {"set": {"n": 4, "ms": 2.0, "max_ms": 0.75}}
    assert sum(m["late_hist"]) == 10
    assert delayd.merge_stats([{}, {}]) == {}
    # one daemon merges to itself
    one = delayd.merge_stats([a])
    assert one["late_p50_us"] == pytest.approx(12.5) and one["late_mean_us"] == pytest.approx(10.0)


def test_shard_count_follows_the_open_file_limit():
    from emulator.shaping.delayd import FD_MARGIN, shards_needed

    assert shards_needed(10_744, 4_096) == 3  # the 2026 constellation under a 4,096 limit
    assert shards_needed(10_744, 20_000) == 1
    per = 4_096 - FD_MARGIN
    assert [shards_needed(n, 4_096) for n in (per, per + 1, 2 * per, 2 * per + 1)] == [1, 2, 2, 3]


def test_link_identity_is_stable_and_distinct():
    from emulator.shaping.delayd import link_id

    # the loss decision's link input: the same in every run, different per link direction
    assert link_id("sat-1-2", "fore") == link_id("sat-1-2", "fore")
    assert len({link_id("sat-1-2", "fore"), link_id("sat-1-2", "aft"), link_id("sat-1-3", "fore")}) == 3
    assert 0 <= link_id("a", "b") < 2**64


def test_daemon_answers_bad_requests_with_one_line_errors_and_keeps_running():
    """The control protocol, without root: requests that name no attached namespace or are malformed
    are refused one by one and change nothing."""
    from emulator.shaping.delayd import DelayDaemon, binary_path
    from topologies.errors import ApplyError

    if binary_path() is None:
        pytest.skip("the compiled delay daemon is not built (./install.sh)")
    d = DelayDaemon(shards=1, rt_priority=0)
    try:
        with pytest.raises(ApplyError, match="not attached"):
            d.set_ports([("/nonexistent/ns", 2, 1.0, 0.0, True, 1)])
        d._spawn()
        shard = d.shards[0]
        replies = d._exchange({shard: ["bogus", "set 1 0 0 2 1 1000 0.0 7", "set 1 0 0 2 1 1000 150 7",
                                       "ns 0 zz 00", "nft 5 00", "stats 0"]}, "test")[shard]
        assert [r.split()[0] for r in replies] == ["err"] * 5 + ["ok"]
        assert "unknown op" in replies[0] and "not attached" in replies[1] and "loss" in replies[2]
        with pytest.raises(ApplyError, match="/nonexistent/ns"):
            d.attach(["/nonexistent/ns"])
        assert d.stats()["namespaces"] == 0 and d.pids
    finally:
        d.close()
    assert not d.pids


def test_netem_backend_sends_one_batch_per_namespace_and_only_what_changed():
    """What NetemShaper.set sends, read off its batches (the kernel side runs in the netem VM suites):
    the whole tree once, then the class only for a rate change, the netem qdisc only for a delay, loss or
    limit change, nothing for an unchanged shape; every port of one namespace in one batch."""
    from emulator import rtnl
    from emulator.shaping.base import htb_class_body, netem_qdisc_body
    from emulator.shaping.netem import NetemShaper

    sent: list[tuple[str, list[rtnl.Request]]] = []

    class Recorder:
        def __init__(self, path: str) -> None:
            self.path = path

        def run(self, batch: rtnl.Batch) -> list[tuple[rtnl.Request, int]]:
            sent.append((self.path, list(batch.requests)))
            return []

        def close(self) -> None:
            pass

    sh = NetemShaper()
    sh._rtnl = lambda path, node: Recorder(path)  # type: ignore[method-assign]
    a1, a2, b1 = Port("a", "/run/netns/a", "a-x", 2), Port("a", "/run/netns/a", "a-y", 3), Port("b", "/run/netns/b", "b-x", 2)
    five, slow = LinkShape(5.0, 100.0), LinkShape(5.0, 10.0)

    def kinds(reqs: list[rtnl.Request]) -> list[tuple[int, int]]:
        return [(r.msg_type, r.flags & (rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE | rtnl.NLM_F_EXCL)) for r in reqs]

    sh.set([(a1, five), (a2, five), (b1, five)], lambda n: None)
    assert [p for p, _ in sent] == ["/run/netns/a", "/run/netns/b"]  # one batch per namespace
    created = [(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL),
               (rtnl.RTM_NEWTCLASS, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE),
               (rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE)]
    assert kinds(sent[0][1]) == created * 2 and kinds(sent[1][1]) == created
    sent.clear()
    sh.set([(a1, five), (b1, five)], lambda n: None)
    assert sent == []  # unchanged: nothing sent
    sh.set([(a1, LinkShape(7.0, 100.0))], lambda n: None)  # delay only: the netem qdisc, changed in place
    assert kinds(sent[0][1]) == [(rtnl.RTM_NEWQDISC, 0)]
    assert sent[0][1][0].body == netem_qdisc_body(2, LinkShape(7.0, 100.0))
    sent.clear()
    sh.set([(a2, slow)], lambda n: None)  # rate only (the netem limit stays at its floor): the class alone
    assert kinds(sent[0][1]) == [(rtnl.RTM_NEWTCLASS, 0)]
    assert sent[0][1][0].body == htb_class_body(3, slow)
    sent.clear()
    sh.forget(a2)
    sh.set([(a2, slow)], lambda n: None)  # forgotten: built again (a root left there is kept: EEXIST ignored)
    assert kinds(sent[0][1]) == created and errno.EEXIST in sent[0][1][0].ignore
