"""Batched rtnetlink requests: many link, address and route changes per system call.

pyroute2 spends a few hundred microseconds encoding each message in Python; bringing up a 1,584
satellite constellation needs some 10^5 messages (veths, addresses, routes). This module packs the
few message kinds the emulator needs with ``struct`` and sends them in batches of a few hundred per
``send`` on one raw NETLINK_ROUTE socket per namespace, then collects the kernel's acknowledgements
and reports every failed request with its errno. The sockets are opened when a batch needs them and
closed, least recently used first, when the open-file budget (:func:`socket_budget`) needs their
descriptors (:data:`POOL`): a run never holds one descriptor per node. Single-next-hop route changes, the bulk of every
emulation step, are built as numpy records (:func:`route_msgs`) and sent without acknowledgements
(:func:`run_packed_many`). Message layouts follow <linux/rtnetlink.h>, <linux/if_link.h> and
<linux/veth.h>.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import select
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ApplyError

from .netns import entered

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_NEWQDISC = 36
RTM_NEWTCLASS = 40
RTM_NEWTFILTER = 44
RTM_NEWNEXTHOP = 104
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
TCA_INGRESS_BLOCK = 13
#: tcm_ifindex of a filter on a shared block (tcm_parent then holds the block index)
TCM_IFINDEX_MAGIC_BLOCK = 0xFFFFFFFF
ETH_P_ALL = 0x0003
IFF_UP = 0x1
IFF_RUNNING = 0x40  # the link state the kernel applied (operstate up), in RTM_NEWLINK's ifi_flags
IFF_LOWER_UP = 0x10000  # carrier on, as the driver set it
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_GROUP = 27
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
IPV4_DEVCONF_FORWARDING = 1
IFLA_INET6_ADDR_GEN_MODE = 8
IN6_ADDR_GEN_MODE_NONE = 1
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_NH_ID = 30
NHA_ID = 1
NHA_OIF = 5
NHA_GATEWAY = 6
RT_TABLE_MAIN = 254
#: Protocol number of the routes satnetem installs ("proto 4"/static in ``ip route``).
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NHMSG = struct.Struct("=BBBBI")  # struct nhmsg: family, scope, protocol, reserved, flags
_TCMSG = struct.Struct("=BxxxIIII")  # struct tcmsg: family, ifindex (int, sent as its u32 bits), handle, parent, info
_RTNH = struct.Struct("=HBBi")  # struct rtnexthop: len, flags, hops (weight - 1), ifindex
_BATCH = 256
#: Pace of route sends ahead of their step (:func:`run_packed_many` ``pace``), messages a second per sending
#: thread, in sends of PACE_CHUNK messages. Each route replaced leaves the kernel an RCU callback to run after
#: a grace period; above its qhimark (10,000 a CPU) the kernel runs them in softirq unbounded, for up to
#: rcu_resched_ns (3 ms) at a time, and no thread of that CPU runs meanwhile, the delay daemon's real-time
#: shards included. ``bench/route_pace.py`` (a SCHED_FIFO thread waking every 1 ms on the CPU of the sends,
#: 10 s each; 2-core VM, kernel 6.18): wake-ups over 0.5 ms late 923 unpaced (296,000 routes/s), 81 at
#: 239,000/s, 4 at 146,000/s (two threads at this pace, both on that CPU). By hand, one thread: ~1,200 at
#: 400,000/s and more; 1 at 200,000/s in sends of 16 routes, 283 in sends of 256; 5 with nothing sent.
AHEAD_PACE = 100_000
PACE_CHUNK = 16


def ahead_pace() -> float:
    """:data:`AHEAD_PACE`, or ``$SATNETEM_AHEAD_PACE`` (routes a second per thread; 0: unpaced, for
    comparisons)."""
    env = os.environ.get("SATNETEM_AHEAD_PACE", "")
    if not env:
        return float(AHEAD_PACE)
    if not env.isdigit():
        raise ValueError(f"SATNETEM_AHEAD_PACE must be a whole number of routes a second, got {env!r}")
    return float(env)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ip(kind: int, addr: int) -> bytes:
    return _attr(kind, struct.pack("!I", addr))


def _name(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def veth_body(ifname: str, ifindex: int, ns_fd: int | None, peer_ifname: str, peer_ifindex: int,
              peer_ns_fd: int, group: int = 0, peer_group: int = 0) -> bytes:
    """RTM_NEWLINK payload creating a veth pair with each end directly in its namespace, each end in
    interface group ``group`` / ``peer_group`` (0: the default; a group stays with an interface that
    moves to another namespace).

    Both ends are created down: the kernel cannot bring up a veth end at creation (``veth_open``
    fails with ENOTCONN until the pair is complete), so set them up in a second request.
    """
    peer = _IFINFO.pack(0, 0, peer_ifindex, 0, 0) + _name(IFLA_IFNAME, peer_ifname) \
        + _u32(IFLA_NET_NS_FD, peer_ns_fd) + (_u32(IFLA_GROUP, peer_group) if peer_group else b"")
    info = _name(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    own = _u32(IFLA_NET_NS_FD, ns_fd) if ns_fd is not None else b""  # None: the socket's namespace
    own += _u32(IFLA_GROUP, group) if group else b""
    return (_IFINFO.pack(0, 0, ifindex, 0, 0) + _name(IFLA_IFNAME, ifname) + own
            + _attr(IFLA_LINKINFO, info))


def link_set_body(ifindex: int, up: bool | None = None, ns_fd: int | None = None) -> bytes:
    """RTM_NEWLINK payload setting an interface up/down and/or moving it to another namespace."""
    body = _IFINFO.pack(0, 0, ifindex, IFF_UP if up else 0, IFF_UP if up is not None else 0)
    if ns_fd is not None:
        body += _u32(IFLA_NET_NS_FD, ns_fd)
    return body


def link_conf_body(ifindex: int, forwarding: bool) -> bytes:
    """RTM_NEWLINK payload configuring one (down) interface: IPv4 forwarding on or off for it alone, and no
    IPv6 addresses generated on it (no link-local address: no duplicate address detection, router
    solicitation or MLD report ever leaves it). Per interface through netlink, not per namespace under
    /proc/sys: each /proc/sys lookup compares the name against every namespace made so far
    (bench/bench_netns.py). The kernel resets both when the interface moves to another namespace.
    """
    v4 = _attr(socket.AF_INET, _attr(IFLA_INET_CONF, _u32(IPV4_DEVCONF_FORWARDING, int(forwarding))))
    v6 = _attr(socket.AF_INET6, _attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE])))
    return _IFINFO.pack(0, 0, ifindex, 0, 0) + _attr(IFLA_AF_SPEC, v4 + v6)


def addr_body(ifindex: int, addr: int, prefix_len: int) -> bytes:
    """RTM_NEWADDR payload for an IPv4 address."""
    return _IFADDR.pack(socket.AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE, ifindex) \
        + _ip(IFA_LOCAL, addr) + _ip(IFA_ADDRESS, addr)


def route_body(dst: int, dst_len: int, gateway: int, oif: int, prefsrc: int = 0,
               table: int = RT_TABLE_MAIN) -> bytes:
    """RTM_NEWROUTE payload: ``dst/dst_len via gateway dev oif [src prefsrc]`` in ``table`` (< 256)."""
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
                       RTN_UNICAST, 0)
    if dst_len:
        body += _ip(RTA_DST, dst)
    body += _ip(RTA_GATEWAY, gateway) + _u32(RTA_OIF, oif)
    if prefsrc:
        body += _ip(RTA_PREFSRC, prefsrc)
    return body


def nexthop_body(nh_id: int, gateway: int, oif: int) -> bytes:
    """RTM_NEWNEXTHOP payload: nexthop object ``nh_id`` = ``via gateway dev oif`` (IPv4). The kernel
    removes it, and every route using it, when the device goes down or loses its carrier."""
    return (_NHMSG.pack(socket.AF_INET, 0, RTPROT_STATIC, 0, 0) + _u32(NHA_ID, nh_id)
            + _ip(NHA_GATEWAY, gateway) + _u32(NHA_OIF, oif))


def multipath_route_body(dst: int, dst_len: int, hops: list[tuple[int, int]], prefsrc: int = 0,
                         table: int = RT_TABLE_MAIN) -> bytes:
    """RTM_NEWROUTE payload: ``dst/dst_len nexthop via gw1 dev oif1 nexthop via gw2 dev oif2 ...``
    (equal weights) in ``table``; ``hops`` is [(gateway, oif), ...], at least one."""
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
                       RTN_UNICAST, 0)
    if dst_len:
        body += _ip(RTA_DST, dst)
    nexthops = b""
    for gateway, oif in hops:
        gw = _ip(RTA_GATEWAY, gateway)
        nexthops += _RTNH.pack(_RTNH.size + len(gw), 0, 0, oif) + gw
    body += _attr(RTA_MULTIPATH, nexthops)
    if prefsrc:
        body += _ip(RTA_PREFSRC, prefsrc)
    return body


def _tcmsg(ifindex: int, handle: int, parent: int, info: int = 0) -> bytes:
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info)


def ingress_qdisc_body(ifindex: int, block: int | None = None) -> bytes:
    """RTM_NEWQDISC payload: the ingress qdisc ``ffff:``; with ``block``, its filters are those of the
    namespace's shared filter block of that index (TCA_INGRESS_BLOCK)."""
    body = _tcmsg(ifindex, 0xFFFF0000, TC_H_INGRESS) + _name(TCA_KIND, "ingress")
    return body + (_u32(TCA_INGRESS_BLOCK, block) if block is not None else b"")


