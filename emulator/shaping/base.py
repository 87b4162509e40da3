"""The shaping contract (one link direction = one port) and the one place where units become kernel units.

Every backend shapes what a sending interface sends (the rate always on its egress; the userspace
backend holds packets at the receiving end when the port names its ``peer``). The emulator hands a backend many
``(Port, LinkShape)`` pairs at once; the backend adds shaping the first time it sees a port and changes it
in place afterwards (never delete + add on a live link).

Kernel-unit conversion lives only here. The userspace backend's rate: :func:`token_bucket` turns
``_mbps`` into bytes per second, a burst and a queue, and :func:`tbf_qdisc_body` builds the rtnetlink
payload (``struct tcmsg`` and its attributes, laid out as in <linux/pkt_sched.h>) sent in batches through
:mod:`emulator.rtnl`, with 64-bit rates (TCA_TBF_RATE64). The netem backend's htb root and class
(:func:`htb_qdisc_body`, :func:`htb_class_body`: the same token bucket, 64-bit rates in TCA_HTB_RATE64) and
its netem qdisc (:func:`netem_qdisc_body`) are built here the same way.
"""

from __future__ import annotations

import math
import socket
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from topologies.errors import ConfigError
from topologies.limits import LINK_RATE_MIN_MBPS, USERSPACE_MAX_RATE_MBPS

#: Highest link rate, Mbit/s (1 Tbit/s). tc_ratespec.rate is a u32 in bytes per second (34.36 Gbit/s at
#: most); the userspace backend sends faster rates in TCA_TBF_RATE64 (u64 bytes per second), so the bound
#: is only a sanity check on scenario values, and so does the netem backend's htb class (TCA_HTB_RATE64);
#: it comes from topologies.limits, which the scenario loader checks against too.
MAX_RATE_MBPS = USERSPACE_MAX_RATE_MBPS
U32_MAX = 2**32 - 1
# Ethernet MTU plus header: the packet size used to turn a bandwidth-delay product into packets.
_PACKET_BYTES = 1514
ROOT_HANDLE = 0x10000  # root qdisc "1:" (tbf, or htb for the netem backend)
CLASS_HANDLE = 0x10001  # its one class "1:1", which carries the link rate
LEAF_HANDLE = 0x100000  # leaf qdisc "10:" under 1:1 (netem in the netem backend)


@dataclass(frozen=True)
class LinkShape:
    """Shaping of one direction of one link.

    Attributes
    ----------
    delay_ms : float
        One-way delay added on this egress, ms, >= 0.
    rate_mbps : float
        Rate limit, Mbit/s, in [``LINK_RATE_MIN_MBPS``, ``MAX_RATE_MBPS``].
    loss_pct : float
        Random loss probability, percent, in [0, 100].
    queue_packets : int or None
        Full-size packets queued waiting for the rate, in [2, 100000]; more are dropped. None: the
        backend's default (:data:`QUEUE_PACKETS` for the tbf; netem's limit from the bandwidth-delay product).
    """

    delay_ms: float
    rate_mbps: float
    loss_pct: float = 0.0
    queue_packets: int | None = None

    def __post_init__(self) -> None:
        for name in ("delay_ms", "rate_mbps", "loss_pct"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"LinkShape.{name} must be a finite number, got {value!r}", key=name)
        if self.delay_ms < 0:
            raise ConfigError(f"LinkShape.delay_ms must be >= 0 ms, got {self.delay_ms}", key="delay_ms")
        if not LINK_RATE_MIN_MBPS <= self.rate_mbps <= MAX_RATE_MBPS:
            raise ConfigError(f"LinkShape.rate_mbps must be in [{LINK_RATE_MIN_MBPS:g}, {MAX_RATE_MBPS:.0f}] Mbit/s, "
                              f"got {self.rate_mbps}", key="rate_mbps")
        if not 0 <= self.loss_pct <= 100:
            raise ConfigError(f"LinkShape.loss_pct must be in [0, 100] %, got {self.loss_pct}", key="loss_pct")
        q = self.queue_packets
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 2 <= q <= 100_000):
            raise ConfigError(f"LinkShape.queue_packets must be an integer in [2, 100000], got {q!r}",
                              key="queue_packets")


