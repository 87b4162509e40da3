"""The share of a clustered emulation that one host builds: which nodes are its own, and how its ends of
cross-host links reach the other hosts.

:class:`emulator.network.Emulation` given a :class:`HostPart` builds only the namespaces of the host's
nodes, the veth pairs whose two ends are on the host, and for each link whose ends are on two hosts the
host's end as a VXLAN device (:mod:`emulator.cluster.vxlan`) with the interface name, index and address
that end has on one host; it shapes the directions the host sends and installs the routes of its routers,
from the same route table every host computes on the whole timeline. Pure: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from topologies.errors import ConfigError

from .vxlan import VNI_MAX, VxlanEnd, ipv4


@dataclass(frozen=True, eq=False)
class HostPart:
    """One host's part of a clustered emulation.

    Attributes
    ----------
    host : int
        This host, 0 .. n_hosts - 1.
    host_of : np.ndarray
        (n_nodes,) int64, the host of each node of the timeline (:func:`emulator.cluster.placement.place`).
    underlay : tuple of str
        Each host's underlay IPv4 address (where its VXLAN ends send from and receive at).
    underlay_ifindex : int
        Index of this host's underlay interface in its own namespace (the VXLAN devices' lower device).
    underlay_ns : str or None
        Path of the namespace the underlay interface is in; None: this process's own.
    vni_base : int
        VNI of veth pair 0 of link slot 0; pair ``p`` of slot ``l`` gets ``vni_base + 2 l + p``
        (:meth:`vni`), the same on both hosts. Two runs sharing an underlay need disjoint ranges.
    underlay_ms : tuple of float or None
        The underlay's one-way delay from this host to each host, ms (:mod:`emulator.cluster.underlay`;
        this host's own entry is not used). A direction sent to another host is shaped with the link's
        delay less this, never below 0 (:meth:`sent_delay_ms`), so that with the underlay it adds up to the
        link's. None: nothing subtracted.
    """

    host: int
    host_of: np.ndarray
    underlay: tuple[str, ...]
    underlay_ifindex: int
    underlay_ns: str | None = None
    vni_base: int = 1
    underlay_ms: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        h = np.asarray(self.host_of)
        n_hosts = len(self.underlay)
        if h.ndim != 1 or not np.issubdtype(h.dtype, np.integer):
            raise ConfigError(f"host_of must be a 1-d integer array, got {h.dtype} of shape {h.shape}",
                              key="host_of")
        if len(h) and (h.min() < 0 or h.max() >= n_hosts):
            raise ConfigError(f"host_of names hosts outside 0..{n_hosts - 1}", key="host_of")
        if isinstance(self.host, bool) or not isinstance(self.host, (int, np.integer)) or not 0 <= self.host < n_hosts:
            raise ConfigError(f"host must be an integer in 0..{n_hosts - 1}, got {self.host!r}", key="host")
        for a in self.underlay:
            ipv4(a)
        if len(set(self.underlay)) != n_hosts:
            raise ConfigError(f"two hosts share one underlay address: {', '.join(self.underlay)}", key="underlay")
        if isinstance(self.underlay_ifindex, bool) or not isinstance(self.underlay_ifindex, int) \
                or self.underlay_ifindex < 1:
            raise ConfigError(f"underlay_ifindex must be an integer >= 1, got {self.underlay_ifindex!r}",
                              key="underlay_ifindex")
        if isinstance(self.vni_base, bool) or not isinstance(self.vni_base, int) or not 1 <= self.vni_base <= VNI_MAX:
            raise ConfigError(f"vni_base must be an integer in 1..{VNI_MAX}, got {self.vni_base!r}", key="vni_base")
        u = self.underlay_ms
        if u is not None and (len(u) != n_hosts or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1e6 for x in u)):
            raise ConfigError(f"underlay_ms must be {n_hosts} finite numbers >= 0 ms, got {u!r}", key="underlay_ms")
        object.__setattr__(self, "host_of", h.astype(np.int64))

    def sent_delay_ms(self, delay_ms: float, receiver: int) -> float:
        """The delay to shape on this host for a direction of a link with ``delay_ms`` received by node
        ``receiver``: less the underlay's one-way delay when the receiver is on another host (not below 0)."""
        h = int(self.host_of[receiver])
        if self.underlay_ms is None or h == self.host:
            return delay_ms
        return max(delay_ms - float(self.underlay_ms[h]), 0.0)

    @property
    def local(self) -> np.ndarray:
        """(n_nodes,) bool: the nodes this host builds."""
        return np.asarray(self.host_of == self.host)

    def vni(self, link: int, pair: int) -> int:
        """VNI of veth pair ``pair`` (0 first, 1 spare) of link slot ``link``.

        Raises
        ------
        ConfigError
            Past the 24 bits of a VNI (more than ~8 million link slots above ``vni_base``).
        """
        v = self.vni_base + 2 * int(link) + int(pair)
        if v > VNI_MAX:
            raise ConfigError(f"link slot {link} needs VNI {v}, above {VNI_MAX}: lower vni_base", key="vni_base")
        return v

    def end(self, link: int, pair: int, ifname: str, ifindex: int, other_node: int) -> VxlanEnd:
        """This host's VXLAN end of veth pair ``pair`` of ``link``, named and numbered as the veth end it
        replaces, towards the host of ``other_node``."""
        return VxlanEnd(ifname, int(ifindex), self.vni(link, pair), self.underlay[self.host],
                        self.underlay[int(self.host_of[other_node])], self.underlay_ifindex)
