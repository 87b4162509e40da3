"""The routing-protocol interface, the route table it produces, and the registry of protocols.

A protocol computes, for one step of a timeline, the next hop of every router towards every
destination. Protocols register under a name (:func:`register`) or through the entry-point group
``satnetem.routing``; :func:`get_protocol` finds them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import Snapshot, Timeline

ENTRY_POINT_GROUP = "satnetem.routing"
#: Up to this many routers, every router's loopback is a destination (so every satellite answers
#: ping); above it only gateways, hosts and compute nodes are, to keep tables small.
ALL_LOOPBACKS_MAX_ROUTERS = 200


@dataclass(frozen=True)
class RouteTable:
    """Next hops of every node towards each destination at one step.

    ``destinations`` has shape (n_dest,); ``next_hop``, ``link`` (int32, -1 = none) and ``dist``
    (float64, path weight, ``inf`` = unreachable) have shape (n_dest, n_nodes).
    """

    step: int
    destinations: np.ndarray
    next_hop: np.ndarray
    link: np.ndarray
    dist: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.destinations), self.next_hop.shape[1] if self.next_hop.ndim == 2 else 0)
        for name in ("next_hop", "link", "dist"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"RouteTable.{name} has shape {getattr(self, name).shape}, expected {shape}")

    def routes_of(self, router: int) -> dict[int, tuple[int, int]]:
        """{destination node index: (next-hop node index, link index)} for one router."""
        nh = self.next_hop[:, router]
        ok = np.flatnonzero(nh >= 0)
        return {int(self.destinations[i]): (int(nh[i]), int(self.link[i, router])) for i in ok}


def destinations(timeline: Timeline, all_loopbacks: bool | None = None) -> np.ndarray:
    """Node indices that routers keep routes to: gateways, hosts, compute nodes, and satellites'
    loopbacks if ``all_loopbacks`` (default: when there are at most
    :data:`ALL_LOOPBACKS_MAX_ROUTERS` routers)."""
    kinds = np.array([n.kind for n in timeline.nodes])
    if all_loopbacks is None:
        all_loopbacks = int(np.isin(kinds, ("sat", "gateway")).sum()) <= ALL_LOOPBACKS_MAX_ROUTERS
    wanted = ("sat", "gateway", "host", "compute") if all_loopbacks else ("gateway", "host", "compute")
    return np.flatnonzero(np.isin(kinds, wanted))


class RoutingProtocol:
    """Base of centrally computed routing: ``compute`` gives the route table of one step."""

    name: str = ""

    def __init__(self, all_loopbacks: bool | None = None) -> None:
        self.all_loopbacks = all_loopbacks

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        """Route table for ``step`` (computed on ``snapshot`` if given, else ``timeline.snapshot(step)``)."""
        raise NotImplementedError


PROTOCOLS: dict[str, type[RoutingProtocol]] = {}


def register(cls: type[RoutingProtocol]) -> type[RoutingProtocol]:
    """Class decorator: make ``cls`` known under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    PROTOCOLS[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in PROTOCOLS:
            PROTOCOLS[ep.name] = ep.load()


def get_protocol(name: str, **options: object) -> RoutingProtocol:
    """An instance of the protocol registered as ``name``.

    Raises
    ------
    ConfigError
        No protocol has that name; the message lists the known ones.
    """
    import routing.shortest_delay  # noqa: F401  (registers the built-in protocol)

    if name not in PROTOCOLS:
        _load_entry_points()
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown routing protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}",
                          key="routing.protocol")
    return PROTOCOLS[name](**options)  # type: ignore[arg-type]