def bpf_filter_body(ifindex: int, parent: int, prio: int, handle: int, prog_fd: int, name: str) -> bytes:
    """RTM_NEWTFILTER payload: a direct-action cls_bpf filter running program ``prog_fd`` (a descriptor of
    this process) on every protocol, under ``parent``; ``ifindex`` :data:`TCM_IFINDEX_MAGIC_BLOCK` puts it
    on the shared block whose index is ``parent``."""
    info = (prio << 16) | socket.htons(ETH_P_ALL)
    opts = (_u32(TCA_BPF_FD, prog_fd) + _name(TCA_BPF_NAME, name)
            + _u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT))
    return _tcmsg(ifindex, handle, parent, info) + _name(TCA_KIND, "bpf") + _attr(TCA_OPTIONS, opts)


def route_del_body(dst: int, dst_len: int, table: int = RT_TABLE_MAIN) -> bytes:
    """RTM_DELROUTE payload for ``dst/dst_len`` in ``table``."""
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table, 0, RT_SCOPE_NOWHERE, 0, 0)
    return body + (_ip(RTA_DST, dst) if dst_len else b"")


# struct fib_rule_hdr (linux/fib_rules.h): family, dst_len, src_len, tos, table, res1, res2, action, flags
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 6, 10, 15, 16
FR_ACT_TO_TBL = 1


def rule_body(priority: int, table: int, fwmark: int | None = None) -> bytes:
    """RTM_NEWRULE payload (IPv4): ``ip rule add pref priority [fwmark fwmark/0xffffffff] lookup table``."""
    body = _FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
    body += _u32(FRA_PRIORITY, priority) + _u32(FRA_TABLE, table)
    if fwmark is not None:
        body += _u32(FRA_FWMARK, fwmark) + _u32(FRA_FWMASK, 0xFFFFFFFF)
    return body


