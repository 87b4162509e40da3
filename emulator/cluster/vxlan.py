"""Cross-host links: one VXLAN device per link end, with the link's own VNI, over the host's underlay.

A link slot whose two ends run on different hosts (:mod:`emulator.cluster.placement`) cannot be a veth.
Each host makes its end instead: a VXLAN device in the node's namespace whose UDP socket and lower device
are in the host's namespace, sending to the other host's underlay address with the slot's VNI. Inside the
node it is an Ethernet interface like a veth end (address, shaping, routes as on one host); the underlay
carries each frame in 50 bytes of outer Ethernet, IPv4, UDP and VXLAN header, so an underlay MTU of 1550
keeps the emulated links' MTU at 1500 on one host and on many.

How the device reaches the node's namespace: one RTM_NEWLINK sent on the *host's* namespace socket, with
IFLA_NET_NS_FD naming the node's namespace (as the emulator creates veths, :func:`emulator.rtnl.veth_body`).
The kernel then creates the device in the node's namespace while its ``link net`` (where the lower
device is looked up and where the UDP socket is opened) is the namespace the request came from
(``rtnl_newlink`` hands the source namespace to ``vxlan_newlink``; cross-namespace VXLAN since Linux 3.16).
The two other ways work on this kernel too (tests/integration/test_cluster_lab.py checks all three): create
it in the host's namespace and move it (a second request, and a move costs 15-20 ms under the rtnl lock,
see :mod:`emulator.network`), or send from the node's namespace with IFLA_LINK_NETNSID (needs an id for
the host's namespace assigned inside every node's namespace first). One request, no move, no ids: the first.

Messages are laid out per <linux/if_link.h> and sent in batches through :mod:`emulator.rtnl`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from topologies.errors import ApplyError, ConfigError

from .. import rtnl

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_LINK_NETNSID = 37
RTM_NEWNSID = 88
NETNSA_NSID = 1
NETNSA_FD = 3
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_VXLAN_ID = 1
IFLA_VXLAN_GROUP = 2  # the remote's address for a unicast (point-to-point) tunnel
IFLA_VXLAN_LINK = 3
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_TTL = 5
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PORT = 15  # destination UDP port, network byte order
#: IANA's VXLAN port; the underlay between hosts must let UDP to it through.
VXLAN_PORT = 4789
#: Outer Ethernet (14), IPv4 (20), UDP (8) and VXLAN (8) headers around each inner frame, bytes.
OVERHEAD_BYTES = 50
#: VNIs are 24 bits; 0 is left out so that an unset field never matches a link.
VNI_MAX = (1 << 24) - 1
#: MTU of an emulated link, bytes (as a veth's).
LINK_MTU = 1500

_IFINFO = struct.Struct("=BxHiII")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ifname(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


def ipv4(text: str) -> int:
    """A dotted IPv4 address as an int (host order), ConfigError if it is not one."""
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv4 address", key="underlay address") from None


@dataclass(frozen=True)
class VxlanEnd:
    """One end of a cross-host link.

    Attributes
    ----------
    ifname : str
        Interface name in the node's namespace (at most 15 characters).
    ifindex : int
        Interface index in the node's namespace (the emulator fixes its link ends' indices).
    vni : int
        The link's VXLAN network identifier, 1 .. 2**24 - 1, the same at both ends.
    local : str
        This host's underlay IPv4 address.
    remote : str
        The other end's host's underlay IPv4 address.
    underlay_ifindex : int
        The underlay interface's index in the host's namespace (the lower device).
    mtu : int
        MTU of the device, bytes; the underlay's must be at least ``mtu + OVERHEAD_BYTES``.
    """

    ifname: str
    ifindex: int
    vni: int
    local: str
    remote: str
    underlay_ifindex: int
    mtu: int = LINK_MTU

    def __post_init__(self) -> None:
        if not 0 < len(self.ifname.encode()) <= 15 or "/" in self.ifname or self.ifname.strip() != self.ifname:
            raise ConfigError(f"VXLAN interface name {self.ifname!r} must be 1-15 bytes without / or spaces",
                              key="ifname")
        for name in ("ifindex", "vni", "underlay_ifindex", "mtu"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"VxlanEnd.{name} must be an integer, got {v!r}", key=name)
        if not 1 <= self.vni <= VNI_MAX:
            raise ConfigError(f"VNI {self.vni} is outside 1..{VNI_MAX}", key="vni")
        if self.ifindex < 1 or self.underlay_ifindex < 1:
            raise ConfigError("interface indices must be >= 1", key="ifindex")
        if not 68 <= self.mtu <= 65535 - OVERHEAD_BYTES:
            raise ConfigError(f"MTU {self.mtu} is outside 68..{65535 - OVERHEAD_BYTES}", key="mtu")
        if ipv4(self.local) == ipv4(self.remote):
            raise ConfigError(f"a cross-host link's two hosts have one address {self.local}", key="remote")


def vxlan_body(end: VxlanEnd, ns_fd: int | None, link_netnsid: int | None = None) -> bytes:
    """RTM_NEWLINK payload creating ``end``'s device (down), in the namespace open at ``ns_fd`` (None: the
    socket's own), its lower device and UDP socket in the namespace of the socket the request is sent on,
    or, with ``link_netnsid``, in the namespace that id names in the socket's namespace (:func:`nsid_body`).

    Unicast to ``end.remote`` (the default forwarding entry), no learning (a point-to-point link has one
    peer), TTL 64 rather than the kernel's default 1-hop-then-inherit (the underlay may be routed).
    """
    data = (_u32(IFLA_VXLAN_ID, end.vni)
            + _attr(IFLA_VXLAN_GROUP, struct.pack("!I", ipv4(end.remote)))
            + _attr(IFLA_VXLAN_LOCAL, struct.pack("!I", ipv4(end.local)))
            + _u32(IFLA_VXLAN_LINK, end.underlay_ifindex)
            + _attr(IFLA_VXLAN_TTL, bytes([64]))
            + _attr(IFLA_VXLAN_LEARNING, bytes([0]))
            + _attr(IFLA_VXLAN_PORT, struct.pack("!H", VXLAN_PORT)))
    info = _attr(IFLA_INFO_KIND, b"vxlan\0") + _attr(IFLA_INFO_DATA, data)
    own = _u32(IFLA_NET_NS_FD, ns_fd) if ns_fd is not None else b""
    if link_netnsid is not None:
        own += _attr(IFLA_LINK_NETNSID, struct.pack("=i", link_netnsid))
    return (_IFINFO.pack(socket.AF_UNSPEC, 0, end.ifindex, 0, 0) + _ifname(end.ifname) + _u32(IFLA_MTU, end.mtu)
            + own + _attr(IFLA_LINKINFO, info))


def nsid_body(ns_fd: int, nsid: int) -> bytes:
    """RTM_NEWNSID payload: in the socket's namespace, give the namespace open at ``ns_fd`` the id ``nsid``
    (struct rtgenmsg, NETNSA_FD, NETNSA_NSID; <linux/net_namespace.h>)."""
    return struct.pack("=Bxxx", socket.AF_UNSPEC) + _u32(NETNSA_FD, ns_fd) + _attr(NETNSA_NSID, struct.pack("=i", nsid))


def bridge_body(ifname: str, ifindex: int, mtu: int) -> bytes:
    """RTM_NEWLINK payload creating a bridge (down) in the socket's namespace."""
    return (_IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + _ifname(ifname) + _u32(IFLA_MTU, mtu)
            + _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"bridge\0")))


