"""OSPF run by real BIRD 2 daemons, one per router namespace: the configuration they get, and the protocol.

Everything that decides *what* a daemon is told is pure and lives here: link costs from delays
(:func:`link_costs`), the OSPF interfaces of a node (:func:`node_interfaces`) and the BIRD
configuration text (:func:`bird_config`). Starting, reconfiguring and stopping the daemons is
:mod:`emulator.daemons`' job; :class:`Ospf` imports it only when an emulation calls it.

The OSPF model
--------------
* One backbone area; every ISL end and gateway antenna is a point-to-point interface (``type ptp``)
  with BIRD's ``check link``, so an interface set down by the emulator drops its adjacency at once:
  failures are detected by the link, not by the dead timer. The dead (10 s) and retransmission (5 s)
  intervals are therefore set for robustness, not speed: hundreds of daemons share a few cores, and
  with the old 3 s / 2 s a daemon starved for a few seconds while the whole constellation flooded its
  first LSAs (BIRD logged I/O loop cycles of 6-10 s at 402 routers on 2 busy cores) saw its neighbours
  retransmit their first DBDES and restart the exchange (5,602 "I-bit mismatch" in 7 minutes) or drop
  the adjacency, which re-originated LSAs and fed the storm: OSPF never converged.
* BIRD hears of interface changes over an asynchronous netlink socket that overflows when the daemon
  is starved ("Kernel dropped some netlink messages, will resync on next scan"); the device scan runs
  every 5 s so that a missed link up or down is seen within 5 s rather than a minute.
* A router's loopback /32 is its router id and a stub network; the access interface of a host's
  gateway or a compute node's satellite (``h<slot>``) is a stub interface, and the host's subnet is
  announced as a configured ``stubnet`` whatever that link's state: announced by the interface, a restored
  gateway's LSA changed with its access link and the next one, with the new adjacency, waited for
  MinLSInterval (6.4-6.9 s without a route after a restore; docs/model.md, "OSPF after a restore").
* Gateway antenna links retransmit after ``gsl_retransmit_s`` (2 s): after a restore the LSA listing the
  new adjacency can reach the other end just under MinLSArrival after the database exchange and be
  dropped until retransmitted.
* Cost of a link = ``round(delay_ms * cost_per_ms)`` clipped to 1..65535 (default 100 per ms, i.e.
  10 us resolution up to 655 ms), so OSPF's shortest path is the shortest-delay path of the
  centralised ``shortest-delay`` protocol, up to that resolution and to ties.
* Routes are exported to the kernel with the loopback as preferred source.
* A gateway antenna's handover is prepared ``handover_lead_s`` ahead: its spare veth pair, already at
  the next satellite, is brought up and into both daemons at cost 65535 (:func:`preform_slots`), with
  the kernel export rejecting routes through it, so the adjacency is Full before the switch; at the
  switch the old pair goes down and the spare takes the link's cost. Without it, the gateway's
  router-LSA withdrawing the old link (at the switch) and the one adding the new adjacency (a hello
  later) are two originations within MinLSInterval, and the second waited ~4 s (docs/model.md,
  "OSPF across a gateway handover").

Timing limits that come from OSPF itself (RFC 2328, kept by BIRD): a router re-originates its
router-LSA at most every 5 s (MinLSInterval), and BIRD runs SPF on a ``tick`` (default 1 s). A cost
change pushed within 5 s of the previous one for the same router therefore reaches the network
late, and so does a link failure right after a cost change: that is how OSPF behaves, not an
emulation artefact.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from topologies.errors import ApplyError, ConfigError
from topologies.timeline import LINK_CLASSES, Diff, Snapshot

from .base import destinations, register
from .daemon import DaemonProtocol

log = logging.getLogger(__name__)

_ACCESS = LINK_CLASSES.index("access")
_GSL = LINK_CLASSES.index("gsl")
MAX_COST = 65535
#: Cost both ends announce for an antenna's spare pair brought up ahead of its handover: the highest, so
#: that no path uses it while the antenna's own link is up (and the kernel export rejects it anyway).
PREFORM_COST = MAX_COST
#: RFC 2328's MinLSInterval, which BIRD 2 keeps as a constant: a router originates a new instance of its
#: router-LSA at most once per this many seconds.
MIN_LS_INTERVAL_S = 5.0
#: BIRD interface names are matched as patterns; ours never contain pattern or quote characters.
_SAFE_IFNAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class OspfOptions:
    """OSPF timers and cost scale.

    Parameters
    ----------
    hello_s : int
        Hello interval, s (>= 1).
    dead_s : int
        Router dead interval, s (> ``hello_s``): a neighbour silent this long is dropped.
    retransmit_s : int
        LSA retransmission interval on ISLs, s (>= 2, BIRD's minimum).
    gsl_retransmit_s : int
        The same on gateway antenna links (both ends), s (>= 2). After a restore or a link that came
        back, each end installs the other's LSA in the database exchange and the one listing the new
        adjacency arrives about a second later, at the next hello: if less than MinLSArrival (1 s, a BIRD
        constant) has passed, it is dropped and comes again only on retransmission. Measured on the
        hand-made grid, that was 2.4 s without the drop and 7.8 s with it at 5 s. Antenna links are few
        (one adjacency per antenna against four per satellite), so the faster retransmission costs little.
    tick_s : int
        Period of BIRD's SPF and LSDB housekeeping, s (>= 1).
    cost_per_ms : float
        OSPF cost per ms of one-way delay (> 0); costs are clipped to 1..65535.
    cost_tolerance_pct : float
        A link's new cost is pushed to the daemons only when it differs from the cost they have by
        more than this percentage (0: every change). Each push re-originates a router-LSA that every
        router floods and runs SPF on, so pushing the slow drift of every inter-plane ISL each step
        would keep the whole constellation busy; OSPF's paths are then shortest-delay within this
        tolerance per link.
    cost_push_interval_s : float
        A router is reconfigured for cost drift at most once per this many timeline seconds, at a slot
        of its own (0: at any step), so the reconfigurations are spread evenly over the steps. Handovers
        are pushed at their step regardless. Each reconfiguration floods one router-LSA over every
        adjacency (about 2,500 packets at 402 routers, each held by the shaper): on
        examples/campaign.toml, pushing at every step with a 5 % tolerance reconfigured routers 1,290
        times in 68 s and made the steps 12.9 s late at p95.
    ecmp : bool
        Install equal-cost multipath routes (off: one next hop, as the centralised protocols).
    handover_lead_s : float
        How long before a gateway antenna's handover its spare pair is brought up and into OSPF at cost
        :data:`PREFORM_COST`, s (0: not at all; the adjacency is then formed after the switch and the
        gateway's LSA with it waits for MinLSInterval). The adjacency must be Full, and the LSAs it makes
        the gateway originate must be MinLSInterval (5 s) old, before the switch: adding the interface and
        its reaching Full can be two originations 5 s apart, so at least 10 s; 15 s leaves a busy daemon
        5 s to form it. Rounded up to whole steps.
    """

    hello_s: int = 1
    dead_s: int = 10
    retransmit_s: int = 5
    gsl_retransmit_s: int = 2
    tick_s: int = 1
    cost_per_ms: float = 100.0
    cost_tolerance_pct: float = 10.0
    cost_push_interval_s: float = 10.0
    ecmp: bool = False
    handover_lead_s: float = 15.0

    def __post_init__(self) -> None:
        for key, low in (("hello_s", 1), ("dead_s", 2), ("retransmit_s", 2), ("gsl_retransmit_s", 2),
                         ("tick_s", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
                raise ConfigError(f"{key} must be a whole number of seconds in {low}..65535, got {value!r}",
                                  key=f"routing.ospf.{key}")
        if self.dead_s <= self.hello_s:
            raise ConfigError(f"dead_s ({self.dead_s} s) must be longer than hello_s ({self.hello_s} s)",
                              key="routing.ospf.dead_s")
        if not (isinstance(self.cost_per_ms, (int, float)) and 0 < self.cost_per_ms < 1e6):
            raise ConfigError(f"cost_per_ms must be in (0, 1e6), got {self.cost_per_ms!r}",
                              key="routing.ospf.cost_per_ms")
        if not (isinstance(self.cost_tolerance_pct, (int, float)) and 0 <= self.cost_tolerance_pct < 100):
            raise ConfigError(f"cost_tolerance_pct must be in [0, 100), got {self.cost_tolerance_pct!r}",
                              key="routing.ospf.cost_tolerance_pct")
        if not (isinstance(self.cost_push_interval_s, (int, float)) and not isinstance(self.cost_push_interval_s, bool)
                and 0 <= self.cost_push_interval_s <= 86400):
            raise ConfigError(f"cost_push_interval_s must be in [0, 86400] s, got {self.cost_push_interval_s!r}",
                              key="routing.ospf.cost_push_interval_s")
        if not isinstance(self.ecmp, bool):
            raise ConfigError(f"ecmp must be true or false, got {self.ecmp!r}", key="routing.ospf.ecmp")
        if not (isinstance(self.handover_lead_s, (int, float)) and not isinstance(self.handover_lead_s, bool)
                and 0 <= self.handover_lead_s <= 3600):
            raise ConfigError(f"handover_lead_s must be in [0, 3600] s, got {self.handover_lead_s!r}",
                              key="routing.ospf.handover_lead_s")


    @classmethod
    def from_table(cls, table: dict[str, Any]) -> OspfOptions:
        """Options from a scenario's ``[routing.ospf]`` table.

        Raises
        ------
        ConfigError
            An unknown key (the message lists the known ones) or a bad value, with its key.
        """
        known = [f.name for f in fields(cls)]
        for key in table:
            if key not in known:
                raise ConfigError(f"unknown key {key!r}; known: {', '.join(known)}", key=f"routing.ospf.{key}")
        return cls(**table)


@dataclass(frozen=True)
class OspfInterface:
    """One interface of a router as OSPF sees it: a point-to-point link with a cost, or a stub; a
    ``preformed`` one is an antenna's spare pair brought up ahead of its handover (no kernel route may
    leave through it); a ``ground`` one is an end of a gateway antenna's link (its own retransmission
    interval, :attr:`OspfOptions.gsl_retransmit_s`)."""

    name: str
    cost: int
    stub: bool = False
    preformed: bool = False
    ground: bool = False

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 15 or not set(self.name) <= _SAFE_IFNAME:
            raise ConfigError(f"interface name {self.name!r} is not a plain Linux interface name",
                              key="interface")
        if not 1 <= int(self.cost) <= MAX_COST:
            raise ConfigError(f"OSPF cost of {self.name} must be in 1..{MAX_COST}, got {self.cost}",
                              key="cost")


def link_costs(delay_ms: np.ndarray, cost_per_ms: float = 100.0) -> np.ndarray:
    """OSPF cost of each link from its one-way delay.

    Parameters
    ----------
    delay_ms : ndarray, shape (n_links,)
        One-way delay, ms.
    cost_per_ms : float
        Cost units per ms.

    Returns
    -------
    ndarray of int32, shape (n_links,)
        ``round(delay_ms * cost_per_ms)`` clipped to 1..65535 (a non-finite delay gets 65535).

    >>> link_costs(np.array([0.0, 2.34, 1e9]))
    array([    1,   234, 65535], dtype=int32)
    """
    d = np.asarray(delay_ms, dtype=np.float64) * cost_per_ms
    d = np.where(np.isfinite(d), d, MAX_COST)
    return np.clip(np.rint(d), 1, MAX_COST).astype(np.int32)


def costs_to_push(pushed: np.ndarray, wanted: np.ndarray, tolerance_pct: float) -> np.ndarray:
    """The costs the daemons should have: ``wanted`` where it differs from ``pushed`` by more than
    ``tolerance_pct`` percent of ``pushed``, else ``pushed`` (shapes (n_links,)).

    >>> costs_to_push(np.array([100, 100, 100]), np.array([104, 106, 1]), 5.0).tolist()
    [100, 106, 1]
    """
    pushed = np.asarray(pushed)
    wanted = np.asarray(wanted)
    move = np.abs(wanted.astype(np.float64) - pushed) > pushed * (tolerance_pct / 100.0)
    return np.where(move, wanted, pushed).astype(np.int32)


def push_slots(interval_s: float, step_s: float) -> int:
    """Number of steps one round of cost pushes is spread over: ``round(interval_s / step_s)``, at least 1.

    >>> push_slots(10.0, 1.0), push_slots(0.0, 1.0), push_slots(10.0, 4.0)
    (10, 1, 2)
    """
    return max(1, int(round(interval_s / step_s)))


def next_handover(ahead: np.ndarray, now: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """For each slot: the step of its next change of far end in the window ``ahead``, and the node it
    changes to (-1, -1 where none comes in the window).

    Parameters
    ----------
    ahead : ndarray of int, shape (n_slots, n_ahead)
        The timeline's far node of each slot at steps ``step + 1``, ``step + 2``, ... (-1: none), e.g.
        ``timeline.peer[slots, step + 1:step + 1 + lead_steps]``.
    now : ndarray of int, shape (n_slots,)
        Far node of each slot now (the applied snapshot's).
    step : int
        The step ``now`` is at.

    >>> next_handover(np.array([[5, 6], [5, 5], [-1, 6]]), np.array([5, 5, 5]), 0)
    (array([ 2, -1,  1]), array([ 6, -1, -1]))
    """
    window = np.asarray(ahead)
    if window.ndim != 2 or window.shape[1] == 0:
        none = np.full(len(now), -1, np.int64)
        return none, none.copy()
    changed = window != np.asarray(now)[:, None]
    has = changed.any(axis=1)
    first = changed.argmax(axis=1)
    to = np.where(has, window[np.arange(len(window)), first], -1)
    return np.where(has, step + 1 + first, -1).astype(np.int64), to.astype(np.int64)


def preform_slots(ahead: np.ndarray, now: np.ndarray, up: np.ndarray, spare_at: np.ndarray) -> np.ndarray:
    """Which slots' spare pairs to bring into OSPF now, ahead of their handover.

    A slot qualifies when its link is up on a satellite now, the timeline moves it straight to another
    satellite within the window ``ahead`` (no step without one in between: an antenna that loses its
    satellite first has no old link to withdraw, and its new one would carry data before its time), and
    its spare pair is already at that satellite (moved there between steps by the emulator).

    Parameters
    ----------
    ahead : ndarray of int, shape (n_slots, n_ahead)
        The timeline's far node of each slot at the next ``n_ahead`` steps (:func:`next_handover`).
    now : ndarray of int, shape (n_slots,)
        Its far node now.
    up : ndarray of bool, shape (n_slots,)
        Whether its link is up now.
    spare_at : ndarray of int, shape (n_slots,)
        The node holding the far end of its spare pair now (its own gateway when parked).

    Returns
    -------
    ndarray of bool, shape (n_slots,)

    >>> preform_slots(np.array([[5, 6], [5, 6], [-1, 6], [5, 6]]), np.array([5, 5, 5, 5]),
    ...               np.array([True, True, True, False]), np.array([6, 7, 6, 6])).tolist()
    [True, False, False, False]
    """
    _, to = next_handover(ahead, now, 0)
    return (np.asarray(now) >= 0) & np.asarray(up, bool) & (to >= 0) & (to == np.asarray(spare_at))


def cost_push(pushed_a: np.ndarray, pushed_b: np.ndarray, wanted: np.ndarray, link_a: np.ndarray, far: np.ndarray,
              handed_over: np.ndarray, due: np.ndarray,
              tolerance_pct: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The costs each link end's router should announce after a step, and the routers to reconfigure for them.

    OSPF costs are per direction: a router announces the cost of its own end of each link. A router is
    reconfigured for cost only at its own slot (``due``), and then only if one of its ends is off the cost
    it wants by more than the tolerance (:func:`costs_to_push`); it then takes the wanted cost on all its
    ends. Handed-over slots take the wanted cost on both ends at once (their routers are reconfigured for
    the handover anyway).

    Parameters
    ----------
    pushed_a, pushed_b : ndarray of int, shape (n_links,)
        Cost the near (``link_a``) and far end's router of each slot announce now.
    wanted : ndarray of int, shape (n_links,)
        Cost from the step's delays (:func:`link_costs`).
    link_a, far : ndarray of int, shape (n_links,)
        Near node and the node holding the far end of each slot now.
    handed_over : ndarray of int
        Slots whose far end changed at this step.
    due : ndarray of bool, shape (n_nodes,)
        Routers whose slot this step is (see :meth:`Ospf.update`: every router once per interval).
    tolerance_pct : float

    Returns
    -------
    cost_a, cost_b : ndarray of int32, shape (n_links,)
        What each end should announce now.
    routers : ndarray of int
        Routers reconfigured for cost (sorted).

    >>> a, b, r = cost_push(np.array([100, 100]), np.array([100, 100]), np.array([120, 101]), np.array([0, 1]),
    ...                     np.array([1, 2]), np.array([], int), np.array([False, True, False]), 5.0)
    >>> a.tolist(), b.tolist(), r.tolist()
    ([100, 101], [120, 100], [1])
    """
    cost_a = np.array(pushed_a, np.int32)
    cost_b = np.array(pushed_b, np.int32)
    wanted = np.asarray(wanted, np.int32)
    link_a = np.asarray(link_a)
    far = np.asarray(far)
    h = np.asarray(handed_over, np.int64)
    cost_a[h] = wanted[h]
    cost_b[h] = wanted[h]
    off_a = costs_to_push(cost_a, wanted, tolerance_pct) != cost_a
    off_b = costs_to_push(cost_b, wanted, tolerance_pct) != cost_b
    routers = np.union1d(link_a[off_a], far[off_b])
    routers = routers[(routers >= 0) & np.asarray(due)[np.maximum(routers, 0)]]
    ends_a = np.isin(link_a, routers)
    ends_b = np.isin(far, routers)
    cost_a[ends_a] = wanted[ends_a]
    cost_b[ends_b] = wanted[ends_b]
    return cost_a, cost_b, routers


def node_interfaces(node: int, link_a: np.ndarray, far: np.ndarray, link_class: np.ndarray,
                    ifname_a: tuple[str, ...] | list[str], ifname_b: tuple[str, ...] | list[str],
                    cost: np.ndarray, cost_far: np.ndarray | None = None) -> list[OspfInterface]:
    """The OSPF interfaces of router ``node`` with the links where they are now.

    Parameters
    ----------
    node : int
        Node index of a router (satellite or gateway).
    link_a : ndarray, shape (n_links,)
        Near node of each link slot.
    far : ndarray, shape (n_links,)
        Node whose namespace holds the far end of each slot now; a parked gateway antenna has its
        gateway here (its far end is down and is left out).
    link_class : ndarray, shape (n_links,)
        :data:`topologies.timeline.LINK_CLASSES` index of each slot.
    ifname_a, ifname_b : sequence of str, length n_links
        Interface names of the near and far ends.
    cost : ndarray of int, shape (n_links,)
        OSPF cost of each slot (see :func:`link_costs`), announced by its near end's router.
    cost_far : ndarray of int, shape (n_links,), optional
        Cost announced by each slot's far end's router (default: ``cost``; see :func:`cost_push`).

    Returns
    -------
    list of OspfInterface
        Point-to-point ISL and antenna ends (with their cost), then stub access interfaces (a host's
        subnet), in link-slot order.
    """
    link_a = np.asarray(link_a)
    far = np.asarray(far)
    access = np.asarray(link_class) == _ACCESS
    ground = np.asarray(link_class) == _GSL
    near = np.flatnonzero((link_a == node) & ~access)
    far_ends = np.flatnonzero((far == node) & (link_a != node))
    ptp = [OspfInterface(ifname_a[l], int(cost[l]), ground=bool(ground[l])) for l in near.tolist()]
    cb = cost if cost_far is None else cost_far
    ptp += [OspfInterface(ifname_b[l], int(cb[l]), ground=bool(ground[l]))
            for l in far_ends[~access[far_ends]].tolist()]
    stubs = [OspfInterface(ifname_b[l], 1, stub=True) for l in far_ends[access[far_ends]].tolist()]
    return sorted(ptp, key=lambda i: i.name) + stubs


def bird_config(router_id: str, interfaces: list[OspfInterface], options: OspfOptions | None = None,
                log_path: str | None = None, node: str = "", hidden: tuple[str, ...] = (),
                exported: tuple[str, ...] | None = None, announced: tuple[str, ...] = ()) -> str:
    """The BIRD 2 configuration of one router.

    Parameters
    ----------
    router_id : str
        The router's loopback address (dotted quad): router id, stub /32 and preferred source of the
        routes exported to the kernel.
    interfaces : list of OspfInterface
        From :func:`node_interfaces`, and spare pairs brought up ahead of a handover (``preformed``).
    options : OspfOptions, optional
    log_path : str, optional
        File BIRD logs to (with millisecond timestamps); none: no log.
    node : str
        Node name, for the header comment only.
    hidden : tuple of str
        Prefixes (CIDR) whose subnets this router does not announce as stub networks: the link /31s,
        which are no destination (as with the centralised protocols) and would double every table.
    exported : tuple of str, optional
        The prefixes (CIDR) whose OSPF routes go into the kernel; None: all. OSPF itself still learns
        every router (its LSDB and SPF are whole); only the kernel's table is kept to the destinations
        the centralised protocols install (:func:`routing.base.destinations`). Every route a daemon
        writes takes the kernel's one global rtnl lock: at 402 routers with every loopback exported,
        300 of the 402 daemons sat blocked in ``inet_rtm_newroute``/``delroute`` for minutes and OSPF
        never converged.
    announced : tuple of str
        Prefixes (CIDR) this router announces as stub networks whatever the state of the interface that
        carries them: the subnets of the hosts (or compute nodes) on its access links. Announced from the
        interface instead, a restored gateway's access link changed its router-LSA at the restore, and the
        LSA adding the new adjacency a hello later then waited for MinLSInterval (5 s); see
        docs/model.md, "OSPF after a restore".

    Returns
    -------
    str
        Configuration text; the same inputs always give the same text, so an unchanged text means
        nothing to push.

    Raises
    ------
    ConfigError
        ``router_id`` is not an IPv4 address, a ``hidden`` prefix is not an IPv4 prefix, or
        ``log_path`` contains a quote or a newline.
    """
    o = options or OspfOptions()
    try:
        rid = str(ipaddress.IPv4Address(router_id))
    except ValueError:
        raise ConfigError(f"router id {router_id!r} is not an IPv4 address", key="router_id") from None
    try:
        hide = [str(ipaddress.IPv4Network(h)) for h in hidden]
    except ValueError as e:
        raise ConfigError(f"hidden prefix: {e}", key="hidden") from None
    try:
        only = None if exported is None else [str(ipaddress.IPv4Network(x)) for x in exported]
    except ValueError as e:
        raise ConfigError(f"exported prefix: {e}", key="exported") from None
    try:
        stubnets = [str(ipaddress.IPv4Network(x)) for x in announced]
    except ValueError as e:
        raise ConfigError(f"announced prefix: {e}", key="announced") from None
    # a spare pair brought up ahead of its handover carries OSPF's own packets only: the antenna is not
    # yet on that satellite, so no kernel route may leave through it (even if OSPF finds no other path)
    spares = "".join(f'if ifname = "{i.name}" then reject; ' for i in interfaces if i.preformed)
    if only is None:
        export = f"export filter {{ {spares}krt_prefsrc = {rid}; accept; }};"
    elif not only:
        export = "export none;"
    else:
        export = (f"export filter {{ {spares}if net ~ [ {', '.join(only)} ] then {{ krt_prefsrc = {rid}; accept; }} "
                  f"reject; }};")
    lines = [f"# satnetem: OSPF of node {node} (generated; rewritten when a cost or interface changes)"]
    if log_path is not None:
        if any(c in log_path for c in '"\n\\'):
            raise ConfigError(f"log path {log_path!r} must not contain quotes, backslashes or newlines",
                              key="log_dir")
        lines += [f'log "{log_path}" all;', "timeformat log iso long ms;"]
    lines += [
        f"router id {rid};",
        "protocol device { scan time 5; }",
        "protocol kernel {",
        f"  ipv4 {{ import none; {export} }};",
        "  learn no;",
        "  scan time 60;",
        "}",
        "protocol ospf v2 ospf1 {",
        "  ipv4 { import all; export none; };",
        f"  ecmp {'yes' if o.ecmp else 'no'};",
        f"  tick {o.tick_s};",
        "  area 0 {",
        *(f"    stubnet {h} {{ hidden; summary; }};" for h in hide),
        *(f"    stubnet {x} {{ cost 1; }};" for x in stubnets),
        f'    interface "lo" {rid}/32 {{ stub yes; cost 1; }};',
    ]
    for i in interfaces:
        if i.stub:
            lines.append(f'    interface "{i.name}" {{ stub yes; cost {i.cost}; }};')
        else:
            rxmt = o.gsl_retransmit_s if i.ground else o.retransmit_s
            timers = f"hello {o.hello_s}; dead {o.dead_s}; retransmit {rxmt}; check link yes;"
            lines.append(f'    interface "{i.name}" {{ type ptp; cost {i.cost}; {timers} }};')
    lines += ["  };", "}", ""]
    return "\n".join(lines)


@register
class Ospf(DaemonProtocol):
    """OSPFv2 in BIRD 2 daemons, one per router (satellites and gateways); hosts keep a default route.

    Parameters
    ----------
    all_loopbacks : bool, optional
        As for the centralised protocols (:func:`routing.base.destinations`): whether every router's
        loopback gets a kernel route, or only gateways, hosts and compute nodes (default: every one up
        to 200 routers). OSPF announces and learns every loopback either way.
    options : OspfOptions, optional
        Timers and cost scale.
    **fields
        Or the fields of :class:`OspfOptions` directly (``hello_s=1, dead_s=4``).

    One instance drives one emulation at a time.
    """

    name = "ospf"

    def __init__(self, all_loopbacks: bool | None = None, options: OspfOptions | None = None,
                 **fields: Any) -> None:
        super().__init__(all_loopbacks)
        if options is not None and fields:
            raise ConfigError("give either options or its fields, not both", key="routing.ospf")
        self.options = options if options is not None else OspfOptions(**fields)
        self.daemons: Any = None  # emulator.daemons.BirdDaemons while running
        # cost each slot's near and far end's daemon announces
        self._cost_a = self._cost_b = np.empty(0, np.int32)
        self._text: dict[int, str] = {}  # configuration each router's daemon has
        self._counts = {"reconfigurations": 0, "cost_reconfigurations": 0, "handovers_preformed": 0}
        self._update_ms: list[float] = []
        # antenna slot -> node holding the far end of its spare pair, for the spares in OSPF ahead of a handover
        self._preformed: dict[int, int] = {}

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Ospf:
        """With the options of a scenario's ``[routing.ospf]`` table (:meth:`OspfOptions.from_table`)."""
        return cls(options=OspfOptions.from_table(table))

    # ------------------------------------------------------------------------------ pure helpers
    def configs(self, emu: Any, routers: np.ndarray, applied: Snapshot, cost: np.ndarray,
                cost_far: np.ndarray | None = None) -> dict[int, str]:
        """Configuration text of each router in ``routers`` for the links as in ``applied``, announcing
        ``cost`` on near ends and ``cost_far`` (default ``cost``) on far ends."""
        a = emu.addr
        ends = emu.ends  # the veth pair that carries each slot now (an antenna alternates between two)
        far = np.where(applied.peer >= 0, applied.peer, emu.link_a)
        link_class = emu.timeline.link_class
        link_a = np.asarray(emu.link_a)
        access = np.asarray(link_class) == _ACCESS
        dest = destinations(emu.timeline, self.all_loopbacks)
        exported = (None if len(dest) == len(emu.names)
                    else tuple(f"{_ip(a.prefix[i])}/{int(a.prefix_len[i])}" for i in dest.tolist()))
        spare: dict[int, list[OspfInterface]] = {}  # router -> its ends of spare pairs brought up ahead
        for l, at in self._preformed.items():
            pair = 1 - int(ends.pair[l])
            for side, node in ((0, int(emu.link_a[l])), (1, at)):
                spare.setdefault(node, []).append(OspfInterface(a.pair_end(l, pair, side)[0], PREFORM_COST,
                                                                preformed=True,
                                                                ground=bool(link_class[l] == _GSL)))
        out = {}
        for r in routers.tolist():
            ifs = node_interfaces(r, emu.link_a, far, link_class, ends.ifname_a, ends.ifname_b, cost, cost_far)
            ifs += spare.get(r, [])
            hosts = link_a[access & (far == r)]  # the hosts (and compute nodes) whose access link ends here
            announced = tuple(f"{_ip(a.prefix[h])}/{int(a.prefix_len[h])}" for h in hosts.tolist())
            out[r] = bird_config(_ip(a.loopback[r]), ifs, self.options, self.daemons.log_path(emu.names[r]),
                                 emu.names[r], hidden=(a.plan.link_pool,), exported=exported, announced=announced)
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def start(self, emu: Any) -> None:
        from emulator.daemons import BirdDaemons

        if self.daemons is not None:
            raise ApplyError("this Ospf instance already drives an emulation", operation="ospf start")
        routers = np.flatnonzero(emu.is_router & emu.local)  # a host's part of a clustered run: its own
        self.daemons = BirdDaemons(emu.run_id, log_dir=getattr(emu, "log_dir", None))
        self._cost_a = self._cost_b = link_costs(emu.applied.params[:, 0], self.options.cost_per_ms)
        self._counts = dict.fromkeys(self._counts, 0)
        self._preformed = {}
        self._preform(emu, emu.applied.step, emu.applied)
        self._text = self.configs(emu, routers, emu.applied, self._cost_a)
        self._update_ms = []
        self.daemons.start([(emu.nodes[r], self._text[r]) for r in routers.tolist()])
        log.info("ospf: %d BIRD daemons started", len(routers))

    def update(self, emu: Any, step: int, applied: Snapshot, diff: Diff) -> None:
        """Push handovers at once and cost drift router by router, each at its own slot.

        Router ``r`` may be reconfigured for cost at steps ``k`` with ``(k + r) % slots == 0``
        (:func:`push_slots`: once per ``cost_push_interval_s``), so the pushes, and the LSA floods they
        start, are spread evenly over the steps instead of arriving together: each reconfiguration
        floods one router-LSA over every adjacency (about 2,500 packets at 402 routers, each held by the
        shaper), and ~60 routers pushed in the same step (rounds every 10 s) made the next steps up to
        2.4 s late on examples/campaign.toml. Only the configuration files are written here; the daemons
        are asked in the background (``reconfigure_later``).

        Antenna handovers within ``handover_lead_s`` get their spare pair into OSPF now (:meth:`_preform`);
        the gateway and the satellite it leaves skip their cost slot within MinLSInterval of their
        handover, so that the LSAs withdrawing the old link at the switch are not held back by one just
        before it.
        """
        if self.daemons is None:
            raise ApplyError("ospf is not started", operation="ospf update")
        t0 = time.perf_counter()
        o = self.options
        wanted = link_costs(applied.params[:, 0], o.cost_per_ms)
        slots = push_slots(o.cost_push_interval_s, emu.timeline.step_s)
        due = (step + np.arange(emu.n_nodes)) % slots == 0
        ant = emu.antenna_slots
        if o.handover_lead_s > 0 and len(ant):
            within = int(np.ceil(MIN_LS_INTERVAL_S / emu.timeline.step_s))
            soon, _ = next_handover(emu.timeline.peer[ant, step + 1:step + 1 + within], applied.peer[ant], step)
            ends = np.concatenate([emu.link_a[ant[soon >= 0]], applied.peer[ant[soon >= 0]]])
            due[ends[ends >= 0]] = False
        far = np.where(applied.peer >= 0, applied.peer, emu.link_a)
        cost_a, cost_b, drifted = cost_push(self._cost_a, self._cost_b, wanted, emu.link_a, far, diff.peer_links,
                                            due & emu.is_router, o.cost_tolerance_pct)
        # not a spare just handed over from: its old satellite must see it go down and withdraw it first
        spares = self._preform(emu, step, applied, skip=diff.peer_links)
        # a handover also renames the gateway's antenna interface (its other veth pair takes over)
        touched = [drifted, diff.old_peer, diff.new_peer, emu.link_a[diff.peer_links], spares]
        nodes = np.unique(np.concatenate([np.asarray(t, np.int64) for t in touched]))
        nodes = nodes[nodes >= 0]
        nodes = nodes[emu.is_router[nodes] & emu.local[nodes]]
        texts = self.configs(emu, nodes, applied, cost_a, cost_b)
        push = {r: t for r, t in texts.items() if self._text.get(r) != t}
        # the files are written now and the daemons asked in the background: a step must not wait for
        # hundreds of daemons on a busy machine (a failed round fails a later step, not silently)
        self.daemons.reconfigure_later([(emu.names[r], t) for r, t in push.items()])
        self._text.update(push)
        self._cost_a, self._cost_b = cost_a, cost_b
        self._counts["reconfigurations"] += len(push)
        self._counts["cost_reconfigurations"] += len(drifted)
        self._update_ms.append((time.perf_counter() - t0) * 1e3)
        log.debug("ospf step %d: %d routers' costs beyond the tolerance, %d daemons reconfigured", step,
                  len(drifted), len(push))

    def _preform(self, emu: Any, step: int, applied: Snapshot, skip: Any = ()) -> np.ndarray:
        """Bring the spare pairs of the antennas whose handover comes within ``handover_lead_s`` up and into
        OSPF (:func:`preform_slots`; not those of slots ``skip``), and those no longer due out of it; returns
        the routers whose interfaces this changed (both ends of each spare that came or went)."""
        o = self.options
        ant = emu.antenna_slots
        want = np.empty(0, np.int64)
        if o.handover_lead_s > 0 and len(ant):
            lead = int(np.ceil(o.handover_lead_s / emu.timeline.step_s - 1e-9))
            at = emu.spare_at(ant)
            want = ant[preform_slots(emu.timeline.peer[ant, step + 1:step + 1 + lead], applied.peer[ant],
                                     applied.state[ant] == 0, at)]
            want = np.setdiff1d(want, np.asarray(skip, np.int64))
        up = emu.hold_spares_up(want)  # the emulator skips parked spares
        new = {int(l): int(n) for l, n in zip(up.tolist(), emu.spare_at(up).tolist())}
        changed = [(l, n) for l, n in self._preformed.items() if new.get(l) != n]
        changed += [(l, n) for l, n in new.items() if self._preformed.get(l) != n]
        self._counts["handovers_preformed"] += sum(1 for l in new if l not in self._preformed)
        self._preformed = new
        return np.array([r for l, n in changed for r in (int(emu.link_a[l]), n)], np.int64)

    def stats(self) -> dict[str, Any]:
        """What the daemons were told during the run: ``reconfigurations`` (router configurations pushed,
        for cost drift or a handover), ``cost_reconfigurations`` (those for cost drift),
        ``handovers_preformed`` (antenna spares brought into OSPF ahead of their handover), the options that
        rule them, the CPU time the daemons have used (``daemons_cpu_s``), and the time :meth:`update` took
        in the step, ms (``update_ms_p50``, ``update_ms_max``)."""
        ms = np.asarray(self._update_ms, float)
        cpu = round(self.daemons.cpu_s(), 1) if self.daemons is not None else None
        return {**self._counts, "daemons_cpu_s": cpu, "cost_tolerance_pct": self.options.cost_tolerance_pct,
                "cost_push_interval_s": self.options.cost_push_interval_s,
                "update_ms_p50": round(float(np.median(ms)), 3) if len(ms) else None,
                "update_ms_max": round(float(ms.max()), 3) if len(ms) else None}

    def stop(self, emu: Any) -> None:
        if self.daemons is not None:
            self.daemons.stop()
            self.daemons = None
        self._text = {}
        self._preformed = {}


def _ip(addr: int) -> str:
    return str(ipaddress.IPv4Address(int(addr)))