#: RTM_NEWRULE / RTM_DELRULE ``pref priority lookup table`` (IPv4): the layout :func:`rule_body` produces
#: without a fwmark, after a netlink header.
RULE_MSG = np.dtype([("nlmsg_len", "=u4"), ("nlmsg_type", "=u2"), ("nlmsg_flags", "=u2"), ("nlmsg_seq", "=u4"),
                     ("nlmsg_pid", "=u4"), ("family", "u1"), ("dst_len", "u1"), ("src_len", "u1"), ("tos", "u1"),
                     ("table", "u1"), ("res1", "u1"), ("res2", "u1"), ("action", "u1"), ("flags", "=u4"),
                     ("prio_hdr", "=u4"), ("prio", "=u4"), ("table_hdr", "=u4"), ("table_id", "=u4")])


def rule_msgs(n: int, kind: int, priority: int, table: int) -> np.ndarray:
    """``n`` copies of one rule message (``kind`` RTM_NEWRULE or RTM_DELRULE) for
    :func:`run_packed_many`: ``ip rule add|del pref priority lookup table``, dtype :data:`RULE_MSG`."""
    m = np.zeros(n, RULE_MSG)
    m["nlmsg_len"] = RULE_MSG.itemsize
    m["nlmsg_type"] = kind
    m["nlmsg_flags"] = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if kind == RTM_NEWRULE else 0)
    m["family"] = socket.AF_INET
    m["table"] = table if table < 256 else 0
    m["action"] = FR_ACT_TO_TBL
    m["prio_hdr"] = _attr_hdr(FRA_PRIORITY, 4)
    m["prio"] = priority
    m["table_hdr"] = _attr_hdr(FRA_TABLE, 4)
    m["table_id"] = table
    return m


# --------------------------------------------------------------------------- packed (vectorised) routes
# Single-next-hop route changes are the bulk of every step (about 1,400 at full scale). They are built as
# numpy records, whole messages including their netlink header, so that no Python code runs per route.
_ATTR_HDR = [("len", "=u2"), ("type", "=u2")]
_NLMSGHDR = [("nlmsg_len", "=u4"), ("nlmsg_type", "=u2"), ("nlmsg_flags", "=u2"), ("nlmsg_seq", "=u4"),
             ("nlmsg_pid", "=u4")]
_RTMSG_FIELDS = [("rtm_family", "u1"), ("rtm_dst_len", "u1"), ("rtm_src_len", "u1"), ("rtm_tos", "u1"),
                 ("rtm_table", "u1"), ("rtm_protocol", "u1"), ("rtm_scope", "u1"), ("rtm_type", "u1"),
                 ("rtm_flags", "=u4")]
#: RTM_NEWROUTE ``dst/len via gateway dev oif src prefsrc``: the layout :func:`route_body` produces.
ROUTE_MSG = np.dtype(_NLMSGHDR + _RTMSG_FIELDS
                     + [("dst_hdr", "=u4"), ("dst", ">u4"), ("gw_hdr", "=u4"), ("gw", ">u4"),
                        ("oif_hdr", "=u4"), ("oif", "=u4"), ("src_hdr", "=u4"), ("src", ">u4")])
#: RTM_DELROUTE ``dst/len``: the layout :func:`route_del_body` produces.
ROUTE_DEL_MSG = np.dtype(_NLMSGHDR + _RTMSG_FIELDS + [("dst_hdr", "=u4"), ("dst", ">u4")])
#: RTM_NEWROUTE ``dst/len nhid id src prefsrc``: through a nexthop object (:func:`nexthop_body`).
ROUTE_NH_MSG = np.dtype(_NLMSGHDR + _RTMSG_FIELDS
                        + [("dst_hdr", "=u4"), ("dst", ">u4"), ("nh_hdr", "=u4"), ("nh_id", "=u4"),
                           ("src_hdr", "=u4"), ("src", ">u4")])
assert ROUTE_MSG.itemsize == 60 and ROUTE_DEL_MSG.itemsize == 36 and ROUTE_NH_MSG.itemsize == 52


def _attr_hdr(kind: int, payload_len: int) -> int:
    """struct rtattr {u16 len; u16 type} read as one native u32."""
    return int(np.frombuffer(struct.pack("=HH", 4 + payload_len, kind), "=u4")[0])


def route_msgs(dst: np.ndarray, dst_len: np.ndarray, gateway: np.ndarray, oif: np.ndarray,
               prefsrc: np.ndarray, flags: int = NLM_F_CREATE | NLM_F_REPLACE) -> np.ndarray:
    """RTM_NEWROUTE messages (header included, sequence numbers 0) for many single-next-hop routes.

    Parameters
    ----------
    dst, dst_len, gateway, oif, prefsrc : ndarray, shape (n,)
        Destination prefix and its length (> 0), gateway, output ifindex and preferred source (!= 0)
        of each route; addresses as host-order integers.
    flags : int
        NLM_F_* flags besides REQUEST and ACK (which are always set).

    Returns
    -------
    ndarray, shape (n,), dtype :data:`ROUTE_MSG`
        Byte for byte what :func:`route_body` gives after a netlink header.
    """
    n = len(dst)
    m = np.zeros(n, ROUTE_MSG)
    m["nlmsg_len"] = ROUTE_MSG.itemsize
    m["nlmsg_type"] = RTM_NEWROUTE
    m["nlmsg_flags"] = flags | NLM_F_REQUEST | NLM_F_ACK
    m["rtm_family"] = socket.AF_INET
    m["rtm_dst_len"] = dst_len
    m["rtm_table"] = RT_TABLE_MAIN
    m["rtm_protocol"] = RTPROT_STATIC
    m["rtm_scope"] = RT_SCOPE_UNIVERSE
    m["rtm_type"] = RTN_UNICAST
    m["dst_hdr"] = _attr_hdr(RTA_DST, 4)
    m["dst"] = dst
    m["gw_hdr"] = _attr_hdr(RTA_GATEWAY, 4)
    m["gw"] = gateway
    m["oif_hdr"] = _attr_hdr(RTA_OIF, 4)
    m["oif"] = oif
    m["src_hdr"] = _attr_hdr(RTA_PREFSRC, 4)
    m["src"] = prefsrc
    return m