@dataclass(frozen=True)
class Port:
    """One interface in one network namespace: the sending end of one link direction.

    Attributes
    ----------
    node, ns_path, ifname, ifindex
        The node's name, its network namespace (``/proc/PID/ns/net`` or a bind mount), the interface's
        name and index in that namespace.
    peer : Port or None
        The other end of the veth, which receives what this port sends. Backends that delay in user
        space hold this port's packets as they arrive at ``peer`` (after crossing the veth the packet
        no longer belongs to the sending socket, so TCP is not throttled by TCP Small Queues); the rate
        stays on this port's egress. ``None``: everything happens on this port's egress. The netem
        backend shapes the egress in any case.
    egress_group : bool
        With ``peer`` None: the interface is in :data:`emulator.shaping.nfnl.HOLD_EGRESS_GROUP` (and its
        peer in ``PASS_INGRESS_GROUP``), so the userspace shaper's catch-all rules of a namespace prepared
        with ``all_ports_held`` queue what leaves it with no rule of its own.
    """

    node: str
    ns_path: str
    ifname: str
    ifindex: int
    peer: Port | None = None
    egress_group: bool = False

    def __post_init__(self) -> None:
        if not self.ns_path:
            raise ConfigError(f"Port {self.node}/{self.ifname}: empty ns_path", key="ns_path")
        if isinstance(self.ifindex, bool) or not isinstance(self.ifindex, int) or self.ifindex < 1:
            raise ConfigError(f"Port {self.node}/{self.ifname}: ifindex must be an int >= 1, "
                              f"got {self.ifindex!r}", key="ifindex")
        if self.peer is not None:
            if not isinstance(self.peer, Port):
                raise ConfigError(f"Port {self.node}/{self.ifname}: peer must be a Port or None, "
                                  f"got {self.peer!r}", key="peer")
            if self.peer.key == self.key:
                raise ConfigError(f"Port {self.node}/{self.ifname}: peer is the port itself", key="peer")
            if self.egress_group:
                raise ConfigError(f"Port {self.node}/{self.ifname}: held at its peer, so not by its egress group",
                                  key="egress_group")

    @property
    def key(self) -> tuple[str, int]:
        """Identity of the port inside the kernel: (namespace path, ifindex)."""
        return (self.ns_path, self.ifindex)


