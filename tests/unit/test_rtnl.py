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