def route_nh_msgs(dst: np.ndarray, dst_len: np.ndarray, nh_id: np.ndarray, prefsrc: np.ndarray,
                  flags: int = NLM_F_CREATE | NLM_F_REPLACE) -> np.ndarray:
    """RTM_NEWROUTE messages (sequence numbers 0) for many single-next-hop routes through nexthop
    objects: ``dst/dst_len nhid nh_id src prefsrc`` (dst_len > 0, prefsrc != 0), shape (n,), dtype
    :data:`ROUTE_NH_MSG`.

    A route through a nexthop object shares the object's per-CPU route caches: the kernel finds the
    route's fib_info among the existing ones instead of allocating and freeing those caches for every
    route given by gateway and device (1.7 against 3.6 us per changed route, one namespace, kernel 6.18).
    """
    n = len(dst)
    m = np.zeros(n, ROUTE_NH_MSG)
    m["nlmsg_len"] = ROUTE_NH_MSG.itemsize
    m["nlmsg_type"] = RTM_NEWROUTE
    m["nlmsg_flags"] = flags | NLM_F_REQUEST | NLM_F_ACK
    m["rtm_family"] = socket.AF_INET
    m["rtm_dst_len"] = dst_len
    m["rtm_table"] = RT_TABLE_MAIN
    m["rtm_protocol"] = RTPROT_STATIC
    m["rtm_scope"] = RT_SCOPE_UNIVERSE
    m["rtm_type"] = RTN_UNICAST
    m["dst_hdr"] = _attr_hdr(RTA_DST, 4)
    m["dst"] = dst
    m["nh_hdr"] = _attr_hdr(RTA_NH_ID, 4)
    m["nh_id"] = nh_id
    m["src_hdr"] = _attr_hdr(RTA_PREFSRC, 4)
    m["src"] = prefsrc
    return m


def route_del_msgs(dst: np.ndarray, dst_len: np.ndarray) -> np.ndarray:
    """RTM_DELROUTE messages (sequence numbers 0) for many ``dst/dst_len`` (dst_len > 0), shape (n,),
    dtype :data:`ROUTE_DEL_MSG`: byte for byte what :func:`route_del_body` gives after a header."""
    m = np.zeros(len(dst), ROUTE_DEL_MSG)
    m["nlmsg_len"] = ROUTE_DEL_MSG.itemsize
    m["nlmsg_type"] = RTM_DELROUTE
    m["nlmsg_flags"] = NLM_F_REQUEST | NLM_F_ACK
    m["rtm_family"] = socket.AF_INET
    m["rtm_dst_len"] = dst_len
    m["rtm_table"] = RT_TABLE_MAIN
    m["rtm_scope"] = RT_SCOPE_NOWHERE
    m["dst_hdr"] = _attr_hdr(RTA_DST, 4)
    m["dst"] = dst
    return m


@dataclass
class Request:
    msg_type: int
    flags: int
    body: bytes
    what: Any  # for error messages: "link fore on sat-0-0", ... or a callable giving it (on failure only)
    ignore: tuple[int, ...] = ()  # errnos that count as success (e.g. ESRCH on delete)


@dataclass
class Batch:
    """Requests queued for one namespace, sent together by :meth:`Rtnl.run`."""

    requests: list[Request] = field(default_factory=list)

    def add(self, msg_type: int, flags: int, body: bytes, what: Any, ignore: tuple[int, ...] = ()) -> None:
        """Queue one request; ``what`` names it in error messages: a str, or a callable returning one (so
        that hot paths format descriptions only when something failed)."""
        self.requests.append(Request(msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, body, what, ignore))

    def add_end_conf(self, name: str, ifindex: int, addr: int, prefix_len: int, forwarding: bool) -> None:
        """Queue the configuration of one veth end: IPv4 forwarding and IPv6 (:func:`link_conf_body`), then
        its IPv4 address. The one recipe for an end, built or remade."""
        self.add(RTM_NEWLINK, 0, link_conf_body(ifindex, forwarding), f"{name} conf")
        self.add(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, addr_body(ifindex, addr, prefix_len), f"address of {name}")

    def __len__(self) -> int:
        return len(self.requests)


#: Descriptors left for everything but rtnetlink sockets (pipes, files, pyroute2, shells' ptys, the
#: namespace fds opened around each batch): the larger of this and an eighth of the limit.
FDS_RESERVED = 512
#: Fewest rtnetlink sockets kept open at once, whatever the limit (below this, every batch reopens).
MIN_SOCKETS = 16