class Shaper(ABC):
    """A link-shaping backend. See the module docstring of :mod:`emulator.shaping` for the contract."""

    name: str = ""

    @abstractmethod
    def prepare_node(self, node: str, ns_path: str, ipr: Any) -> None:
        """Prepare one namespace, once, before any of its ports is shaped."""

    def prepare_nodes(self, nodes: Sequence[tuple[str, str]], ipr_of: Callable[[str], Any],
                      all_ports_held: bool = False) -> None:
        """Prepare many namespaces, ``[(node, ns_path), ...]`` (default: :meth:`prepare_node` on each);
        backends that can do it in one go override this. ``all_ports_held`` promises that every
        interface of these namespaces but ``lo`` will be the ``peer`` of a shaped port."""
        for node, ns_path in nodes:
            self.prepare_node(node, ns_path, ipr_of(node))

    @abstractmethod
    def set(self, items: Sequence[tuple[Port, LinkShape]], ipr_of: Callable[[str], Any]) -> None:
        """Add or change (in place) the shaping of many ports; ``ipr_of(node)`` gives that node's IPRoute."""

    @abstractmethod
    def forget(self, port: Port) -> None:
        """The interface is gone or moved to another namespace: the next ``set`` on it adds again."""

    def release_node(self, node: str, ns_path: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """The namespace is being torn down: drop whatever the backend holds in it (default: nothing)."""

    def stats(self, reset_late_max: bool = False) -> dict[str, Any]:
        """The backend's own counters (default: none; the kernel's qdiscs keep theirs)."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Stop processes and remove what the backend created; idempotent."""


# --------------------------------------------------------------------------- kernel units (the one place)

#: psched ticks are 64 ns (PSCHED_SHIFT 6, include/net/pkt_sched.h): netem's u32 latency is counted in them.
PSCHED_TICK_NS = 64
#: The token bucket lets a link send this long a burst at line rate: the kernel's qdisc watchdog wakes it
#: with timer slack and softirq latency of this order, and a burst shorter than a wake-up interval caps the
#: rate.
BURST_NS = 1_000_000
#: ...but at least this many full-size packets, so that slow links keep up too (and a packet never exceeds it).
BURST_PACKETS = 10
#: Queue of a rate-limited port, full-size packets: the 1,000 packets of a veth's transmit queue
#: (txqueuelen), what an htb leaf or pfifo_fast would hold; tbf counts it in bytes.
QUEUE_PACKETS = 1000
#: netem queue limit: this many times the bandwidth-delay product, never below NETEM_LIMIT_FLOOR packets.
NETEM_LIMIT_BDP_FACTOR = 2
NETEM_LIMIT_FLOOR = 1000

TCA_KIND = 1
TCA_OPTIONS = 2
TCA_TBF_PARMS = 1
TCA_TBF_RATE64 = 4
TCA_TBF_BURST = 6
TC_H_ROOT = 0xFFFFFFFF
TC_LINKLAYER_ETHERNET = 1
_TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg: family, ifindex, handle, parent, info
_RATESPEC = struct.Struct("=BBHhHI")  # struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate
_TBF_TAIL = struct.Struct("=III")  # struct tc_tbf_qopt after its two ratespecs: limit, buffer, mtu


def rate_bytes_per_s(rate_mbps: float) -> int:
    """Mbit/s -> bytes per second, the unit of the kernel's rates."""
    return max(1, round(rate_mbps * 1e6 / 8))


@dataclass(frozen=True)
class TokenBucket:
    """One link rate as a token bucket, in the kernel's units.

    Attributes
    ----------
    rate_bytes_s : int
        Rate, bytes per second (u64; over ``U32_MAX`` it travels in TCA_TBF_RATE64).
    burst_bytes : int
        Bytes the link may send at line rate after an idle spell (the bucket's depth).
    limit_bytes : int
        Bytes queued waiting for tokens; more are dropped.
    """

    rate_bytes_s: int
    burst_bytes: int
    limit_bytes: int


def token_bucket(shape: LinkShape, mtu_bytes: int = 1500) -> TokenBucket:
    """The token bucket of ``shape``'s rate.

    The burst is :data:`BURST_NS` worth of the rate but at least :data:`BURST_PACKETS` full-size frames, so
    that both slow links (a burst much longer than a packet time would let short bursts pass at line rate)
    and fast ones (a burst shorter than a timer wake-up caps the rate) behave.
    """
    rate = rate_bytes_per_s(shape.rate_mbps)
    frame = mtu_bytes + 14
    burst = min(max(math.ceil(rate * BURST_NS / 1e9), BURST_PACKETS * frame), U32_MAX)
    queue = QUEUE_PACKETS if shape.queue_packets is None else shape.queue_packets
    return TokenBucket(rate, burst, queue * frame)


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _kind(name: str) -> bytes:
    return _nla(TCA_KIND, name.encode() + b"\0")


def tbf_qdisc_body(ifindex: int, shape: LinkShape, handle: int = ROOT_HANDLE) -> bytes:
    """RTM_NEWQDISC payload: root tbf qdisc ``handle`` at ``shape``'s rate (:func:`token_bucket`).

    tbf rather than htb: a tbf qdisc has no filter block. Every htb qdisc and class gets one, and binding a
    block searches a list of all blocks in the kernel (``flow_indr_dev_setup_offload``), so setting up
    htb on 36,000 ports costs time quadratic in their number (measured here: 0.17 ms per port among 300
    namespaces, 0.57 ms among 3,000; tbf: 0.07 ms at both).

    The rate spec says link layer "ethernet", so the kernel computes transmission times itself and wants no
    rate table; the burst goes in bytes (TCA_TBF_BURST), the kernel turns it into time at the rate. A rate
    above ``U32_MAX`` bytes/s (34.36 Gbit/s) puts ``U32_MAX`` in the u32 field and the real rate in
    TCA_TBF_RATE64, as tc does. Sent with NLM_F_CREATE | NLM_F_REPLACE it creates the qdisc or changes it
    in place (queued packets stay).
    """
    b = token_bucket(shape)
    spec = _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, -1, 0, min(b.rate_bytes_s, U32_MAX))
    no_peak = _RATESPEC.pack(0, 0, 0, 0, 0, 0)
    buffer_ticks = min(math.ceil(b.burst_bytes * 1e9 / b.rate_bytes_s / PSCHED_TICK_NS), U32_MAX)
    opts = (_nla(TCA_TBF_PARMS, spec + no_peak + _TBF_TAIL.pack(b.limit_bytes, buffer_ticks, 0))
            + _nla(TCA_TBF_BURST, struct.pack("=I", b.burst_bytes)))
    if b.rate_bytes_s > U32_MAX:
        opts += _nla(TCA_TBF_RATE64, struct.pack("=Q", b.rate_bytes_s))
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, TC_H_ROOT, 0) + _kind("tbf") + _nla(TCA_OPTIONS, opts)


