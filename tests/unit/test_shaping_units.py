"""Shaping without the kernel: value checks, the one kernel-unit conversion, nfnetlink message layouts."""

from __future__ import annotations

import socket
import struct

import pytest
from pyroute2.netlink.rtnl.tcmsg import sched_htb, sched_netem, tcmsg
from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

from emulator.shaping import make_shaper, nfnl
from emulator.shaping.base import (
    MAX_RATE_MBPS,
    LinkShape,
    Port,
    htb_class_kwargs,
    netem_kwargs,
    netem_limit_packets,
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


def _roundtrip_netem(shape: LinkShape) -> dict:
    kw = netem_kwargs(shape)
    kw.pop("parent")
    msg = tcmsg()
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", sched_netem.get_parameters(kw)]]
    msg.encode()
    back = tcmsg(msg.data)
    back.decode()
    return back.get_attr("TCA_OPTIONS")


def test_netem_encodes_delay_in_ticks_and_loss_as_u32_fraction():
    opts = _roundtrip_netem(LinkShape(delay_ms=12.5, rate_mbps=100.0, loss_pct=25.0))
    assert opts["delay"] == int(12_500 * tick_in_usec)  # psched ticks as the kernel reads them
    assert opts["loss"] == (2**32 - 1) // 4
    assert _roundtrip_netem(LinkShape(0.0, 100.0, 100.0))["loss"] == 2**32 - 1


def test_netem_limit_covers_twice_the_bandwidth_delay_product():
    # 1000 Mbit/s x 100 ms = 12.5 MB = 8257 packets of 1514 B; twice that.
    assert netem_limit_packets(LinkShape(100.0, 1000.0)) == 16513
    assert netem_limit_packets(LinkShape(0.0, 1000.0)) == 1000


def test_htb_rate_is_bytes_per_second_and_survives_encoding():
    kw = htb_class_kwargs(LinkShape(5.0, 10000.0))
    assert kw["rate"] == 1_250_000_000 and kw["ceil"] == kw["rate"]
    parms = sched_htb.get_class_parameters({k: v for k, v in kw.items() if k != "parent"})["attrs"][0][1]
    assert parms["rate"] == 1_250_000_000 and parms["quantum"] == 200_000
    assert parms["buffer"] > 0  # 1 ms worth of bytes, as ticks
    slow = htb_class_kwargs(LinkShape(5.0, 1.0))
    assert slow["rate"] == 125_000 and slow["burst"] == 10 * 1514


def test_verdict_message_layout():
    data = nfnl.verdict(4711, 0xDEADBEEF, accept=True)
    length, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", data)
    assert length == len(data) == 32
    assert mtype == (nfnl.NFNL_SUBSYS_QUEUE << 8) | nfnl.NFQNL_MSG_VERDICT and flags == nfnl.NLM_F_REQUEST
    assert struct.unpack_from(">H", data, 18)[0] == 4711
    assert struct.unpack_from("=HH", data, 20) == (12, nfnl.NFQA_VERDICT_HDR)
    assert struct.unpack_from(">II", data, 24) == (nfnl.NF_ACCEPT, 0xDEADBEEF)
    assert struct.unpack_from(">I", nfnl.verdict(1, 2, accept=False), 24)[0] == nfnl.NF_DROP


def test_parse_packet_and_error_messages():
    pkt = nfnl.nfmsg(nfnl.NFNL_SUBSYS_QUEUE, nfnl.NFQNL_MSG_PACKET, 0, 0, socket.AF_INET, 4711,
                     nfnl.attr(nfnl.NFQA_PACKET_HDR, struct.pack(">IHB", 77, 0x0800, 4))
                     + nfnl.attr(5, struct.pack(">I", 3))  # in-device: ignored
                     + nfnl.attr_be32(nfnl.NFQA_IFINDEX_OUTDEV, 9))
    err = struct.pack("=IHHII", 36, nfnl.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", -2) \
        + struct.pack("=IHHII", 32, 0, 0, 1234, 0)
    buf = pkt + err
    assert list(nfnl.parse_messages(buf, len(buf))) == [(nfnl.NFQNL_MSG_PACKET, 77, 9),
                                                        (nfnl.NLMSG_ERROR, -2, 1234)]
    assert list(nfnl.parse_messages(buf, 10)) == []  # a truncated buffer yields nothing


def test_nft_ruleset_batch_is_framed_and_aligned():
    data = nfnl.nft_queue_ruleset("t", 4711, 100)
    off, types = 0, []
    while off < len(data):
        length, mtype, _f, seq, _p = struct.unpack_from("=IHHII", data, off)
        assert length % 4 == 0
        types.append((mtype, seq))
        off += length
    assert off == len(data)
    assert types[0] == (nfnl.NFNL_MSG_BATCH_BEGIN, 100) and types[-1][0] == nfnl.NFNL_MSG_BATCH_END
    assert [t & 0xFF for t, _ in types[1:-1]] == [nfnl.NFT_MSG_NEWTABLE, nfnl.NFT_MSG_DELTABLE,
                                                  nfnl.NFT_MSG_NEWTABLE, nfnl.NFT_MSG_NEWCHAIN,
                                                  nfnl.NFT_MSG_NEWRULE]
    assert b"NFQUEUE\0" in data