def socket_budget(nofile: int | None = None) -> int:
    """How many namespace rtnetlink sockets may be open at once under the open-file limit ``nofile``
    (default: this process's soft RLIMIT_NOFILE)."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    return max(MIN_SOCKETS, nofile - max(FDS_RESERVED, nofile // 8))


class _Conn:
    """The socket of one namespace, shared by every :class:`Rtnl` handle on that path; open or closed."""

    __slots__ = ("path", "node", "sock", "seq", "lock", "refs", "opens", "held")

    def __init__(self, path: str, node: str | None) -> None:
        self.path, self.node = path, node
        self.sock: socket.socket | None = None
        self.seq = 0
        self.lock = threading.RLock()  # held while the socket is in use (and while it is opened or closed)
        self.refs = 0
        self.opens = 0
        self.held = False  # its lock is held across calls (run_packed_many): never closed by the pool then


class _Pool:
    """Every namespace socket of this process, at most :func:`socket_budget` open at once.

    A socket is opened (setns into its namespace and back) when a batch needs it and stays open until
    the budget needs its descriptor: then the least recently used one not in use is closed. With one
    socket per namespace open for the run, a 10^4-node emulation would need 10^4 descriptors for them
    alone; a budget of a few thousand keeps every namespace that changes in a step open, and a namespace
    reopened later costs ~20 us.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conns: dict[str, _Conn] = {}
        self.open: OrderedDict[str, _Conn] = OrderedDict()  # least recently used first
        self.limit: int | None = None  # None: socket_budget() (tests set a number)
        self._cap = 0  # the budget when a socket was last opened: with no more namespaces, no LRU to keep

    def acquire(self, path: str, node: str | None) -> _Conn:
        with self.lock:
            c = self.conns.get(path)
            if c is None:
                c = self.conns[path] = _Conn(path, node)
            c.refs += 1
            return c

    def release(self, c: _Conn) -> None:
        with self.lock:
            c.refs -= 1
            if c.refs > 0:
                return
            self.conns.pop(c.path, None)
            self.open.pop(c.path, None)
        with c.lock:
            if c.sock is not None:
                c.sock.close()
                c.sock = None

    def budget(self) -> int:
        """How many sockets may be open at once."""
        return self.limit if self.limit is not None else socket_budget()

    def sock(self, c: _Conn) -> socket.socket:
        """``c``'s socket, opened if need be (caller holds ``c.lock``)."""
        if c.sock is not None:
            if len(self.conns) > self._cap:  # some socket may have to close: keep the order of use
                with self.lock:
                    if c.path in self.open:
                        self.open.move_to_end(c.path)
            return c.sock
        with entered(c.path, c.node):
            c.sock = Rtnl._open()
        c.opens += 1
        with self.lock:
            self.open[c.path] = c
            limit = self.budget()
            self._cap = limit
            excess = len(self.open) - limit
            victims: list[_Conn] = []
            if excess > 0:
                for v in self.open.values():
                    if len(victims) == excess:
                        break
                    if v is not c and not v.held and v.lock.acquire(blocking=False):  # not in use anywhere
                        victims.append(v)
                for v in victims:
                    del self.open[v.path]
        for v in victims:
            try:
                if v.sock is not None:
                    v.sock.close()
                    v.sock = None
            finally:
                v.lock.release()
        return c.sock

    def stats(self) -> dict[str, int]:
        """Namespaces known, sockets open now, sockets opened in all."""
        with self.lock:
            return {"namespaces": len(self.conns), "open": len(self.open),
                    "opened": sum(c.opens for c in self.conns.values())}


def run_packed_many(handles: list[Rtnl], msgs: np.ndarray, starts: np.ndarray,
                    ignore: tuple[int, ...] = (),
                    held: Callable[[], None] | None = None, pace: float = 0.0) -> list[tuple[int, int, int]]:
    """Send ``msgs[starts[i]:starts[i + 1]]`` on ``handles[i]``, for every i, without acknowledgements.

    rtnetlink handles a request inside ``send``, in the sending thread, and reports a failure with an
    NLMSG_ERROR whether or not an acknowledgement was asked for: once ``send`` has returned, every error
    report is queued on the socket, and reading what is there without waiting is enough. The kernel
    builds, and this process reads, only failures.

    The messages (a record array such as :data:`ROUTE_MSG`) are numbered and flattened once, so each
    namespace costs a ``send`` of a slice and a read: a step at 10^4 satellites touches several
    thousand namespaces with a few routes each, and numpy work per namespace cost more than the
    kernel's (10.7k satellites, ~28k routes in ~7,300 namespaces: 440 ms with a record array per
    namespace, 230 ms so).

    ``held``, if given, is called once, as soon as every sending thread holds the sockets of its first
    group and is about to send from C without the interpreter lock: from then on the caller's other
    threads can run Python without slowing this call's own Python down (see ``emulator.network``).
    It is called in any case before this returns or raises.

    ``pace`` (messages a second, 0: as fast as the kernel takes them): each sending thread keeps to it,
    in sends of at most :data:`PACE_CHUNK` messages (route changes sent ahead of their step,
    :data:`AHEAD_PACE`).

    Returns
    -------
    list of (row, errno, i)
        The failures: ``row`` indexes ``msgs`` (-1: reports lost to a full receive buffer), ``i`` the handle.
    """
    once = _Once(held)
    try:
        return _run_packed_many(handles, msgs, starts, ignore, once, pace)
    finally:
        once()


