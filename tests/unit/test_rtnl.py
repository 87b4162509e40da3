"""The vectorised route messages are byte for byte the one-at-a-time ones (no root needed)."""

import numpy as np

from emulator import rtnl


def test_route_msgs_match_route_body():
    rng = np.random.default_rng(1)
    n = 50
    dst = rng.integers(0x0A000000, 0x0AFFFFFF, n)
    dst_len = rng.choice([24, 31, 32], n)
    gw = rng.integers(0x0A000000, 0x0AFFFFFF, n)
    oif = rng.integers(2, 10_000, n)
    src = rng.integers(0x0A400000, 0x0A4FFFFF, n)
    msgs = rtnl.route_msgs(dst, dst_len, gw, oif, src)
    for i in range(n):
        raw = msgs[i].tobytes()
        body = rtnl.route_body(int(dst[i]), int(dst_len[i]), int(gw[i]), int(oif[i]), int(src[i]))
        assert raw[16:] == body, i  # after the 16-byte netlink header
        assert int.from_bytes(raw[:4], "little") == len(raw) == 16 + len(body)
        assert int.from_bytes(raw[4:6], "little") == rtnl.RTM_NEWROUTE


def test_route_del_msgs_match_route_del_body():
    dst = np.array([0x0A400001, 0x0A800000])
    dst_len = np.array([32, 24])
    msgs = rtnl.route_del_msgs(dst, dst_len)
    for i in range(2):
        raw = msgs[i].tobytes()
        assert raw[16:] == rtnl.route_del_body(int(dst[i]), int(dst_len[i]))
        assert int.from_bytes(raw[4:6], "little") == rtnl.RTM_DELROUTE


def test_rule_msgs_match_rule_body():
    for kind in (rtnl.RTM_NEWRULE, rtnl.RTM_DELRULE):
        for table in (101, 102, 300):
            msgs = rtnl.rule_msgs(3, kind, 102, table)
            assert len(msgs) == 3
            raw = msgs[2].tobytes()
            assert raw[16:] == rtnl.rule_body(102, table)
            assert int.from_bytes(raw[:4], "little") == len(raw)
            assert int.from_bytes(raw[4:6], "little") == kind
            create = int.from_bytes(raw[6:8], "little") & rtnl.NLM_F_CREATE
            assert bool(create) == (kind == rtnl.RTM_NEWRULE)


def _attrs(raw: bytes, off: int) -> dict[int, bytes]:
    """Netlink attributes from ``off`` on: {type: payload} (struct rtattr, 4-byte aligned)."""
    out = {}
    while off + 4 <= len(raw):
        length, kind = int.from_bytes(raw[off:off + 2], "little"), int.from_bytes(raw[off + 2:off + 4], "little")
        assert length >= 4
        out[kind] = raw[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def test_route_nh_msgs_carry_destination_nexthop_id_and_source():
    """Decoded field by field against <linux/rtnetlink.h>: rtmsg after the header, then RTA_DST (1),
    RTA_NH_ID (30, native u32) and RTA_PREFSRC (7), addresses in network order."""
    dst = np.array([0x0A400001, 0x0A800000])
    dst_len = np.array([32, 24])
    nh = np.array([7, 123457])
    src = np.array([0x0AFF0001, 0x0AFF0002])
    msgs = rtnl.route_nh_msgs(dst, dst_len, nh, src)
    for i in range(2):
        raw = msgs[i].tobytes()
        assert int.from_bytes(raw[:4], "little") == len(raw)
        assert int.from_bytes(raw[4:6], "little") == 24  # RTM_NEWROUTE
        family, d_len, _sl, _tos, table, proto, scope, rtype = raw[16:24]
        assert (family, d_len, table, scope, rtype) == (2, dst_len[i], 254, 0, 1)  # AF_INET, main, universe, unicast
        a = _attrs(raw, 28)
        assert set(a) == {1, 30, 7}
        assert int.from_bytes(a[1], "big") == dst[i]
        assert int.from_bytes(a[30], "little") == nh[i]
        assert int.from_bytes(a[7], "big") == src[i]


def test_nexthop_body_is_an_ipv4_gateway_on_a_device():
    raw = rtnl.nexthop_body(42, 0x0A000001, 17)
    assert raw[0] == 2  # nhmsg.nh_family = AF_INET
    a = _attrs(raw, 8)
    assert int.from_bytes(a[1], "little") == 42  # NHA_ID
    assert int.from_bytes(a[6], "big") == 0x0A000001  # NHA_GATEWAY
    assert int.from_bytes(a[5], "little") == 17  # NHA_OIF