def netem_limit_packets(shape: LinkShape) -> int:
    """netem queue limit, packets: :data:`NETEM_LIMIT_BDP_FACTOR` times the bandwidth-delay product in
    full-size packets, at least :data:`NETEM_LIMIT_FLOOR`; with ``shape.queue_packets``, that twice the
    bandwidth-delay product plus the queue asked for (netem's limit counts the packets in flight too).

    netem sits under the htb class, so what it holds arrives at most at the link rate and stays the delay:
    one bandwidth-delay product; the factor covers packets smaller than full size.
    """
    bdp_bytes = rate_bytes_per_s(shape.rate_mbps) * shape.delay_ms / 1e3
    if shape.queue_packets is not None:
        return int(min(math.ceil(NETEM_LIMIT_BDP_FACTOR * bdp_bytes / _PACKET_BYTES) + shape.queue_packets, U32_MAX))
    return int(min(max(NETEM_LIMIT_FLOOR, math.ceil(NETEM_LIMIT_BDP_FACTOR * bdp_bytes / _PACKET_BYTES)),
                   U32_MAX))


# The netem backend: htb for the rate (root 1:, class 1:1) with netem as its leaf (10:), as raw rtnetlink
# bodies so that a step's changes go in one batch per namespace.
TCA_HTB_PARMS = 1
TCA_HTB_INIT = 2
TCA_HTB_RATE64 = 6
TCA_HTB_CEIL64 = 7
TCA_NETEM_LATENCY64 = 10
_HTB_GLOB = struct.Struct("=IIIII")  # struct tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts
_HTB_TAIL = struct.Struct("=IIIII")  # struct tc_htb_opt after its two ratespecs: buffer, cbuffer, quantum, level, prio
_NETEM_QOPT = struct.Struct("=IIIIII")  # struct tc_netem_qopt: latency (ticks), limit, loss, gap, duplicate, jitter


def htb_qdisc_body(ifindex: int) -> bytes:
    """RTM_NEWQDISC payload: root htb qdisc ``1:`` whose unclassified traffic goes to class ``1:1``."""
    glob = _HTB_GLOB.pack(3, 10, CLASS_HANDLE & 0xFFFF, 0, 0)
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, ROOT_HANDLE, TC_H_ROOT, 0) + _kind("htb") + _nla(
        TCA_OPTIONS, _nla(TCA_HTB_INIT, glob))


def htb_class_body(ifindex: int, shape: LinkShape) -> bytes:
    """RTM_NEWTCLASS payload: htb class ``1:1`` at ``shape``'s rate, as the same token bucket as the
    userspace backend's tbf (:func:`token_bucket`: rate, burst). Link layer "ethernet" (no rate table); a rate
    above ``U32_MAX`` bytes/s travels in TCA_HTB_RATE64/CEIL64, as tc sends it."""
    b = token_bucket(shape)
    spec = _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, -1, 0, min(b.rate_bytes_s, U32_MAX))
    buffer_ticks = min(math.ceil(b.burst_bytes * 1e9 / b.rate_bytes_s / PSCHED_TICK_NS), U32_MAX)
    quantum = int(min(max(b.rate_bytes_s // 10, 1514), 200_000))  # the kernel warns above 200000 if it derives it
    opts = _nla(TCA_HTB_PARMS, spec + spec + _HTB_TAIL.pack(buffer_ticks, buffer_ticks, quantum, 0, 0))
    if b.rate_bytes_s > U32_MAX:
        opts += _nla(TCA_HTB_RATE64, struct.pack("=Q", b.rate_bytes_s)) + _nla(
            TCA_HTB_CEIL64, struct.pack("=Q", b.rate_bytes_s))
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLASS_HANDLE, ROOT_HANDLE, 0) + _kind("htb") + _nla(
        TCA_OPTIONS, opts)


def netem_qdisc_body(ifindex: int, shape: LinkShape) -> bytes:
    """RTM_NEWQDISC payload: netem qdisc ``10:`` under class ``1:1``: ``shape``'s delay (exact, in
    TCA_NETEM_LATENCY64 ns; the u32 field in psched ticks for old kernels), loss (u32 fraction, 100 % ->
    2**32-1) and queue limit (:func:`netem_limit_packets`). netem's options are its struct followed by
    attributes, in one TCA_OPTIONS."""
    latency_ns = round(shape.delay_ms * 1e6)
    qopt = _NETEM_QOPT.pack(min(latency_ns // PSCHED_TICK_NS, U32_MAX), netem_limit_packets(shape),
                            min(round(shape.loss_pct / 100.0 * U32_MAX), U32_MAX), 0, 0, 0)
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, LEAF_HANDLE, CLASS_HANDLE, 0) + _kind("netem") + _nla(
        TCA_OPTIONS, qopt + _nla(TCA_NETEM_LATENCY64, struct.pack("=q", latency_ns)))