class _Once:
    """A callable running ``fn`` at its first call only (thread-safe); ``fn`` None: nothing."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self._fn, self._lock = fn, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            fn()


def _run_packed_many(handles: list[Rtnl], msgs: np.ndarray, starts: np.ndarray, ignore: tuple[int, ...],
                     held: _Once, pace: float) -> list[tuple[int, int, int]]:
    n = len(msgs)
    if n == 0:
        return []
    if n >= 0x7FFFFFFF:
        raise ValueError("too many messages for one call")
    msgs["nlmsg_seq"] = np.arange(1, n + 1, dtype=np.uint32)  # row + 1, unique in the call
    msgs["nlmsg_flags"] &= ~np.uint16(NLM_F_ACK)
    size = msgs.dtype.itemsize
    raw = np.ascontiguousarray(msgs).reshape(-1).view(np.uint8)
    buf = memoryview(raw.data)
    failures: list[tuple[int, int, int]] = []
    bounds_a = np.asarray(starts, np.int64) * size
    bounds = bounds_a.tolist()
    items = list(enumerate(zip(handles, bounds[:-1], bounds[1:])))
    send_many = _c_sender()
    # From C, a group is one call without the interpreter lock: as few as the socket budget allows (every
    # socket of a group is held open), since each return waits for the lock while another thread runs.
    size_g = _POLL_GROUP if send_many is None else max(_POLL_GROUP, POOL.budget() // 4)
    # Two sending threads from C: the kernel serialises route changes on its rtnl lock, but not the system
    # call, the copy and the parsing around it (10.7k satellites, 40 steps: step median 69-74 -> 56-64 ms,
    # p95 111-113 -> 94-95 ms with two). From Python a second thread would only wait for the interpreter.
    nthreads = send_threads() if send_many is not None else 1

    def send_range(a: int, b: int, first_held: Callable[[], None]) -> None:
        pacer = _Pacer(pace, size) if pace > 0 else None
        for k in range(a, b, size_g):
            group = items[k:min(k + size_g, b)]
            if send_many is not None:
                _send_group_c(send_many, group, raw, bounds_a[k:k + len(group) + 1], buf, size, ignore, failures,
                              first_held if k == a else None, pacer)
            else:
                held()
                _send_group(group, buf, size, ignore, failures, pacer)

    # paced, every thread keeps to the pace on its own: two on two CPUs send twice as many (the kernel's RCU
    # callbacks are queued per CPU)
    if nthreads <= 1 or len(items) < (2 if pace > 0 else 2 * _POLL_GROUP):
        send_range(0, len(items), held)
        return failures
    cuts = [j * (len(items) // nthreads) for j in range(nthreads)] + [len(items)]
    errs: list[BaseException] = []
    # ``held`` once every thread holds its first group's sockets (Python) and sends (C): counted down, never
    # waited for (two threads may share a socket, whose lock the first keeps until its sends are done)
    left = [nthreads]
    count_lock = threading.Lock()

    def arrived() -> None:
        with count_lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            held()

    def part(a: int, b: int) -> None:
        mine = _Once(arrived)
        try:
            send_range(a, b, mine)
        except BaseException as e:  # raised below, in the caller's thread
            errs.append(e)
        finally:
            mine()
    ts = [threading.Thread(target=part, args=(cuts[j], cuts[j + 1])) for j in range(1, nthreads)]
    for t in ts:
        t.start()
    part(cuts[0], cuts[1])
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return failures


def send_threads() -> int:
    """Threads :func:`run_packed_many` sends from with the C sender: ``$SATNETEM_RTSEND_THREADS``, else
    two (one on a single core)."""
    env = os.environ.get("SATNETEM_RTSEND_THREADS", "")
    if env:
        if not env.isdigit() or not 1 <= int(env) <= 64:
            raise ValueError(f"SATNETEM_RTSEND_THREADS must be an integer in [1, 64], got {env!r}")
        return int(env)
    return min(2, os.cpu_count() or 1)


#: Where install.sh builds the C route sender (``emulator/kernel/rtsend.c``).
RTSEND_LIBRARY = Path(__file__).resolve().parents[1] / "build" / "libsatnetem-rtsend.so"
_c_send: list[Any] = []  # [function or None] once looked for


def _c_sender() -> Any:
    """``satnetem_send_many`` from the C route sender, or None if it is not built (or
    ``SATNETEM_RTSEND=python`` asks for the Python loop): then the sends are made from Python, the same
    requests at ~1.3 us more per namespace, holding the interpreter lock."""
    if not _c_send:
        fn = None
        if os.environ.get("SATNETEM_RTSEND", "") != "python" and RTSEND_LIBRARY.exists():
            lib = ctypes.CDLL(str(RTSEND_LIBRARY), use_errno=True)
            fn = lib.satnetem_send_many
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int64,
                           ctypes.POINTER(ctypes.c_double)]
        _c_send.append(fn)
    return _c_send[0]


def _send_group_c(send_many: Any, items: list[tuple[int, tuple[Rtnl, int, int]]], raw: np.ndarray,
                  bounds: np.ndarray, buf: memoryview, size: int, ignore: tuple[int, ...],
                  failures: list[tuple[int, int, int]], on_held: Callable[[], None] | None = None,
                  pacer: _Pacer | None = None) -> None:
    """:func:`_send_group` with the sends and the poll made in C, without the interpreter lock.

    ``raw`` is the bytes of every message of the call (``buf`` views it); ``bounds`` holds the byte
    offsets of the group's slices (one more than ``items``). A slice of more than a batch goes
    through :meth:`Rtnl._send_raw` as before, reading reports between batches. ``on_held`` is called
    once the group's sockets are held, before the sends. With ``pacer``, the C loop and the batches sent
    from Python keep to the pacer's pace, counted from its creation."""
    held: list[tuple[_Conn | None, socket.socket, int]] = []
    step = _BATCH * size
    fds = np.empty(len(items), np.int32)
    try:
        for j, (i, (h, _lo, _hi)) in enumerate(items):
            c, sock = _hold(h)
            held.append((c, sock, i))
            fds[j] = sock.fileno()
        lo = np.ascontiguousarray(bounds[:-1])
        hi = np.ascontiguousarray(bounds[1:])
        big = np.flatnonzero(hi - lo > step)
        hi_c = hi.copy()
        hi_c[big] = lo[big]  # sent below, from Python
        readable = np.zeros(len(items), np.uint8)
        errs = np.zeros(len(items), np.int32)
        if on_held is not None:
            on_held()
        sent = ctypes.c_double(0.0 if pacer is None else pacer.bytes)
        r = send_many(len(items), fds.ctypes.data, raw.ctypes.data, lo.ctypes.data, hi_c.ctypes.data,
                      readable.ctypes.data, errs.ctypes.data, 0 if pacer is None else PACE_CHUNK * size,
                      0.0 if pacer is None else pacer.per_byte * 1e9, 0 if pacer is None else pacer.t0_ns,
                      ctypes.byref(sent))
        if pacer is not None:
            pacer.bytes = int(sent.value)
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"poll on rtnetlink sockets: {os.strerror(e)}")
        for j in np.flatnonzero(errs).tolist():
            raise OSError(int(errs[j]), f"send on rtnetlink socket: {os.strerror(int(errs[j]))}")
        for j in big.tolist():
            _c, sock, i = held[j]
            Rtnl._send_raw(sock, buf[int(lo[j]):int(hi[j])], size, ignore, failures, i, pacer)
        for j in np.flatnonzero(readable).tolist():
            _c, sock, i = held[j]
            Rtnl._reports(sock, ignore, failures, i)
    finally:
        _release(held)