def link_mtu_body(ifindex: int, mtu: int, master: int | None = None) -> bytes:
    """RTM_NEWLINK payload setting an interface's MTU and, optionally, its master (a bridge)."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + _u32(IFLA_MTU, mtu)
    return body + (_u32(IFLA_MASTER, master) if master is not None else b"")


def add_ends(host: rtnl.Rtnl, ends: list[tuple[VxlanEnd, str]], up: bool = True) -> None:
    """Create VXLAN devices over one host's underlay, each directly in its node's namespace, and bring them
    up there.

    Parameters
    ----------
    host : emulator.rtnl.Rtnl
        A socket in the host's namespace (where the underlay interface is).
    ends : list of (VxlanEnd, str)
        Each end with the path of its node's namespace.
    up : bool
        Bring the devices up (after the addresses the caller may add, set them up later with False).

    Raises
    ------
    ApplyError
        A request failed: names the interface and the operation.
    """
    fds: list[int] = []
    try:
        batch = rtnl.Batch()
        for end, path in ends:
            fd = _open_ns(path)
            fds.append(fd)
            batch.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, vxlan_body(end, fd),
                      f"vxlan {end.ifname} vni {end.vni} to {end.remote}")
        host.check(batch, "create cross-host links")
    finally:
        for fd in fds:
            os.close(fd)
    if up:
        by_ns: dict[str, rtnl.Batch] = {}
        for end, path in ends:
            by_ns.setdefault(path, rtnl.Batch()).add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(end.ifindex, True),
                                                     f"{end.ifname} up")
        for path, b in by_ns.items():
            r = rtnl.Rtnl(path)
            try:
                r.check(b, "cross-host links up")
            finally:
                r.close()


def _open_ns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ApplyError(f"cannot open network namespace {path}: {e.strerror}", operation="vxlan") from None
