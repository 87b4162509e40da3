"""The routing-protocol interface, the route table it produces, and the registry of protocols.

A protocol computes, for one step of a timeline, the next hop (or, for multipath protocols, up to
``k`` next hops) of every router towards every destination. Protocols register under a name
(:func:`register`) or through the entry-point group ``satnetem.routing``; :func:`get_protocol` finds
them by name and :func:`available_protocols` lists them with where they come from.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import ROUTER_KINDS, Snapshot, Timeline

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "satnetem.routing"
#: Modules of the built-in protocols, imported (so that they register) before any lookup. A module
#: that is not there (a protocol still being written) is skipped.
BUILTIN_MODULES = ("routing.shortest_delay", "routing.min_hop", "routing.ecmp", "routing.predictive",
                   "routing.ospf")
#: Up to this many routers, every router's loopback is a destination (so every satellite answers
#: ping); above it only gateways, hosts and compute nodes are, to keep tables small.
ALL_LOOPBACKS_MAX_ROUTERS = 200


@dataclass(frozen=True)
class RouteTable:
    """Next hops of every node towards each destination at one step.

    ``destinations`` has shape (n_dest,); ``next_hop``, ``link`` (int32, -1 = none) and ``dist``
    (float64, path weight, ``inf`` = unreachable) have shape (n_dest, n_nodes).

    A multipath protocol also gives ``mp_next_hop`` and ``mp_link``, shape (n_dest, n_nodes, k), int32:
    up to ``k`` next hops (and the link slots carrying them) per destination and node, -1 padded at
    the end of each row, column 0 equal to ``next_hop``/``link``. Without them the table is single
    path (``width`` 1).
    """

    step: int
    destinations: np.ndarray
    next_hop: np.ndarray
    link: np.ndarray
    dist: np.ndarray
    mp_next_hop: np.ndarray | None = None
    mp_link: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = (len(self.destinations), self.next_hop.shape[1] if self.next_hop.ndim == 2 else 0)
        for name in ("next_hop", "link", "dist"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"RouteTable.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if (self.mp_next_hop is None) != (self.mp_link is None):
            raise ValueError("RouteTable.mp_next_hop and mp_link come together (both or neither)")
        if self.mp_next_hop is not None and self.mp_link is not None:
            for name in ("mp_next_hop", "mp_link"):
                arr = getattr(self, name)
                if arr.ndim != 3 or arr.shape[:2] != shape or arr.shape[2] < 1:
                    raise ValueError(f"RouteTable.{name} has shape {arr.shape}, expected {shape + ('k',)}")
            if not (np.array_equal(self.mp_next_hop[:, :, 0], self.next_hop)
                    and np.array_equal(self.mp_link[:, :, 0], self.link)):
                raise ValueError("RouteTable.mp_next_hop[:, :, 0] / mp_link[:, :, 0] must equal "
                                 "next_hop / link")

    @property
    def width(self) -> int:
        """Most next hops a (destination, node) pair may have: ``k``, or 1 for a single-path table."""
        return 1 if self.mp_link is None else int(self.mp_link.shape[2])

    def links_wide(self) -> np.ndarray:
        """Link slots of every next hop, shape (n_dest, n_nodes, width), -1 padded."""
        return self.link[:, :, None] if self.mp_link is None else self.mp_link

    def next_hops_wide(self) -> np.ndarray:
        """Next-hop nodes, shape (n_dest, n_nodes, width), -1 padded."""
        return self.next_hop[:, :, None] if self.mp_next_hop is None else self.mp_next_hop

    def routes_of(self, router: int) -> dict[int, tuple[int, int]]:
        """{destination node index: (next-hop node index, link index)} for one router (first next
        hop only; see :meth:`multipath_of`)."""
        nh = self.next_hop[:, router]
        ok = np.flatnonzero(nh >= 0)
        return {int(self.destinations[i]): (int(nh[i]), int(self.link[i, router])) for i in ok}

    def multipath_of(self, router: int) -> dict[int, list[tuple[int, int]]]:
        """{destination node index: [(next-hop node index, link index), ...]} for one router."""
        nh = self.next_hops_wide()[:, router]
        lk = self.links_wide()[:, router]
        return {int(self.destinations[i]): [(int(v), int(l)) for v, l in zip(nh[i], lk[i]) if v >= 0]
                for i in np.flatnonzero(nh[:, 0] >= 0)}


def destinations(timeline: Timeline, all_loopbacks: bool | None = None) -> np.ndarray:
    """Node indices that routers keep routes to: gateways, user terminals, PoPs, hosts, compute nodes, and
    satellites' loopbacks if ``all_loopbacks`` (default: when there are at most
    :data:`ALL_LOOPBACKS_MAX_ROUTERS` routers)."""
    kinds = np.array([n.kind for n in timeline.nodes])
    if all_loopbacks is None:
        all_loopbacks = int(np.isin(kinds, ROUTER_KINDS).sum()) <= ALL_LOOPBACKS_MAX_ROUTERS
    ground = ("gateway", "terminal", "pop", "host", "compute")
    wanted = ("sat",) + ground if all_loopbacks else ground
    return np.flatnonzero(np.isin(kinds, wanted))


def home_pops(timeline: Timeline) -> dict[int, int]:
    """Where each user terminal's traffic enters the internet: {terminal node index: home PoP node index}.

    Empty without PoPs. The home PoP is given by the scenario or drawn from the terminal's country's PoP
    shares when planning (docs/model.md, "PoPs and backhaul"); its host is ``h-<PoP node name>``.
    """
    out = {}
    for i in timeline.nodes_of("terminal"):
        pop = timeline.nodes[i].info.get("home_pop")
        if pop:
            out[i] = timeline.node_index(pop)
    return out


class RoutingProtocol:
    """Base of centrally computed routing: ``compute`` gives the route table of one step.

    What a protocol may use besides the timeline's arrays: :func:`destinations` (the nodes to route to),
    :meth:`home_pops` (each user terminal's home PoP) and :meth:`backhaul_policy` (``[backhaul] policy``,
    with :func:`routing.graph.policy_factors` for its link weights).
    """

    name: str = ""

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> RoutingProtocol:
        """An instance with the options of a scenario's ``[routing.<name>]`` table (none here: an empty
        table gives the defaults, any key is a ConfigError)."""
        if table:
            raise ConfigError(f"routing protocol {cls.name!r} takes no options, got {', '.join(table)}",
                              key=f"routing.{cls.name}.{next(iter(table))}")
        return cls()

    def __init__(self, all_loopbacks: bool | None = None) -> None:
        self.all_loopbacks = all_loopbacks

    @staticmethod
    def home_pops(timeline: Timeline) -> dict[int, int]:
        """{user terminal node index: its home PoP's node index} (:func:`home_pops`)."""
        return home_pops(timeline)

    @staticmethod
    def backhaul_policy(timeline: Timeline) -> str:
        """``"least-delay"``, ``"space-first"`` or ``"ground-first"`` (:func:`routing.graph.backhaul_policy`)."""
        from .graph import backhaul_policy

        return backhaul_policy(timeline)

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


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but something it needs does not
                raise


#: Entry points that failed to load: name -> the error, reported when that name is asked for.
_BROKEN: dict[str, tuple[str, str]] = {}
_ORIGIN: dict[str, str] = {}


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in PROTOCOLS or ep.name in _BROKEN:
            continue
        dist = getattr(ep, "dist", None)
        origin = f"entry point {ep.value}" + (f" ({dist.name} {dist.version})" if dist is not None else "")
        try:
            cls = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not hide the working ones
            _BROKEN[ep.name] = (origin, f"{type(e).__name__}: {e}")
            log.warning("routing protocol %r cannot be loaded from %s: %s", ep.name, origin, e)
            continue
        if not (isinstance(cls, type) and issubclass(cls, RoutingProtocol)):
            _BROKEN[ep.name] = (origin, f"{cls!r} is not a RoutingProtocol subclass")
            log.warning("routing protocol %r from %s is not a RoutingProtocol subclass", ep.name, origin)
            continue
        PROTOCOLS[ep.name] = cls
        _ORIGIN[ep.name] = origin


def _known() -> list[str]:
    names = set(PROTOCOLS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def get_protocol(name: str, **options: Any) -> RoutingProtocol:
    """An instance of the protocol registered as ``name``.

    Raises
    ------
    ConfigError
        No protocol has that name (the message lists the known ones, built-in and installed), or the
        plugin that provides it cannot be loaded.
    """
    _load_builtins()
    if name not in PROTOCOLS:
        _load_entry_points()
    if name in _BROKEN:
        origin, why = _BROKEN[name]
        raise ConfigError(f"routing protocol {name!r} cannot be loaded from {origin}: {why}",
                          key="routing.protocol")
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown routing protocol {name!r}; known: {', '.join(_known())}",
                          key="routing.protocol")
    return PROTOCOLS[name](**options)


#: Protocols whose options a scenario may set in a ``[routing.<name>]`` table (a RoutingConfig field).
OPTION_TABLES = ("ospf",)


def scenario_protocol(sc: Any, name: str | None = None) -> RoutingProtocol:
    """The protocol ``name`` (default: the scenario's ``routing.protocol``) with the options of its
    ``[routing.<name>]`` table, if it has one (:data:`OPTION_TABLES`).

    Parameters
    ----------
    sc : topologies.scenario.Scenario
    name : str, optional

    Raises
    ------
    ConfigError
        Unknown protocol, or a bad key or value in its table; naming the scenario's file, line and key.
    """
    from topologies.scenario import scenario_error

    name = name or sc.routing.protocol
    try:
        cls = type(get_protocol(name))
        table = dict(getattr(sc.routing, name, None) or {}) if name in OPTION_TABLES else {}
        return cls.from_table(table)
    except ConfigError as e:
        raise scenario_error(sc, e.message, e.key or "routing.protocol") from None


def check_protocol_options(sc: Any) -> None:
    """Every ``[routing.<name>]`` options table of scenario ``sc`` is valid, whichever protocol runs
    (``compare`` runs them all). Raises ConfigError naming file, line and key."""
    for name in OPTION_TABLES:
        if getattr(sc.routing, name, None):
            scenario_protocol(sc, name)


def describe(cls: type) -> str:
    """First line of ``cls``'s docstring (a protocol's one-line description)."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def available_protocols() -> list[tuple[str, str, str]]:
    """Every protocol that :func:`get_protocol` can make, sorted by name.

    Returns
    -------
    list of (name, origin, description)
        ``origin`` is ``"built-in (module)"`` or ``"entry point module:attr (dist version)"``;
        ``description`` is the first line of the class docstring, or why a plugin cannot be loaded.
    """
    _load_builtins()
    _load_entry_points()
    out = []
    for name, cls in PROTOCOLS.items():
        origin = _ORIGIN.get(name) or (f"built-in ({cls.__module__})" if cls.__module__.startswith("routing.")
                                       else f"registered in {cls.__module__}")
        out.append((name, origin, describe(cls)))
    for name, (origin, why) in _BROKEN.items():
        if name not in PROTOCOLS:
            out.append((name, origin, f"cannot be loaded: {why}"))
    return sorted(out)