class _Pacer:
    """Keeps one thread's sends to ``rate`` messages a second (of ``size`` bytes) from its creation: sleeps
    when more than 1 ms ahead (:data:`AHEAD_PACE`)."""

    def __init__(self, rate: float, size: int) -> None:
        self.per_byte = 1.0 / (rate * size)  # s
        self.t0_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, as the C sender's
        self.bytes = 0  # sent since, from Python and from C

    def sent(self, nbytes: int) -> None:
        self.bytes += nbytes
        ahead = self.t0_ns * 1e-9 + self.bytes * self.per_byte - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)


#: Namespaces sent to before one poll for error reports (their sockets are held open meanwhile).
_POLL_GROUP = 512


def _hold(h: Rtnl) -> tuple[_Conn | None, socket.socket]:
    """``h``'s socket, its connection locked and marked held (never closed by the pool until
    :func:`_release`); a handle with its own socket has no connection."""
    c = h._conn
    if c is None:
        return None, h._own_sock()
    c.lock.acquire()
    c.held = True
    try:
        return c, POOL.sock(c)
    except BaseException:
        c.held = False
        c.lock.release()
        raise


def _release(held: list[tuple[_Conn | None, socket.socket, int]]) -> None:
    for c, _sock, _i in held:
        if c is not None:
            c.held = False
            c.lock.release()


def _send_group(items: list[tuple[int, tuple[Rtnl, int, int]]], buf: memoryview, size: int,
                ignore: tuple[int, ...], failures: list[tuple[int, int, int]], pacer: _Pacer | None = None) -> None:
    """Send each handle its slice, then read error reports only from the sockets a single ``poll`` finds
    readable: a read per namespace that finds nothing (EAGAIN) cost 3.3 us of the ~15 us a namespace takes."""
    held: list[tuple[_Conn | None, socket.socket, int]] = []
    step = _BATCH * size
    try:
        for i, (h, lo, hi) in items:
            c, sock = _hold(h)
            held.append((c, sock, i))
            if hi - lo > step or pacer is not None:  # more than a batch: reports read between batches (the
                Rtnl._send_raw(sock, buf[lo:hi], size, ignore, failures, i, pacer)  # receive buffer is finite)
            else:
                sock.sendall(buf[lo:hi])
        poller = select.poll()
        by_fd = {}
        for _c, sock, i in held:
            poller.register(sock, select.POLLIN | select.POLLERR)
            by_fd[sock.fileno()] = (sock, i)
        for fd, _ev in poller.poll(0):
            sock, i = by_fd[fd]
            Rtnl._reports(sock, ignore, failures, i)
    finally:
        _release(held)


#: The process's namespace sockets: the emulator's and the shapers' handles on one namespace share one.
POOL = _Pool()


