"""The shaping contract (one link direction = one port) and the one place where units become kernel units.

Every backend shapes what a sending interface sends (the rate always on its egress; the userspace
backend holds packets at the receiving end when the port names its ``peer``). The emulator hands a backend many
``(Port, LinkShape)`` pairs at once; the backend adds shaping the first time it sees a port and changes it
in place afterwards (never delete + add on a live link).

Kernel-unit conversion lives only in :func:`htb_class_kwargs` and :func:`netem_kwargs`: they turn
``_ms``/``_mbps``/``_pct`` values into the arguments pyroute2 0.7.12's tc encoders expect (bytes per
second for htb rates, microseconds for netem delay -- pyroute2 turns them into psched ticks --, and a
percentage for netem loss -- pyroute2 turns it into a u32 fraction).
"""

from __future__ import annotations

import errno
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from topologies.errors import ConfigError

# htb's tc_ratespec.rate is a u32 in bytes per second; pyroute2 0.7.12 does not send TCA_HTB_RATE64,
# so faster rates cannot be expressed.
MAX_RATE_MBPS = (2**32 - 1) * 8 / 1e6
# Ethernet MTU plus header: the packet size used to turn a bandwidth-delay product into packets.
_PACKET_BYTES = 1514
ROOT_HANDLE = 0x10000  # htb root qdisc "1:"
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
        Rate limit, Mbit/s, > 0 and <= ``MAX_RATE_MBPS``.
    loss_pct : float
        Random loss probability, percent, in [0, 100].
    """

    delay_ms: float
    rate_mbps: float
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "rate_mbps", "loss_pct"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"LinkShape.{name} must be a finite number, got {value!r}", key=name)
        if self.delay_ms < 0:
            raise ConfigError(f"LinkShape.delay_ms must be >= 0 ms, got {self.delay_ms}", key="delay_ms")
        if not 0 < self.rate_mbps <= MAX_RATE_MBPS:
            raise ConfigError(f"LinkShape.rate_mbps must be in (0, {MAX_RATE_MBPS:.0f}] Mbit/s, "
                              f"got {self.rate_mbps}", key="rate_mbps")
        if not 0 <= self.loss_pct <= 100:
            raise ConfigError(f"LinkShape.loss_pct must be in [0, 100] %, got {self.loss_pct}", key="loss_pct")


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
    """

    node: str
    ns_path: str
    ifname: str
    ifindex: int
    peer: Port | None = None

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


def rate_bytes_per_s(rate_mbps: float) -> int:
    """Mbit/s -> bytes per second, as htb's u32 ``rate`` field wants it."""
    return max(1, round(rate_mbps * 1e6 / 8))


def htb_class_kwargs(shape: LinkShape, mtu_bytes: int = 1500) -> dict[str, Any]:
    """Arguments for ``ipr.tc("add-class"/"change-class", "htb", ifindex, CLASS_HANDLE, **kwargs)``.

    The burst is 1 ms worth of the rate but at least ten full-size packets, so that both slow links
    (a burst much longer than a packet time would let short bursts pass at line rate) and fast ones
    (a 1600 B burst, pyroute2's default on this clock, cannot keep up with timer granularity) behave.
    """
    rate = rate_bytes_per_s(shape.rate_mbps)
    burst = max(rate // 1000, 10 * (mtu_bytes + 14))
    return {
        "parent": ROOT_HANDLE,
        "rate": rate,  # bytes/s (an int is taken as is by pyroute2's get_rate)
        "ceil": rate,
        "burst": burst,  # bytes; pyroute2 converts to ticks with calc_xmittime
        "cburst": burst,
        # quantum: bytes a class may send per round; the kernel warns above 200000 if it derives it.
        "quantum": int(min(max(rate // 10, mtu_bytes + 14), 200_000)),
        "mtu": mtu_bytes + 100,
    }


def netem_limit_packets(shape: LinkShape) -> int:
    """netem queue limit, packets: twice the bandwidth-delay product in full-size packets, >= 1000."""
    bdp_bytes = rate_bytes_per_s(shape.rate_mbps) * shape.delay_ms / 1e3
    return int(max(1000, math.ceil(2 * bdp_bytes / _PACKET_BYTES)))


def netem_kwargs(shape: LinkShape) -> dict[str, Any]:
    """Arguments for ``ipr.tc("add"/"change", "netem", ifindex, LEAF_HANDLE, **kwargs)``.

    pyroute2 0.7.12 takes ``delay`` in microseconds (and converts with the kernel's psched tick rate
    read from /proc/net/psched) and ``loss`` in percent (converted to a u32 fraction, 100 % -> 2**32-1).
    """
    return {
        "parent": CLASS_HANDLE,
        "delay": round(shape.delay_ms * 1000),  # us
        "loss": float(shape.loss_pct),  # percent
        "limit": netem_limit_packets(shape),  # packets
    }


def apply_htb(ipr: Any, ifindex: int, shape: LinkShape, first: bool) -> None:
    """Put the rate of ``shape`` on ``ifindex``'s egress: htb root 1: with class 1:1 (default class).

    ``first`` adds (``replace``: creates if absent, changes in place if a same-kind root is there);
    otherwise the class is changed in place.
    """
    if first:
        # sch_htb has no "change" operation, so "replace" on a live htb root fails (EINVAL). A root left
        # by an earlier run (EEXIST) is kept and its class replaced in place below.
        try:
            ipr.tc("add", "htb", ifindex, ROOT_HANDLE, default=CLASS_HANDLE & 0xFFFF)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.tc("replace-class", "htb", ifindex, CLASS_HANDLE, **htb_class_kwargs(shape))
    else:
        ipr.tc("change-class", "htb", ifindex, CLASS_HANDLE, **htb_class_kwargs(shape))