class Rtnl:
    """A raw NETLINK_ROUTE socket in a namespace (``path`` None: this process's own, always open).

    The socket of a namespace path is shared by every handle on it and lives in :data:`POOL`: it is
    opened when a request needs it and may be closed between requests to stay within the open-file
    budget (requests wait for each other on it, so two threads may use one namespace). A ``private``
    handle opens a socket of its own in the namespace instead (one descriptor for as long as the handle
    is open): its requests never wait for the pool's, e.g. for the routes a step sends while the shaper
    changes a rate in the same namespace.
    """

    def __init__(self, path: str | None = None, node: str | None = None, private: bool = False) -> None:
        self.node = node
        self._own: socket.socket | None = None
        self._conn: _Conn | None = None
        self._seq = 0
        if path is None:
            self._own = self._open()
        elif private:
            with entered(path, node):
                self._own = self._open()
        else:
            self._conn = POOL.acquire(path, node)

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, 0))
        return s

    def _own_sock(self) -> socket.socket:
        if self._own is None:
            raise ApplyError("rtnetlink socket is closed", node=self.node, operation="netlink")
        return self._own

    @property
    def seq(self) -> int:
        return self._conn.seq if self._conn is not None else self._seq

    @seq.setter
    def seq(self, value: int) -> None:
        if self._conn is not None:
            self._conn.seq = value
        else:
            self._seq = value

    def close(self) -> None:
        """Give up this handle (the namespace's socket closes with its last handle). Idempotent."""
        if self._conn is not None:
            POOL.release(self._conn)
            self._conn = None
        if self._own is not None:
            self._own.close()
            self._own = None

    def run(self, batch: Batch) -> list[tuple[Request, int]]:
        """Send every request of ``batch``; return the failures as (request, errno), in order."""
        c = self._conn
        if c is None:
            return self._run(self._own_sock(), batch)
        with c.lock:  # held while the socket is used: the pool closes only sockets nobody holds
            return self._run(POOL.sock(c), batch)

    def _run(self, sock: socket.socket, batch: Batch) -> list[tuple[Request, int]]:
        failures: list[tuple[Request, int]] = []
        reqs = batch.requests
        for i, mtype, data, off in self._exchange(sock, [(r.msg_type, r.flags, r.body) for r in reqs]):
            if mtype == NLMSG_ERROR:  # the ack (0) or the error of a request sent with NLM_F_ACK
                (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                if err < 0 and -err not in reqs[i].ignore:
                    failures.append((reqs[i], -err))
        return failures

    def _exchange(self, sock: socket.socket, items: Sequence[tuple[int, int, bytes]]
                  ) -> Iterator[tuple[int, int, bytes, int]]:
        """Send the requests ``items`` ((message type, flags, body) each) in sends of :data:`_BATCH` and yield
        the first answer to each: (its position in ``items``, its message type, the buffer it is in, its offset
        there). An acknowledged request's answer is its NLMSG_ERROR; a get's is the object or an error."""
        for start in range(0, len(items), _BATCH):
            pending: dict[int, int] = {}
            parts = []
            for i in range(start, min(start + _BATCH, len(items))):
                msg_type, flags, body = items[i]
                self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
                pending[self.seq] = i
                parts.append(_HDR.pack(_HDR.size + len(body), msg_type, flags, self.seq, 0) + body)
            sock.sendall(b"".join(parts))
            while pending:
                data = sock.recv(1 << 20)
                off = 0
                while off + _HDR.size <= len(data):
                    length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
                    if length < _HDR.size:
                        break
                    if seq in pending:
                        yield pending.pop(seq), mtype, data, off
                    off += (length + 3) & ~3

    def dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytes]]:
        """One NLM_F_DUMP request (e.g. RTM_GETLINK with an ifinfomsg): every answer as (type, payload
        after the netlink header), until NLMSG_DONE.

        Raises
        ------
        ApplyError
            The kernel answered the dump with an error.
        """
        c = self._conn
        if c is None:
            return self._dump(self._own_sock(), msg_type, body)
        with c.lock:
            return self._dump(POOL.sock(c), msg_type, body)

    def _dump(self, sock: socket.socket, msg_type: int, body: bytes) -> list[tuple[int, bytes]]:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        seq = self.seq
        sock.sendall(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[tuple[int, bytes]] = []
        while True:
            data = sock.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                        if err < 0:
                            raise ApplyError(f"dump failed: {os.strerror(-err)}", node=self.node,
                                             operation=f"netlink dump {msg_type}")
                    else:
                        out.append((mtype, data[off + _HDR.size:off + length]))
                off += (length + 3) & ~3

    def pending_links(self, ifindexes: Sequence[int]) -> list[int]:
        """The interfaces among ``ifindexes`` (of this namespace) whose carrier is on while the kernel has not
        yet applied it: flags ``IFF_LOWER_UP`` without ``IFF_RUNNING``. Until it does, the device sends through
        the noop qdisc, which drops every packet, ARP requests included (and a lost ARP request holds the
        packets behind it for the 1 s of its retransmission). The kernel applies carrier changes in its
        linkwatch work, which takes at most ~200 devices a pass and may leave the rest for a second
        (net/core/link_watch.c); one of the two ends of every veth pair brought up waits for it.

        Asking the kernel for an interface (RTM_GETLINK, not a dump) applies its pending change at once on
        kernels 6.8 and later (rtnl_getlink calls linkwatch_sync_dev), so on those this call also clears
        what it finds; on older ones the caller waits and asks again.

        Raises
        ------
        ApplyError
            An interface is not there (the kernel's error names it).
        """
        c = self._conn
        if c is None:
            return self._pending_links(self._own_sock(), ifindexes)
        with c.lock:
            return self._pending_links(POOL.sock(c), ifindexes)

    def _pending_links(self, sock: socket.socket, ifindexes: Sequence[int]) -> list[int]:
        pending: list[int] = []
        mask = _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        asks = [(RTM_GETLINK, NLM_F_REQUEST, _IFINFO.pack(0, 0, int(x), 0, 0) + mask) for x in ifindexes]
        for i, mtype, data, off in self._exchange(sock, asks):
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                raise ApplyError(f"interface {ifindexes[i]}: {os.strerror(-err)}", node=self.node,
                                 operation="link state")
            if mtype == RTM_NEWLINK:
                flags = _IFINFO.unpack_from(data, off + _HDR.size)[3]
                if flags & IFF_LOWER_UP and not flags & IFF_RUNNING:
                    pending.append(int(ifindexes[i]))
        return pending

    # ------------------------------------------------------------------------- packed messages
    @staticmethod
    def _drain(sock: socket.socket) -> list[tuple[int, int]]:
        """Error reports queued on the socket, as (seq, errno), read without waiting."""
        out: list[tuple[int, int]] = []
        while True:
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                out.append((-1, errno.ENOBUFS))
                continue
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                    if err < 0:
                        out.append((seq, -err))
                off += (length + 3) & ~3

    @classmethod
    def _send_raw(cls, sock: socket.socket, buf: memoryview, size: int, ignore: tuple[int, ...],
                  failures: list[tuple[int, int, int]], tag: int, pacer: _Pacer | None = None) -> None:
        step = (_BATCH if pacer is None else PACE_CHUNK) * size
        for off in range(0, len(buf), step):
            piece = buf[off:off + step]
            sock.sendall(piece)
            if pacer is not None:
                pacer.sent(len(piece))
            cls._reports(sock, ignore, failures, tag)

    @classmethod
    def _reports(cls, sock: socket.socket, ignore: tuple[int, ...], failures: list[tuple[int, int, int]],
                 tag: int) -> None:
        """Append the error reports queued on ``sock`` to ``failures`` as (message row, errno, ``tag``): the
        row is the sequence number - 1 (-1 when reports were lost), errnos in ``ignore`` left out."""
        for seq, err in cls._drain(sock):
            if seq < 0:
                failures.append((-1, err, tag))
            elif err not in ignore:
                failures.append((seq - 1, err, tag))

    def check(self, batch: Batch, operation: str) -> None:
        """Run ``batch`` and raise ApplyError naming the first failed request."""
        failures = self.run(batch)
        if failures:
            req, err = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            what = req.what() if callable(req.what) else req.what
            raise ApplyError(f"{what}: {os.strerror(err)} [{errno.errorcode.get(err, err)}]{more}",
                             node=self.node, operation=operation)


class PrivateSockets:
    """Rtnetlink sockets of one user's own, one per namespace path, the ``size`` most recently used kept open
    (the least recently used closed first). Private (:class:`Rtnl` ``private=True``): the shapers' tc work must
    not wait for the step's route sends, which hold the pool's socket of each namespace for tens of ms."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._open: OrderedDict[str, Rtnl] = OrderedDict()

    def get(self, path: str, node: str) -> Rtnl:
        rt = self._open.get(path)
        if rt is None:
            rt = self._open[path] = Rtnl(path, node, private=True)
            while len(self._open) > self.size:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(path)
        return rt

    def drop(self, path: str) -> None:
        """Close the socket of ``path`` if one is open (its namespace is going away)."""
        rt = self._open.pop(path, None)
        if rt is not None:
            rt.close()

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()
