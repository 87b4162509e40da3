"""The live network: one namespace per node, one veth per link slot (two per gateway antenna), addresses,
shaping and routes, kept equal to the timeline step by step.

:class:`Emulation` builds step 0 (:meth:`~Emulation.build`), then moves to any step by applying the
difference between what is *applied* and what the timeline wants (:meth:`~Emulation.apply_step`), in
an order that never strands a route: links up and handovers, then delay/rate/loss, then routes, then
links down. Applying the same step twice changes nothing.

Kernel work goes through netlink only: veths are created with both ends directly in their target
namespaces (one RTM_NEWLINK each), addresses, link states and routes are sent in batches on one
socket per namespace (:mod:`emulator.rtnl`), sysctls are written under /proc/sys from inside the
namespace, never by forking ``ip``, ``tc`` or ``sysctl``.

What holds the namespaces: one process per run, the namespace holder (:mod:`emulator.kernel.holder`),
with one bind mount per namespace in its private mount namespace; no process, pty or descriptor per
node. A node's shell starts when first asked for (:mod:`emulator.nodes`). The namespaces' rtnetlink
sockets are opened when a batch needs them and closed within an open-file budget (:data:`rtnl.POOL`);
namespace descriptors (veth peers, moves) are opened around each batch and closed after it. Before
anything is built, :func:`emulator.kernel.budget.check` refuses a run this machine cannot hold.

Handovers are make-before-break. A gateway antenna has two veth pairs (``ant<k>``/``g<slot>`` and
``ant<k>b``/``g<slot>b``, :mod:`emulator.addressing`): the *active* one joins the gateway to its
satellite, the *spare* one waits, down, with its satellite end already in the namespace of the next
satellite the timeline gives that antenna. At a handover the spare comes up, shaping and routes turn
to it, then the old pair goes down where it is. Moving an interface between namespaces costs the
kernel 15-20 ms (spikes of several hundred) under the global rtnl lock, so it is kept off the clock:
:meth:`Emulation.prepare_ahead`, called between steps, moves the old pair on to the satellite after
next. Only a spare that is not in place when its handover comes (steps applied out of order, or no
time between them) is moved during the step; while it moves, the route computation and the shaping
of other links run alongside. An antenna without a satellite keeps its pair, down, where it was.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import re
import resource
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from routing.base import RouteTable, RoutingProtocol, get_protocol
from routing.daemon import DaemonProtocol, is_daemon_driven
from topologies.errors import ApplyError, ConfigError
from topologies.gsl import link_gap_ms
from topologies.timeline import LINK_CLASSES, Snapshot, Timeline, diff

from . import rtnl
from .addressing import Addressing, AddressPlan, LinkEnds, ip_str
from .clean import STATE_DIR, find_ours, kill_and_wait
from .clock import normal_priority
from .cluster.part import HostPart
from .kernel import budget
from .kernel.cpulatency import CpuLatencyHold
from .kernel.holder import Holder, HolderError
from .netns import entered, iproute_in
from .nodes import EmulatedNet, EmuNode, make_nodes, stop_nodes
from .routeworker import RouteWorker
from .spares import Remake, Remaker, remake_job

log = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_GSL = LINK_CLASSES.index("gsl")
_ACCESS = LINK_CLASSES.index("access")
_CREATE = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
#: Emulation.route_switch values
ROUTE_SWITCHES = ("in-place", "epoch")
#: route epochs: the two route tables of every router, the delay daemon's mark that selects each, and the
#: preferences of their rules (the next preference looks up the first table for unmarked packets)
EPOCH_TABLES = (101, 102)
EPOCH_MARKS = (0x53450001, 0x53450002)
EPOCH_PREFS = (100, 101)
#: ... and of the rule for unmarked packets (a router's own: ICMP errors and replies, its pings), which names
#: the table in use whenever the idle one is filled over several steps (below)
EPOCH_UNMARKED_PREF = EPOCH_PREFS[-1] + 1
#: Route epochs over several steps. A step with many more route changes than its neighbours (a slot
#: boundary, where every ground antenna and beam may change satellite at once: ~400,000 routes on the 2026
#: constellation with Starlink's gateways, 1.0-1.4 s of kernel time) cannot be sent ahead in one step's
#: time. Such steps ("heavy": at least EPOCH_HEAVY_SHARE of the most ground-link handovers of any step) get
#: the idle table for up to EPOCH_HORIZON_STEPS steps before them, filled a part each step, while the steps
#: in between change the table in use in place, each if its changes take the kernel at most
#: EPOCH_IN_PLACE_MS at the measured cost per route (else every step switches tables, as without them).
EPOCH_HEAVY_SHARE = 0.25
EPOCH_HORIZON_STEPS = 60
EPOCH_IN_PLACE_MS = 40.0
#: ... and after this many steps in a row too big for that, the steps before that heavy step stop trying
#: (each try packs the whole table: ~30 ms at 10^4 satellites)
EPOCH_REFUSALS = 3
#: ... and none of that when the last heavy step's routes took the kernel less than this share of a step
EPOCH_ONE_STEP_SHARE = 0.4
#: The time per route sent at full speed (what decides whether a step's routes go in place) is measured on
#: sends of at least this many routes, unpaced (the build's, a step's in place): on fewer, the per-namespace
#: Python work and the shaping beside them weigh more than the kernel's (a step's ~5,000 took 8-10 us each
#: against 2-2.5 us for 400,000). Routes sent ahead are paced (rtnl.AHEAD_PACE) and measured apart.
ROUTE_COST_MIN = 20_000
#: A heavy step's parts sent ahead are sized at the slowest time per route of this many sends ahead (with the
#: average, if higher): parts differ in cost (on the access example most took 5.1-5.9 us a route, the
#: boundary's last part 7.7 us, 74,104 routes in 570 ms against ~405 ms planned), and sized at the average
#: the slow one overran the next step's due time. Three alternated runs each (2026-12-06): steps that started
#: over 20 ms late 2-5 a run, the worst 61-134 ms, before; 1-2, the worst 43-61 ms, after. Sixteen sends
#: span the parts of one boundary (its 15 s slot, one send a step).
AHEAD_RATES_KEPT = 16
#: niceness of the route worker that computes heavy steps' tables ahead (the one computing each next step's
#: table, and the delay daemon, come first)
EARLY_WORKER_NICE = 10

#: sysctls every namespace needs (before any veth exists, so "default" reaches every interface); the holder
#: writes only those a new namespace does not already start with (here: none). Forwarding (routers) and
#: IPv6 (off) are set per interface through netlink instead (:func:`emulator.rtnl.link_conf_body`): a
#: write under /proc/sys costs a lookup that grows with the namespaces made so far (5 writes took 18.8 s
#: for 3,000 namespaces against 1.9 s with none, bench/bench_netns.py).
SYSCTLS = {
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}
#: ... and in routers, what the path probe needs: every TTL expiry answered. A new namespace starts with
#: icmp_ratelimit at 1000 ms per destination (its own default, not the host's: kernel 6.18), which lets a
#: probe at 5 rounds/s (the ``path`` default) see each router about once a second after a burst of 6.
#: Written in every router (the holder keeps the cost linear, :data:`emulator.kernel.holder.PROC_EVERY`).
ROUTER_SYSCTLS = {**SYSCTLS, "net/ipv4/icmp_ratelimit": "0"}
#: pyroute2 IPRoute objects kept open for shapers that ask for one (``ipr_of``), least recently used closed.
IPR_CACHE = 64
#: How long the build waits for the kernel to apply the carrier of the interfaces it brought up, s (its
#: linkwatch work may defer part of a burst by a second; :meth:`emulator.rtnl.Rtnl.pending_links`). In a CI
#: run a host's link still dropped its ARP requests 0.34 s after the clock started: every packet of the
#: first 1.3 s waited for the retransmission.
LINK_READY_TIMEOUT_S = 5.0
#: Where the namespace of a node on another host would be (a host's part of a clustered run): never created.
REMOTE_NS_DIR = "/nonexistent/satnetem-remote"
#: Tier of each kind of node, from the core of the network to its edge: what a node sends to a node of a
#: lower tier is held as it leaves the sender (Emulation._port), so that the receiver's kernel stamps its
#: arrival after the hold; what goes up or sideways is held where it arrives.
TIERS = {"sat": 3, "pop": 3, "gateway": 2, "terminal": 1, "host": 0, "compute": 0}


def tcp_nodes(traffic: Any) -> set[str]:
    """Names of the nodes a scenario's TCP flows (``[[traffic]]`` of kind iperf3-tcp, request, matrix or
    allreduce) start or end at: what they send is held where it arrives, as a packet held on its sender's
    egress still counts against the sending socket (TCP Small Queues)."""
    out: set[str] = set()
    for t in traffic:
        if t.kind in ("iperf3-tcp", "request", "matrix", "allreduce"):
            out.update(n for n in (t.src, t.dst, *t.endpoints, *t.nodes) if n)
    return out


#: Columns of ``steps.csv`` with where a step's apply time went, ms, and the :attr:`StepStats.timings_ms` key of
#: each: the pairs left at the step before taken down and the gaps it began ended (``before``); links up, with
#: the moves and route computation overlapped with them; the links taken over shaped; the links that keep
#: their pair shaped (overlapped with the route sends, ``routes_ms``); links down.
PHASE_COLUMNS = (("before_ms", "before"), ("links_up_ms", "links_up"), ("switched_ms", "params_switched"),
                 ("params_ms", "params"), ("links_down_ms", "links_down"))


def phase_cells(timings_ms: dict[str, float] | None, keys: tuple[str, ...] | None = None) -> list[str]:
    """A step's phase timings (:attr:`StepStats.timings_ms`), ms, as CSV cells: those of ``keys`` (default: in
    the order of :data:`PHASE_COLUMNS`), ``nan`` for a phase it did not time."""
    t = timings_ms or {}
    return [f"{t.get(k, float('nan')):.2f}" for k in (keys or tuple(k for _, k in PHASE_COLUMNS))]


@dataclass
class StepStats:
    """What one :meth:`Emulation.apply_step` did; timings in ms."""

    step: int
    links_up: int = 0
    links_down: int = 0
    handovers: int = 0
    moves_in_step: int = 0
    routes_prefetched: bool = False  # the route table was computed between steps (prefetch_routes)
    param_changes: int = 0
    routes_changed: int = 0
    routes_deleted: int = 0
    gaps: int = 0  # links that changed satellite with a handover gap (carry nothing until settle())
    routes_ahead: int = 0  # route epochs: routes sent into the idle table before the step (not in routes_changed)
    route_table: int = 0  # route epochs: the table packets use after the step (0 or 1)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access (the runner reads counts by name)."""
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("step", "links_up", "links_down", "handovers", "moves_in_step",
                                              "param_changes", "routes_changed", "routes_deleted",
                                              "routes_prefetched", "gaps", "routes_ahead", "route_table",
                                              "timings_ms")}


class Emulation:
    """A timeline made real in network namespaces.

    Parameters
    ----------
    timeline : Timeline
    shaper : emulator.shaping.Shaper
        Shaping backend; the emulation owns it from here on and closes it in :meth:`stop`.
    protocol : RoutingProtocol or str
        Routing protocol (or its registered name).
    delay_tolerance_ms : float
        Delay changes up to this much (against the applied delay) are not applied, ms.
    run_id : str, optional
        Marks this run's processes (``satnetem:<run_id>:<node>``); default ``<pid>-<random>``.
    address_plan : AddressPlan, optional
        Address pools (default: :class:`AddressPlan()`).
    log_dir : str or Path, optional
        Where routing daemons (daemon-driven protocols such as ``ospf``) write their logs, one file
        per node; default: the run's folder under /run/satnetem, removed at :meth:`stop`.
    part : emulator.cluster.part.HostPart, optional
        Build only one host's part of a clustered run: the namespaces of its nodes, the veth pairs with
        both ends on it, a VXLAN device for each of its ends of a link to another host (same name, index
        and address as the veth end), the shaping of the directions it sends and the routes of its routers
        (from the same table as a whole run's). :meth:`apply_step` does the same for the step's changes,
        handovers included: a spare pair whose ends come to be on two hosts, or back on one, changes form
        between a veth and VXLAN ends (:meth:`_moves_across`). A daemon-driven protocol runs its daemons in
        the host's own routers.

    Raises
    ------
    ConfigError
        Unsafe node names, inconsistent tables or too many nodes/links for the plan: raised here,
        before anything is built.
    """

    def __init__(self, timeline: Timeline, shaper: Any, protocol: RoutingProtocol | str,
                 delay_tolerance_ms: float = 0.01, run_id: str | None = None,
                 address_plan: AddressPlan | None = None, log_dir: Any = None, route_worker: bool = True,
                 part: HostPart | None = None, route_switch: str | None = None) -> None:
        if route_switch is not None:
            self.route_switch = route_switch
        if not delay_tolerance_ms >= 0:
            raise ConfigError(f"delay_tolerance_ms must be >= 0 ms, got {delay_tolerance_ms}",
                              key="delay_tolerance_ms")
        self.run_id = run_id or f"{os.getpid()}-{secrets.token_hex(3)}"
        if not RUN_ID_RE.fullmatch(self.run_id):
            raise ConfigError(f"run id {self.run_id!r} must match {RUN_ID_RE.pattern}", key="run_id")
        self.timeline = timeline
        self.shaper = shaper
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self.delay_tolerance_ms = float(delay_tolerance_ms)
        self.addr: Addressing = (address_plan or AddressPlan()).assign(timeline)
        self.log_dir = log_dir
        self.daemon_driven = is_daemon_driven(self.protocol)
        n = len(timeline.nodes)
        self.n_nodes = n
        self.names = [nd.name for nd in timeline.nodes]
        self.is_router = self.addr.is_router
        self.link_a = timeline.link_a.astype(np.int64)
        self.part = part
        self._underlay_new = False  # set_underlay was called: re-shape the links to other hosts at the next step
        if part is not None:
            if part.host_of.shape != (n,):
                raise ConfigError(f"the host part places {part.host_of.shape[0]} nodes, the timeline has {n}",
                                  key="host_of")
        # the nodes built here: all of them, or this host's in a clustered run
        self.local: np.ndarray = np.ones(n, bool) if part is None else part.local
        # what a node sends to a node of a lower tier is held as it leaves it (see _port), unless a TCP flow
        # starts or ends at the sender (tcp_nodes, set before build())
        self._tier = np.array([TIERS.get(nd.kind, 0) for nd in timeline.nodes], np.int64)
        self._sends_tcp = np.zeros(len(timeline.nodes), bool)
        #: names of the nodes the scenario's TCP flows start or end at (see :func:`tcp_nodes`)
        self.tcp_nodes: set[str] = set()
        self._egress_groups = False  # decided by build()
        self.is_gsl = timeline.link_class == _GSL
        self.is_access = timeline.link_class == _ACCESS
        self.nodes: list[EmuNode] = []
        self.net: EmulatedNet | None = None
        self._rtnl: list[rtnl.Rtnl] = []
        self._ipr: OrderedDict[int, Any] = OrderedDict()
        self.holder: Holder | None = None
        self.needs: budget.RunNeeds | None = None
        self.build_counts: dict[str, int] = {}
        self.ends = LinkEnds(self.addr)  # which veth pair carries each slot now
        # namespace holding the far end of each slot's veth pairs (column 1: antennas' spares only, else -1)
        self._pfar: np.ndarray = np.full((timeline.n_links, 2), -1, np.int64)
        self._far: np.ndarray = np.full(timeline.n_links, -1, np.int64)  # ... of the active pair
        # the shaper's number for the port of (link, pair, side), -1: none (shapers with set_delays), and the
        # far end the pair had when it was numbered
        self._fast_id: np.ndarray = np.full((timeline.n_links, 2, 2), -1, np.int64)
        self._fast_far: np.ndarray = np.full((timeline.n_links, 2), -2, np.int64)
        self._antennas = np.flatnonzero(self.addr.has_spare)
        self._spares_at = np.empty(0, np.int64)  # step each spare was placed for at build
        self.applied: Snapshot = timeline.empty_snapshot()
        self.routes: RouteTable | None = None
        self._inst_nh: np.ndarray = np.empty((0, n), np.int32)
        self._inst_link: np.ndarray = np.empty((0, n), np.int32)
        self._dest_row: dict[int, int] = {}
        self._covered: np.ndarray = np.empty(0, bool)  # per destination row: reached through its router's block
        self._route_pfx: np.ndarray = np.empty(0, np.int64)  # per node: the prefix routes to it use
        self._route_plen: np.ndarray = np.empty(0, np.int64)
        self._inst_version = 0  # changes with every change of the installed record (_inst_nh, _inst_link)
        self._ports: dict[tuple[int, int, int], tuple[int, Any]] = {}  # (link, pair, side) -> (far node, Port)
        # a table's differences from the installed routes, packed as messages between steps (_pack_routes)
        self._prepared: _RoutePack | None = None
        self._built = False
        self._stopped = False
        self._gc_frozen = False
        self.build_timings_ms: dict[str, float] = {}
        self._prefetched: tuple[Snapshot, RouteTable] | None = None
        # route computation in a forked child (emulator/routeworker.py), started by build()
        self._use_worker = bool(route_worker) and not self.daemon_driven
        self._worker: RouteWorker | None = None
        self._worker_snap: Snapshot | None = None  # the snapshot the worker's pending request is for
        # Routes go through nexthop objects, one per interface end of a router (see _nexthop): not with
        # routing daemons, which manage their own routes and nexthops.
        self._use_nh = not self.daemon_driven
        self._compute_s = 0.0  # how long the last prefetched route computation took
        # handover gaps: per link slot, ms a change of satellite leaves it carrying nothing; the links in a
        # gap now and when (time.monotonic()) it began (ended by settle(), or by the next apply_step)
        self.gap_ms = link_gap_ms(timeline)
        self._gap_links: np.ndarray = np.empty(0, np.int64)
        self._gap_t0 = 0.0
        # antenna slot -> its spare pair, held up ahead of a handover at a routing daemon's request
        self._spares_up: dict[int, int] = {}
        # antenna slot -> its spare pair being deleted and made again at its next satellite by the worker
        # threads of emulator/spares.py (one host; a clustered run's part moves them, _start_moves)
        self._remaker: Remaker | None = None
        self._remaking: dict[int, Remake] = {}
        #: told each interface the run is about to delete itself, (node name, interface name): the run's
        #: watch for interfaces deleted from outside (set by :func:`emulator.watchdog.link_deletions`)
        self.expect_deleted: Callable[[str, str], None] | None = None
        # Route epochs (route_switch "epoch", see _preinstall): every router has two route tables; packets use
        # the one the delay daemon's mark names (EPOCH_MARKS), the other is filled with the next step's
        # routes between steps, and the step switches marks. _recs holds the installed record of each table;
        # _inst_nh/_inst_link are _recs[_rec_i]'s, the table written next (the idle one, with epochs).
        self._epochs = False
        self._recs: list[tuple[np.ndarray, np.ndarray]] = []
        self._rec_i = 0
        self._active = 0  # the table packets use now (epochs)
        self._ahead: RouteTable | None = None  # the table whose routes are in the idle table ahead of its step
        self._ahead_routes = 0  # routes sent ahead for it
        self._route_us = 5.0  # time per route sent unpaced, us (ROUTE_COST_MIN; decides what goes in place)
        self._ahead_us = 1e6 / rtnl.AHEAD_PACE  # time per route sent ahead, paced, us (the average)
        self._ahead_rates: deque[float] = deque(maxlen=AHEAD_RATES_KEPT)  # the last sends' own, us
        self._pack_s = 0.0  # how long the last whole-table comparison for packing routes took, s
        self._pack_us = 0.0  # packing time per route packed, beyond that comparison, us (measured)
        self._spare_up_ms = 1.5  # kernel time to bring one spare pair up with its nexthops, ms (measured)
        self._ahead_last = 0  # routes the last _preinstall wanted to send ahead
        # each record's version (see _inst_version) while it is not the current one; versions are unique
        self._rec_vers = [0, 0]
        self._ver_seq = 0
        self._heavy: np.ndarray = np.empty(0, np.int64)  # heavy steps (EPOCH_HEAVY_SHARE), sorted
        self._heavy_set: frozenset[int] = frozenset()
        self._early: tuple[int, tuple[Snapshot, RouteTable]] | None = None  # a heavy step's table, computed ahead
        self._early_s = 0.0  # how long computing it took, s
        self._unmarked = 0  # the table the rule for unmarked packets names
        self._filling: int | None = None  # the heavy step the idle table is being filled for
        self._filled = 0  # routes sent into the idle table for it in the steps before the last
        self._fill_left: int | None = None  # its changes not sent yet at the last count (None: not counted)
        # route epochs over several steps: a second worker computes heavy steps' tables, so that the first
        # computes every step's own in time; the heavy step and snapshot it computes now
        self._early_worker: RouteWorker | None = None
        self._early_job: tuple[int, Snapshot] | None = None
        self._deferred_down: list[tuple[int, int]] = []  # pairs handed over from at a switch, down after it
        self._unmarked_due = False  # the rule for unmarked packets to follow the table switched to, after it
        self._refused = (-1, 0)  # heavy step, times in a row its steps before it were too big to go in place
        self._heavy_need: int | None = None  # routes the last heavy step changed (ahead and at it)

    # ------------------------------------------------------------------------------ public API
    #: Optional ``f(snapshot) -> snapshot`` applied to the timeline's snapshot of every step before it is
    #: applied (and routes are computed on it): the scripting API's failures (:mod:`emulator.api`). Only
    #: what is applied changes; the timeline itself does not, so protocols that read its future
    #: (``predictive``) cannot see an unplanned failure coming.
    target_filter: Callable[[Snapshot], Snapshot] | None = None
    #: Queue of each link class's rate limit, full-size packets (``[emulation] queue_packets``); a class not
    #: in it keeps the shaper's default. Set before :meth:`build`.
    queue_packets: dict[str, int] | None = None
    #: How a step changes routes (``[emulation] route_switch``): ``"in-place"``, one table per router changed
    #: route by route at the step (the kernel's cost, ~4.5 us a route, is paid after the due time); or
    #: ``"epoch"``, two tables per router, the next step's filled between steps and switched to at the step
    #: by the delay daemon (userspace backend, computed routes, one host). Set before :meth:`build`.
    route_switch: str = "in-place"
    #: Hold the kernel's CPU latency request at 0 us from :meth:`build` to :meth:`stop`
    #: (:mod:`emulator.kernel.cpulatency`: idle CPUs poll, so timers wake the delay daemon on time).
    #: ``[emulation] keep_cpus_awake``; ``SATNETEM_KEEP_CPUS_AWAKE=0`` in the environment turns it off for every
    #: run there (a TCG-emulated VM, where a polling idle vCPU burns a host core). Set before :meth:`build`.
    keep_cpus_awake: bool = True
    #: The request itself (None: not asked for); ``cpu_hold.held`` says whether the kernel took it.
    cpu_hold: CpuLatencyHold | None = None

    def target(self, step: int) -> Snapshot:
        """The snapshot :meth:`apply_step` brings the network to: the timeline's, through
        :attr:`target_filter` if one is set."""
        snap = self.timeline.snapshot(step)
        return snap if self.target_filter is None else self.target_filter(snap)

    def reinstall_host_routes(self, links: np.ndarray) -> None:
        """Install again the default route of the host or compute node behind each access link in
        ``links`` (up by now). The kernel drops that route while the link is down, which only a script's
        failure or a scheduled event does: :mod:`emulator.api` and :meth:`apply_step` call this when such a
        link comes back."""
        a = self.addr
        for l in np.asarray(links, np.int64).tolist():
            i = int(self.link_a[l])  # an access link's near end is its host (topologies.plan)
            if not self.local[i]:
                continue
            b = rtnl.Batch()
            b.add(rtnl.RTM_NEWROUTE, _CREATE,
                  rtnl.route_body(0, 0, int(a.gateway_addr[i]), int(a.ifindex_a[l]), int(a.addr_a[l])),
                  f"default via {ip_str(a.gateway_addr[i])}")
            self._rtnl[i].check(b, "default route")

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def node(self, name: str) -> EmuNode:
        """The Mininet node called ``name`` (has ``cmd``/``popen``)."""
        i = self.timeline.node_index(name)
        if not self.nodes:
            raise ApplyError("the emulation is not built", node=name, operation="node")
        if not self.local[i]:
            assert self.part is not None
            raise ApplyError(f"runs on host {self.part.host_of[i]}, not on this one", node=name, operation="node")
        return self.nodes[i]

    def address_of(self, name: str) -> str:
        """The IPv4 address to reach node ``name`` at (a router's loopback, a host's own address)."""
        return self.addr.address_of(self.timeline.node_index(name))

    @property
    def pids(self) -> list[int]:
        """Process ids of the node shells started so far (a shell starts on a node's first ``cmd``)."""
        return [n.pid for n in self.nodes if n.shell is not None and n.pid is not None]

    @property
    def _daemons(self) -> DaemonProtocol:
        """The protocol as daemon-driven (only where :attr:`daemon_driven`). is_daemon_driven checks
        ``kind == "daemon"``, a contract a plugin may meet without subclassing DaemonProtocol: the cast
        states it for the type checker and checks nothing."""
        return cast(DaemonProtocol, self.protocol)

    def build(self) -> None:
        """Create every node, link, address, sysctl, shaping and route of step 0."""
        if self._built or self._stopped:
            raise ApplyError("build() may be called once, before stop()", operation="build")
        if self.route_switch not in ROUTE_SWITCHES:
            raise ConfigError(f"route_switch must be one of {', '.join(ROUTE_SWITCHES)}, got {self.route_switch!r}",
                              key="route_switch")
        if self.route_switch == "epoch":
            why = ("the protocol runs routing daemons" if self.daemon_driven
                   else "this is one host's part of a clustered run" if self.part is not None
                   else f"the {getattr(self.shaper, 'name', '?')} shaper has no delay daemon to mark packets"
                   if not hasattr(self.shaper, "route_epoch") else None)
            if why is not None:
                raise ConfigError(f"route_switch = \"epoch\" needs the userspace shaper, computed routes and one "
                                  f"host: {why}", key="route_switch")
            self._epochs = True
        self._built = True
        # what a node sends toward the edge is held as it leaves it, with the userspace shaper's catch-all
        # rules and the interface groups set at creation (see _port) -- unless TCP starts or ends at that node,
        # whose sockets a held departure would throttle (TCP Small Queues)
        index = {n: i for i, n in enumerate(self.names)}
        self._sends_tcp[[index[n] for n in self.tcp_nodes if n in index]] = True
        self._egress_groups = getattr(self.shaper, "name", "") == "userspace"
        tcp_sats = [n for n in sorted(self.tcp_nodes) if n in index and self.timeline.nodes[index[n]].kind == "sat"]
        if self._egress_groups and tcp_sats:
            # a link's moving end is a satellite and keeps the group it was made with: the rule cannot be per
            # satellite, so with TCP on any satellite every link direction is held where it arrives
            self._egress_groups = False
            log.info("TCP flows start or end at satellite %s: every link direction is held where it arrives",
                     tcp_sats[0])
        if self.keep_cpus_awake:
            self.cpu_hold = CpuLatencyHold(0)
            self.cpu_hold.hold()
        t = {}
        t0 = time.perf_counter()
        try:
            here, peer = self.local, self.timeline.peer
            touch = here[self.link_a] | ((peer >= 0) & here[np.maximum(peer, 0)]).any(axis=1)  # slots with an end here
            workers = int(self._use_worker) * (2 if self._epochs else 1)  # (with epochs, one for heavy steps)
            self.needs = budget.needs(int(here.sum()), int(touch.sum() + touch[self._antennas].sum()),
                                      str(getattr(self.shaper, "name", "?")), route_worker=workers)
            budget.check(self.needs)  # refuses in one line, before anything exists
            _raise_fd_limit(max(self.needs.fds_all_open, self.needs.shaper_fds))
            before = budget.descendants()
            ptys_before = budget.ptys_in_use()
            if self._use_worker:  # forked first: it inherits no namespace, socket or shaper descriptor
                self._worker = RouteWorker(self.protocol, self.timeline)
                if self._epochs:  # its tables are wanted steps later: the CPU goes to the first one's first
                    self._early_worker = RouteWorker(self.protocol, self.timeline)
                    try:
                        os.setpriority(os.PRIO_PROCESS, self._early_worker.pid, EARLY_WORKER_NICE)
                    except OSError as e:
                        log.warning("route worker for heavy steps: niceness not set: %s", e.strerror)
            inodes = self._namespaces()
            self._write_state(inodes)
            self.net = EmulatedNet(self.nodes, self.stop)
            self._rtnl = [rtnl.Rtnl(nd.ns_path, nd.name) for nd in self.nodes]
            t["namespaces"] = _ms(t0)
            t1 = time.perf_counter()
            target = self.timeline.snapshot(0)
            # Interfaces stay down until shaped: a root or ingress qdisc grafted on an interface that is up
            # first deactivates the device (dev_deactivate), which waits for an expedited RCU grace period;
            # on a down one it does not (4.4k satellites: 36,000 grafts).
            ups = self._create_links(target)
            t["links"] = _ms(t1)
            t1 = time.perf_counter()
            prepare_nodes = getattr(self.shaper, "prepare_nodes", None)
            if prepare_nodes is not None:  # one request for every namespace
                # every interface but lo is one end of a link, shaped both ways with its peer named (a VXLAN
                # end, whose peer is on another host, is held on its egress instead: arrivals on it pass)
                prepare_nodes([(nd.name, nd.ns_path) for nd in self._local_nodes()], self._ipr_of,
                              all_ports_held=True)
            else:
                for nd in self._local_nodes():
                    self.shaper.prepare_node(nd.name, nd.ns_path, self._ipr_of(nd.name))
            self.applied = target
            self._shape(np.arange(self.timeline.n_links), target)
            self._shape_spares(self._antennas, self._spares_at)
            for i, b in enumerate(ups):
                if b.requests:
                    self._rtnl[i].check(b, "bring interfaces up")
            up_ends = {i: _up_indexes(b) for i, b in enumerate(ups) if b.requests}
            self._make_nexthops(np.flatnonzero(target.up & (target.peer >= 0)))
            t["shaping"] = _ms(t1)
            t1 = time.perf_counter()
            if self.daemon_driven:  # routing daemons find the routes; hosts keep their default route
                self._host_routes()
                self._daemons.start(self)
            else:
                self._routes_init()
                self._host_routes()
                self._update_routes(0, target)
                if self._epochs:  # both tables hold step 0; packets use the first
                    assert self.routes is not None
                    self._use_record(1)
                    self._install_routes(self.routes, current=False)
                    self._epoch_rules()
                    self.shaper.route_epoch(EPOCH_MARKS[0])
                    self._heavy = self._heavy_steps()
                    self._heavy_set = frozenset(self._heavy.tolist())
            t["routes"] = _ms(t1)
            t1 = time.perf_counter()
            pending = self._settle_links(up_ends, LINK_READY_TIMEOUT_S)
            t["links_ready"] = _ms(t1)
            t["total"] = _ms(t0)
            self.build_timings_ms = t
            # counted from /proc, not from what was started: every process and pty the build added
            assert self.holder is not None
            self.build_counts = {"processes_added": len(budget.descendants() - before),
                                 "ptys_added": budget.ptys_in_use() - ptys_before,
                                 "namespaces": int(self.local.sum()), "holder_pid": self.holder.pid or 0,
                                 "sockets_open": rtnl.POOL.stats()["open"],
                                 "socket_budget": rtnl.socket_budget(),
                                 # interfaces up whose carrier the kernel had not applied when the build asked
                                 "links_pending": pending}
            # The build leaves ~10^6 long-lived objects (nodes, interfaces, Mininet shells); a full
            # collection that scans them all takes ~50 ms and would land inside some step. Frozen, they
            # are left out of every collection until stop().
            gc.freeze()
            self._gc_frozen = True
            log.info("built %d nodes, %d links in %.0f ms (%s); added %d processes and %d ptys", self.n_nodes,
                     self.timeline.n_links, t["total"], ", ".join(f"{k} {v:.0f}" for k, v in t.items()),
                     self.build_counts["processes_added"], self.build_counts["ptys_added"])
        except BaseException:
            self.stop()
            raise

    def apply_step(self, step: int) -> StepStats:
        """Bring the live network to timeline step ``step``; return counts and timings (ms).

        Raises
        ------
        ApplyError
            A kernel request failed (names the node, link and operation).
        """
        if not self._built or self._stopped:
            raise ApplyError("the emulation is not running", operation="apply_step")
        tb = time.perf_counter()
        self._down_deferred()
        self._end_gap()  # a gap of the step before that settle() did not end (steps played back to back)
        t0 = time.perf_counter()
        target = self.target(step)
        d = diff(self.applied, target, self.delay_tolerance_ms)
        stats = StepStats(step)
        stats.timings_ms["before"] = (t0 - tb) * 1e3
        new_state = self.applied.state.copy()
        new_state[d.state_links] = d.new_state
        up_now = new_state == 0
        # the state the kernel will have after steps 1 and 2: what routes are computed on
        applied = Snapshot(step, new_state, self.applied.peer.copy(), self.applied.params.copy())
        applied.peer[d.peer_links] = d.new_peer
        applied.params[d.param_links] = d.new_params
        # 0. handover gaps: a link that changes satellite carries nothing from now until settle() ends the
        # gap; the pair it leaves drops everything at once, the pair it takes is shaped so below
        gap = d.peer_links[(d.old_peer >= 0) & (d.new_peer >= 0)]
        gap = gap[(self.gap_ms[gap] > 0) & up_now[gap]]
        shaped = applied
        if len(gap):
            self._gap_t0 = time.monotonic()
            self._gap_links = gap
            self._shape(gap, self._blocked(self.applied, gap))
            shaped = self._blocked(applied, gap)
            stats.gaps = len(gap)
        # 1. handovers: the spare pair takes over (moved now only if prepare_ahead did not put it there)
        switch, moves = [], []
        for l, p in zip(d.peer_links.tolist(), d.new_peer.tolist()):
            if p < 0:  # no satellite: the pair goes down where it is (with the state change, step 4)
                continue
            # a host's part books every handover, its ends or not (_moves_across), so that every host agrees
            # which pair is active and where each pair's far end is
            act = int(self.ends.pair[l])
            remade = self._remaking.get(l)
            if remade is not None and remade.new != p:  # its spare is being remade for another satellite
                self._collect([remade], wait=True)
            if self._pfar[l, act] == p:  # back on the satellite its pair is still at
                continue
            if self._pfar[l, 1 - act] != p:
                moves.append((l, 1 - act, p))
            switch.append(l)
        stats.moves_in_step = len(moves)
        # Each move keeps the kernel busy ~15-20 ms (the deletion's RCU barrier, or a clustered run's move
        # under the rtnl lock) in threads that release the GIL: the route computation and the shaping of
        # links that stay where they are run meanwhile.
        job = self._start_moves(moves)
        switched = np.asarray(switch, np.int64)
        table = None
        t_compute = 0.0
        try:
            if not self.daemon_driven:
                tc = time.perf_counter()
                table = self._take_prefetched(applied)
                stats.routes_prefetched = table is not None
                if table is None:
                    table = self._compute_routes(step, applied)
                t_compute = _ms(tc)
        finally:
            self._finish_moves(job)
        old_pairs = []
        for l in switch:
            old = int(self.ends.pair[l])
            self.ends.use(l, 1 - old)
            self._far[l] = self._pfar[l, 1 - old]
            old_pairs.append((l, old))
        attached = d.peer_links[(d.new_peer >= 0) & up_now[d.peer_links]]
        # a spare held up ahead of its handover (route epochs) is up with its nexthops already
        attached = np.array([l for l in attached.tolist() if self._spares_up.get(l) != int(self.ends.pair[l])],
                            np.int64)
        self._set_links(np.union1d(d.went_up, attached), True, applied.peer)
        back = d.went_up[self.is_access[d.went_up]]
        if len(back):  # back from a scheduled event ([[events]]): the kernel dropped the host's default route
            self.reinstall_host_routes(back)
        stats.links_up = len(d.went_up)
        stats.handovers = len(d.peer_links)
        t1 = time.perf_counter()
        stats.timings_ms["links_up"] = (t1 - t0) * 1e3  # includes the overlapped work below
        stats.timings_ms["compute_overlapped"] = t_compute
        if job is not None:
            stats.timings_ms["moves_kernel"] = job.kernel_ms
        # the pairs taken over first: one in a handover gap must drop everything before a route uses it
        self._shape(switched, shaped)
        stats.param_changes = len(d.param_links)
        t2 = time.perf_counter()
        stats.timings_ms["params_switched"] = (t2 - t1) * 1e3
        # 3. routes, sent from a thread while this one shapes the links that keep their pair (2.). The
        # sends run in C without the interpreter lock (rtnl.run_packed_many), the shaping is Python: at
        # 10^4 satellites ~60 ms of route sends and ~20 ms of shaping a step, no longer one after the other.
        # The shaping starts once the route thread's own Python is done (held), not interleaved with it.
        # With route epochs: into the idle table if this table's routes went there ahead (the rest now, then
        # the switch); else in place, into the table in use, as without epochs.
        # A heavy step whose idle table was filled over the steps before it switches even when its own table
        # is not the one sent ahead (the route worker late at the step before, a failure injected meanwhile):
        # what differs goes into the idle table now, against that table's record (a few thousand routes, where
        # in place it would be the whole boundary: 330,000-400,000 in 0.8-1.0 s at 10^4 satellites).
        flip = self._epochs and table is not None and (table is self._ahead or self._filling == step)
        if self._epochs:
            stats.routes_ahead = self._ahead_routes + (self._filled if self._filling == step else 0) if flip else 0
            self._ahead, self._ahead_routes = None, 0
            if not flip:
                self._use_record(self._active)
        installer = _Installer(self, table) if table is not None else None
        try:
            if installer is not None:
                installer.held.wait()
            tp = time.perf_counter()
            params = np.setdiff1d(d.param_links, switched)
            if self._underlay_new:  # measured again: every link to another host gets the new correction
                self._underlay_new = False
                params = np.union1d(params, self._cross_links(shaped))
            self._shape(params, shaped)
            stats.timings_ms["params"] = _ms(tp)
        finally:
            if installer is not None:
                stats.routes_changed, stats.routes_deleted = installer.join()
            if self._epochs:
                if flip:
                    te = time.perf_counter()
                    self.shaper.route_epoch(EPOCH_MARKS[self._rec_i])
                    self._active = self._rec_i
                    # a router's own packets follow after the step, before the pairs handed over from go down
                    self._unmarked_due = self._filling == step
                    self._filling = None
                    stats.timings_ms["epoch"] = _ms(te)
                stats.route_table = self._active
                self._use_record(1 - self._active)
        t3 = time.perf_counter()
        stats.timings_ms["routes"] = (t3 - t2) * 1e3  # includes the overlapped shaping
        # 4. links down, and the pairs handed over from (no route uses them any more)
        self._set_links(d.went_down, False, applied.peer)
        if (self._epochs and flip) or self.part is not None:
            # no route of the table in use goes through them: down after the step (_down_deferred). A host's
            # part: at its next step, when every host has switched (another host's routers may still send
            # over the pair until they apply this step)
            self._deferred_down += old_pairs
        else:
            self._pairs_down(old_pairs)
            if self._epochs:  # the idle table's routes through them left with their nexthops
                self._forget_pairs(old_pairs)
        stats.links_down = len(d.went_down)
        if self._epochs and step in self._heavy_set:
            self._heavy_need = stats.routes_ahead + stats.routes_changed + stats.routes_deleted
        self.applied = applied
        t4 = time.perf_counter()
        stats.timings_ms["links_down"] = (t4 - t3) * 1e3
        if self.daemon_driven:  # the daemons see links go up/down themselves; tell them costs, handovers
            self._daemons.update(self, step, applied, d)
            stats.timings_ms["daemons"] = (time.perf_counter() - t4) * 1e3
            t4 = time.perf_counter()
        stats.timings_ms["total"] = (t4 - t0) * 1e3
        return stats

    def settle(self, speed: float = 1.0) -> int:
        """End the handover gaps the last :meth:`apply_step` began, each when it is due: sleep until
        ``handover_interruption_ms / speed`` after the step began them, then shape the links again with the
        step's parameters. Returns how many links it ended (0 when there were none; at once when they are
        overdue). Call it after each step (``Playback`` does); the next :meth:`apply_step` ends any left."""
        links = self._gap_links
        if not len(links):
            return 0
        for gap_ms in np.unique(self.gap_ms[links]).tolist():
            due = self._gap_t0 + gap_ms / 1000.0 / speed
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._end_gap(links[self.gap_ms[links] == gap_ms])
        return len(links)

    def _end_gap(self, links: np.ndarray | None = None) -> None:
        """Shape ``links`` (default: every link still in a gap) with the applied parameters again."""
        links = self._gap_links if links is None else links
        if not len(links):
            return
        self._shape(links, self.applied)
        self._gap_links = np.setdiff1d(self._gap_links, links)

    @staticmethod
    def _blocked(snap: Snapshot, links: np.ndarray) -> Snapshot:
        """``snap`` with 100 % loss on ``links``: what a link in a handover gap is shaped with."""
        params = snap.params.copy()
        params[links, 2] = 100.0
        return Snapshot(snap.step, snap.state, snap.peer, params)

    def prepare_ahead(self, step: int, until: float | None = None) -> int:
        """Between steps: put each antenna's spare pair on the next satellite the timeline gives the
        antenna after ``step`` (moved, addressed, shaped with the parameters of the step it will be
        used at, and left down), so that the handover itself moves nothing.

        Parameters
        ----------
        step : int
            The step just applied.
        until : float, optional
            ``time.monotonic()`` deadline (the next step's due time): no move is started within 50 ms
            of it; the rest wait for the next call (or are moved by the handover itself).

        Then, time permitting, the route table of ``step + 1`` is computed (:meth:`prefetch_routes`).

        Returns
        -------
        int
            Spare pairs moved, or handed to the worker threads that remake them (:meth:`_move_spares_ahead`).
        """
        if self.part is not None:
            # A host's part (no route worker, no route epochs): spares to their next satellites, across hosts
            # too (_moves_across); those taken over at the next step come up now with their nexthops, so that
            # whichever host applies the step first finds the other hosts' ends of its new pairs up
            done = self._move_spares_ahead(step, until)
            if self.routes is not None and step + 1 < self.timeline.n_steps:
                self._spares_ahead(self.target(step + 1), until)
            self.prefetch_routes(step + 1, until)
            return done
        if self._worker is not None:  # the child computes while this thread moves spares
            self.prefetch_routes(step + 1, time.monotonic())
        self._down_deferred()
        # on one host the spares are handed to worker threads (their deletions' waits do not hold the kernel's
        # rtnl lock): this takes no share of the time the heavy step's routes are sent ahead in
        done = self._move_spares_ahead(step, until)
        if self._epochs and until is not None:
            # the worker's table is waited for only while there is time left to send it ahead
            self.prefetch_routes(step + 1, until - min(0.5, 0.1 + self._ahead_last * self._ahead_us * 1e-6))
            if not self._fill_for_heavy(step, until):
                self._preinstall(until)
        else:
            self.prefetch_routes(step + 1, until)
            if self._epochs and not self._fill_for_heavy(step, until):
                self._preinstall(until)
        return done

    def _down_deferred(self) -> None:
        """Route epochs: the pairs handed over from at the last switch go down, between steps: each costs the
        kernel a grace period (the ~375 of a slot boundary took 0.6-0.7 s at the step). No route of the table
        in use goes through them; the idle table's (the step before's) did, and the kernel removed those with
        their nexthops: its record (the current one between steps) forgets them."""
        if self._stopped:
            return
        if self._unmarked_due:
            self._unmarked_due = False
            self._point_unmarked(self._active)
        pairs, self._deferred_down = self._deferred_down, []
        if not pairs:
            return
        self._pairs_down(pairs)
        if self._epochs:
            self._forget_pairs(pairs)

    def _going_down(self, slots: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Per slot: whether its pair ``pairs[i]`` was handed over from and waits to go down (a host's part
        keeps it up until its next step): it is neither moved nor brought up ahead until then."""
        if not self._deferred_down:
            return np.zeros(len(slots), bool)
        waiting = set(self._deferred_down)
        return np.array([(int(l), int(p)) in waiting for l, p in zip(slots, pairs)], bool)

    def _forget_pairs(self, pairs: list[tuple[int, int]]) -> None:
        """The current record (the idle table's, between steps) forgets its routes through the link slots of
        these veth pairs, gone down with their nexthops (routes through the slot's other pair too: sent again
        if still wanted)."""
        for l, pair in pairs:
            for node in (int(self.link_a[l]), int(self._pfar[l, pair])):
                if self.is_router[node] and self.local[node]:
                    self._forget_routes_via(node, l, every_table=False)

    def _heavy_steps(self) -> np.ndarray:
        """Route epochs: the steps with at least EPOCH_HEAVY_SHARE of the most ground-link changes of
        satellite (or to none) that any step has (slot boundaries, where they all happen), sorted."""
        gsl = np.flatnonzero(self.timeline.link_class == _GSL)
        if not len(gsl) or self.timeline.n_steps < 2:
            return np.empty(0, np.int64)
        peer = self.timeline.peer[gsl]
        n = (peer[:, 1:] != peer[:, :-1]).sum(axis=0)
        if not n.any():
            return np.empty(0, np.int64)
        return (np.flatnonzero(n >= max(1.0, EPOCH_HEAVY_SHARE * float(n.max()))) + 1).astype(np.int64)

    def _heavy_after(self, nxt: int) -> int | None:
        """Route epochs: the first heavy step after step ``nxt`` within EPOCH_HORIZON_STEPS, unless ``nxt``
        is heavy itself (None then, and without one)."""
        i = int(np.searchsorted(self._heavy, nxt))
        if i >= len(self._heavy) or int(self._heavy[i]) == nxt or int(self._heavy[i]) - nxt > EPOCH_HORIZON_STEPS:
            return None
        return int(self._heavy[i])

    def _fill_wanted(self, heavy: int) -> bool:
        """Whether the idle table is to be filled for ``heavy`` over several steps: not once the steps before
        it were too big to change in place EPOCH_REFUSALS times in a row (every step switches tables then),
        nor when the last heavy step's routes took less than EPOCH_ONE_STEP_SHARE of a step (the step before
        it sends them)."""
        if self._refused[0] == heavy and self._refused[1] >= EPOCH_REFUSALS:
            return False
        return (self._heavy_need is None
                or self._heavy_need * self._route_us * 1e-6 >= EPOCH_ONE_STEP_SHARE * self.timeline.step_s)

    def _fill_for_heavy(self, step: int, until: float | None) -> bool:
        """Route epochs over several steps (EPOCH_HEAVY_SHARE), between steps: when a heavy step comes after
        the next one, within EPOCH_HORIZON_STEPS, and the next step's changes to the table in use fit in
        EPOCH_IN_PLACE_MS, the next step changes that table in place (its routes packed now) and the idle
        table gets as many of the heavy step's routes (computed once, ahead) as the time left allows; the
        step before the heavy one sends the rest as usual (:meth:`_preinstall`) and the heavy step switches
        tables. Returns whether it chose so (else the next step switches tables)."""
        heavy = self._heavy_after(step + 1)
        if heavy is None or self._stopped or not self._fill_wanted(heavy):
            return False
        if until is not None and time.monotonic() > until - 0.05 - self._pack_s:
            return True  # no time left: the next step packs its own changes and changes the table in use
        if self._prefetched is not None:  # else the next step computes its own and changes the table in use
            self._use_record(self._active)
            pack = self._pack_routes(self._prefetched[1])
            if len(pack.rows) * self._route_us * 1e-3 > EPOCH_IN_PLACE_MS:
                self._use_record(1 - self._active)
                self._refused = (heavy, self._refused[1] + 1 if self._refused[0] == heavy else 1)
                return False
            self._refused = (heavy, 0)
            self._prepared = pack  # valid while the record of the table in use does not change
        # a router's own packets look up the table in use, not the one about to hold a later step's routes
        self._point_unmarked(self._active)
        self._use_record(1 - self._active)
        if self._filling != heavy:
            self._filling, self._filled, self._fill_left = heavy, 0, None
        early = self._early_table(heavy, until)
        if early is not None:
            snap, table = early
            n, wanted = self._send_ahead(snap, table, until)
            self._filled += n
            if wanted >= 0:
                self._ahead_last = wanted
                self._fill_left = wanted - n
            log.debug("route epochs: %d of %d routes of heavy step %d sent ahead", n, wanted, heavy)
        return True

    def _early_table(self, step: int, until: float | None) -> tuple[Snapshot, RouteTable] | None:
        """The route table of heavy step ``step``, computed once, ahead (:meth:`_fill_for_heavy`), on the
        applied state plus the diff to its target; None while there is no time left for it (the next
        window computes it). The step itself still computes its own table: what differs is sent then."""
        if self._early is not None and self._early[0] == step:
            return self._early[1]
        w = self._early_worker
        if w is not None and self._early_job is not None:  # asked for in an earlier step
            job, self._early_job = self._early_job, None
            if job[0] == step:
                if not w.ready(0.0):
                    self._early_job = job
                    return None
                self._early = (step, (job[1], self._check_table(w.result())))
                return self._early[1]
            w.discard()
        snap = self.applied.apply(diff(self.applied, self.target(step), self.delay_tolerance_ms))
        if w is not None:  # in the child, while this thread goes on; a later step collects it
            w.submit(step, snap)
            self._early_job = (step, snap)
            return None
        if until is not None and time.monotonic() + max(self._early_s, self._compute_s, 0.02) > until - 0.1:
            return None
        t0 = time.perf_counter()
        table = self._check_table(self.protocol.compute(self.timeline, step, snap))
        self._early_s = time.perf_counter() - t0
        self._early = (step, (snap, table))
        return snap, table

    def _point_unmarked(self, i: int) -> None:
        """Route epochs: in every router, the rule for unmarked packets names table ``i``: a new rule, then
        the old one deleted (one send per router; until then the old one matches first)."""
        if self._unmarked == i:
            return
        routers = np.flatnonzero(self.is_router & self.local)
        n = len(routers)
        msgs = np.stack([rtnl.rule_msgs(n, rtnl.RTM_NEWRULE, EPOCH_UNMARKED_PREF, EPOCH_TABLES[i]),
                         rtnl.rule_msgs(n, rtnl.RTM_DELRULE, EPOCH_UNMARKED_PREF, EPOCH_TABLES[self._unmarked])],
                        axis=1).reshape(-1)  # per router: add, delete
        fails = rtnl.run_packed_many([self._rtnl[r] for r in routers.tolist()], msgs, np.arange(0, 2 * n + 1, 2))
        if fails:
            row, err, k = fails[0]
            raise ApplyError(f"rule for unmarked packets to table {EPOCH_TABLES[i]}: {os.strerror(err)} "
                             f"[{errno.errorcode.get(err, err)}]" + (f" (and {len(fails) - 1} more)" if len(fails) > 1
                                                                     else ""),
                             node=self.names[int(routers[k])], operation="route epoch rules")
        self._unmarked = i

    def _preinstall(self, until: float | None) -> bool:
        """Route epochs, between steps: send the prefetched table's routes into the idle table, except those
        through a link slot that is not up with the same peer now (a handover or a link coming up: their
        nexthop objects do not exist yet; :meth:`apply_step` sends them once it has made them, then switches
        tables). As many routers' routes as the time left allows (timed at :meth:`ahead_route_us` a route,
        paced, to end 50 ms before ``until``); the step sends the rest. Returns whether it sent any."""
        if self._prefetched is None or self._stopped or self._prefetched[1] is self._ahead:
            return False
        snap, table = self._prefetched
        t0 = time.perf_counter()
        n, wanted = self._send_ahead(snap, table, until)
        if wanted < 0:
            return False
        self._ahead_last = wanted
        if n < wanted / 2 and self._filling != table.step:
            # Too little went ahead: the step would send more into this table (it was the one in use two steps
            # ago) than into the one in use. What went ahead stays there (its record says so). (A heavy step
            # filled for over several steps switches anyway: the table in use lacks all of its changes.)
            return False
        self._ahead, self._ahead_routes = table, n
        log.debug("route epochs: %d routes sent ahead in %.0f ms", n, _ms(t0))
        if until is None or time.monotonic() < until - 0.05:  # what is left, packed against the new record
            self._prepared = self._pack_routes(table)
        return True

    def _send_ahead(self, snap: Snapshot, table: RouteTable, until: float | None) -> tuple[int, int]:
        """Send into the idle table (the current record) the routes of ``table`` (computed on ``snap``), but
        for those through a link slot not up with the same peer now (or a spare pair up ahead of its
        handover, :meth:`_spares_ahead`), as many routers' as the time left allows (to end 50 ms before
        ``until``). Returns (routes sent, changes wanted), or (0, -1) when there was no time to start."""
        if until is not None and until - 0.05 - self._pack_s - time.monotonic() < 100 * self._ahead_us * 1e-6:
            return 0, -1
        now = self.applied
        stable = now.up & (now.peer >= 0) & (snap.peer == now.peer)
        pair_at = None
        ready = self._spares_ahead(snap, until)
        if len(ready):  # their routes go ahead through the spare pair, up by now
            stable[ready] = True
            pair_at = self.ends.pair.astype(np.int64)
            pair_at[ready] = 1 - pair_at[ready]
        limit = None
        if until is not None:  # what fits with its packing (both timed at the last ones)
            per_route_s = (self.ahead_route_us() + self._pack_us) * 1e-6
            limit = int((until - 0.05 - self._pack_s - time.monotonic()) / per_route_s)
            if limit < 100:
                return 0, -1
        t0 = time.perf_counter()
        pack = self._pack_routes(table, exclude=~stable, limit=limit, pair_at=pair_at)
        n = len(pack.k_add) + len(pack.k_del) + len(pack.slow)
        t1 = time.perf_counter()
        if n >= 1000:
            self._pack_us = max(0.0, (t1 - t0 - self._pack_s) * 1e6 / n)
        self._install_routes(table, pack=pack, current=False, pace=True)
        if n >= 1000:  # the time per route sent paced (rtnl.AHEAD_PACE), for the next decision
            self.record_ahead_rate((time.perf_counter() - t1) * 1e6 / n)
        return n, pack.wanted

    def record_ahead_rate(self, us: float) -> None:
        """Record one send ahead's time per route (``us``), for :meth:`ahead_route_us`."""
        self._ahead_us = 0.5 * self._ahead_us + 0.5 * us
        self._ahead_rates.append(us)

    def ahead_route_us(self) -> float:
        """The time per route that sizes a part sent ahead: the slowest of the last AHEAD_RATES_KEPT sends'
        (the average if higher), so that a slow part of a heavy step does not overrun the next step."""
        return max(self._ahead_us, max(self._ahead_rates, default=0.0))

    def _spares_ahead(self, snap: Snapshot, until: float | None = None) -> np.ndarray:
        """Route epochs, between steps: the antenna slots that hand over at ``snap``'s step to the satellite
        their spare pair already waits on get that pair up now, with its nexthop objects, so that their
        routes can go into the idle table ahead too (no route in the table in use goes through a spare). The
        spares held up before for another handover go down, and the idle table's record forgets their
        slots' routes (the kernel removed them with the nexthops). Not with multipath tables. Returns the
        slots (sorted).

        With ``until`` (a ``time.monotonic()`` deadline), the spares not up yet come up in the first third
        of the time left, at the measured cost of one; the others wait for the next call (at a slot boundary
        some 400 spares at once took 0.5-0.7 s, past the next step's due time). Their routes wait too."""
        slots = self._antennas
        if not len(slots) or self.routes is None or self.routes.width > 1:
            return np.empty(0, np.int64)
        now, act = self.applied, self.ends.pair[slots].astype(np.int64)
        new = snap.peer[slots].astype(np.int64)
        ready = slots[(new >= 0) & snap.up[slots] & (new != now.peer[slots])
                      & (self._pfar[slots, 1 - act] == new) & (self._pfar[slots, act] != new)
                      & ~self._going_down(slots, 1 - act) & ~self._being_remade(slots)]
        before = {l for l, p in self._spares_up.items() if p != self.ends.pair[l]}
        fresh = np.array([l for l in ready.tolist() if l not in before], np.int64)
        if until is not None and len(fresh):
            fit = int((until - 0.05 - time.monotonic()) / 3 * 1e3 / self._spare_up_ms)
            if fit < len(fresh):
                fresh = fresh[:max(0, fit)]
                ready = np.array(sorted(before.intersection(ready.tolist()) | set(fresh.tolist())), np.int64)
        t0 = time.perf_counter()
        self.hold_spares_up(ready)
        for l in sorted(before - set(ready.tolist())):
            self._forget_spare_routes(l)
        if len(fresh):  # a spare held up keeps its nexthops (the kernel removes them only with its carrier)
            self._make_nexthops(fresh, 1 - self.ends.pair[fresh].astype(np.int64))
            if len(fresh) >= 20:
                self._spare_up_ms = 0.5 * self._spare_up_ms + 0.5 * (time.perf_counter() - t0) * 1e3 / len(fresh)
        return ready

    def _forget_spare_routes(self, link: int) -> None:
        """Route epochs: ``link``'s spare pair went down, or moved, after routes went through it into the
        idle table ahead of a handover that did not happen (the current record is the idle table's)."""
        if not self._epochs:
            return
        for node in (int(self.link_a[link]), *(int(f) for f in self._pfar[link] if f >= 0)):
            if self.is_router[node] and self.local[node]:
                self._forget_routes_via(node, link, every_table=False)

    @property
    def antenna_slots(self) -> np.ndarray:
        """Link slots with a spare veth pair (gateway antennas and cross-shell laser slots), sorted."""
        return self._antennas

    def spare_at(self, slots: Any) -> np.ndarray:
        """For antenna ``slots``: the node holding the far end of each one's spare veth pair now (its own
        gateway while the spare is parked there)."""
        slots = np.asarray(slots, np.int64)
        return self._pfar[slots, 1 - self.ends.pair[slots].astype(np.int64)]

    def hold_spares_up(self, slots: Any) -> np.ndarray:
        """Keep the spare pairs of exactly these antenna ``slots`` up (both ends), ahead of their handover,
        for a routing daemon to form its adjacency over before the switch; the spares held up before and not
        asked for now go down again. A parked spare is not brought up. Applying it twice changes nothing.

        The emulator puts no route through a spare; whether one goes there is the daemon's business (OSPF
        rejects it from the kernel until the switch). At the handover the spare becomes the active pair
        as usual, already up. Returns the slots whose spare is up now (sorted).
        """
        want = {int(l) for l in np.asarray(slots, np.int64).tolist()
                if self._pfar[l, 1 - int(self.ends.pair[l])] != self.link_a[l] and l not in self._remaking}
        # a spare that took over at a handover is the active pair now; one moved since went down with the move
        held = {l: p for l, p in self._spares_up.items() if p != self.ends.pair[l]}
        down = [(l, p) for l, p in held.items() if l not in want]
        up = [(l, 1 - int(self.ends.pair[l])) for l in sorted(want) if l not in held]
        self._pairs_set(down, False, "spare down")
        self._pairs_set(up, True, "spare up ahead of its handover")
        self._spares_up = {l: 1 - int(self.ends.pair[l]) for l in want}
        return np.array(sorted(want), np.int64)

    def _move_spares_ahead(self, step: int, until: float | None) -> int:
        """Put spares at their next satellites (see :meth:`prepare_ahead`); returns how many it started.

        On one host the worker threads remake them (:meth:`_remake`): the spares remade since the last call
        are recorded and shaped now, the others are handed over, the soonest handovers first, and recorded
        at a later call (or by the step that needs one, which waits for it); without ``until``, waited for
        and recorded before it returns. A clustered run's part moves them here, one by one, until
        ``until``."""
        if not self._built or self._stopped or not len(self._antennas):
            return 0
        one_host = self.part is None
        if one_host:
            self._collect()
        slots = self._antennas
        act = self.ends.pair[slots].astype(np.int64)
        want, at = self._next_peers(slots, step, self._pfar[slots, act])
        todo = np.flatnonzero((want >= 0) & (want != self._pfar[slots, 1 - act]) & ~self._going_down(slots, 1 - act)
                              & ~self._being_remade(slots))
        todo = todo[np.argsort(at[todo], kind="stable")]  # the soonest handovers first
        done = 0
        jobs = []
        for i in todo.tolist():
            if until is not None and time.monotonic() > until - 0.05:
                break
            l = int(slots[i])
            if one_host:
                jobs.append(self._remake(l, 1 - int(act[i]), int(want[i]), int(at[i])))
            else:
                self._finish_moves(self._start_moves([(l, 1 - int(act[i]), int(want[i]))]))
                self._shape_spares([l], [int(at[i])])
            done += 1
        if jobs and until is None:
            self._collect(jobs, wait=True)
        return done

    def _being_remade(self, slots: np.ndarray) -> np.ndarray:
        """Per antenna slot: whether its spare is being remade (:meth:`_remake`), not yet collected."""
        if not self._remaking:
            return np.zeros(len(slots), bool)
        return np.isin(slots, np.fromiter(self._remaking, np.int64, len(self._remaking)))

    def prefetch_routes(self, step: int, until: float | None = None) -> bool:
        """Between steps: compute the route table of ``step`` on the very snapshot :meth:`apply_step`
        will compute it on (the applied state plus the diff to ``step``'s target), so that the step only
        installs it. Route computation grows with the constellation (~1.6 ms per destination on 10,744
        satellites, one Dijkstra run each) while installation grows with what changed.

        The step uses the table only if that snapshot is still the one it computes on (a failure injected
        meanwhile, or steps applied out of order, make it compute its own). Not started if the last
        computation would not end 20 ms before ``until`` (a ``time.monotonic()`` deadline).

        Returns
        -------
        bool
            Whether a table was computed.
        """
        if self.daemon_driven or not self._built or self._stopped or not 0 <= step < self.timeline.n_steps:
            return False
        snap = self.applied.apply(diff(self.applied, self.target(step), self.delay_tolerance_ms))
        w = self._worker
        if w is not None:  # started in the child; waited for until 20 ms before ``until`` at most
            if w.busy and not self._same(self._worker_snap, snap):
                self._worker_discard()
            if not w.busy and self._prefetched is None:
                w.submit(step, snap)
                self._worker_snap = snap
            if w.busy and (until is None or w.ready(until - 0.02 - time.monotonic())):
                table = self._worker_result()
                self._prefetched = (snap, table)
                if not self._epochs and (until is None or time.monotonic() < until - 0.05):
                    self._prepared = self._pack_routes(table)  # (with epochs, _preinstall packs)
            return True
        if until is not None and time.monotonic() + self._compute_s > until - 0.02:
            return False
        t0 = time.perf_counter()
        table = self._compute_routes(step, snap)
        self._prefetched = (snap, table)
        self._compute_s = time.perf_counter() - t0
        if not self._epochs and (until is None or time.monotonic() < until - 0.05):
            self._prepared = self._pack_routes(table)
        return True

    @staticmethod
    def _same(a: Snapshot | None, b: Snapshot) -> bool:
        return (a is not None and a.step == b.step and np.array_equal(a.state, b.state)
                and np.array_equal(a.peer, b.peer) and np.array_equal(a.params, b.params))

    def _worker_result(self) -> RouteTable:
        assert self._worker is not None
        self._worker_snap = None
        return self._check_table(self._worker.result())

    def _worker_discard(self) -> None:
        assert self._worker is not None
        self._worker_snap = None
        self._worker.discard()

    def _take_prefetched(self, snap: Snapshot) -> RouteTable | None:
        """The prefetched table if it was computed on a snapshot equal to ``snap`` (waiting for the worker
        if it is still computing it); forgets it either way."""
        got, self._prefetched = self._prefetched, None
        if got is None and self._worker is not None and self._worker.busy:
            if self._same(self._worker_snap, snap):
                return self._worker_result()
            self._worker_discard()
            return None
        if got is None:
            return None
        old, table = got
        return table if self._same(old, snap) else None

    def stop(self) -> None:
        """Tear everything down: shaper, processes in our namespaces, shells, sockets. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._gc_frozen:
            gc.unfreeze()
            self._gc_frozen = False
        if self._remaker is not None:  # before the sockets and namespaces its threads use go
            self._remaker.close()
            self._remaker = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._early_worker is not None:
            self._early_worker.close()
            self._early_worker = None
        try:
            if self.shaper is not None:
                self.shaper.close()
        except Exception as e:  # noqa: BLE001 - teardown continues whatever the shaper says
            log.warning("closing the shaper failed: %s", e)
        for s in self._rtnl:
            if s is not None:
                s.close()
        self._rtnl = []
        for ipr in self._ipr.values():
            try:
                ipr.close()
            except Exception:  # noqa: BLE001
                pass
        self._ipr.clear()
        if self.daemon_driven:  # before the namespaces go: the daemons' files go with them
            try:
                self._daemons.stop(self)
            except Exception as e:  # noqa: BLE001 - teardown continues whatever the daemons say
                log.warning("stopping the routing daemons failed: %s", e)
        pids, _ = find_ours(self.run_id)  # shells and whatever runs in their namespaces
        holder = self.holder.pid if self.holder is not None else None
        kill_and_wait(pids - {holder})
        stop_nodes(self.nodes)
        if self.holder is not None:  # last: the namespaces go with it (nothing runs in them any more)
            self.holder.close()
        if self.cpu_hold is not None:
            self.cpu_hold.release()
        try:
            (STATE_DIR / f"{self.run_id}.json").unlink(missing_ok=True)
            (STATE_DIR / f"{self.run_id}.json.tmp").unlink(missing_ok=True)  # interrupted while written
        except OSError:
            pass

    # ------------------------------------------------------------------------------ build steps
    def _namespaces(self) -> list[int]:
        """Start the run's namespace holder, create every node's namespace in it (sysctls written there,
        before any veth exists, so "default" reaches every interface) and make the nodes; return the
        namespaces' inode numbers."""
        self.holder = Holder(self.run_id)
        here = np.flatnonzero(self.local)
        try:
            self.holder.start()
            inodes = self.holder.create([self.names[i] for i in here.tolist()], [SYSCTLS, ROUTER_SYSCTLS],
                                        self.is_router[here].astype(int).tolist())
        except HolderError as e:
            raise ApplyError(f"cannot create the network namespaces: {e.strerror or e}",
                             operation="create namespaces") from None
        # a node of another host keeps its place in the tables with a path that exists nowhere: nothing is
        # sent there (every request is filtered by self.local), and a slip fails naming the node
        self.nodes = make_nodes(((nd.name, nd.kind, self.holder.path(nd.name) if self.local[i] else
                                  f"{REMOTE_NS_DIR}/host-{self.part.host_of[i] if self.part else -1}/{nd.name}")
                                 for i, nd in enumerate(self.timeline.nodes)), self.run_id)
        return inodes

    def _local_nodes(self) -> list[EmuNode]:
        """The nodes whose namespaces this emulation holds (all of them but in a host's part)."""
        return [self.nodes[i] for i in np.flatnonzero(self.local).tolist()]

    def _write_state(self, inodes: list[int]) -> None:
        try:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = STATE_DIR / f"{self.run_id}.json.tmp"  # renamed whole: 'clean' never reads half a file
            tmp.write_text(json.dumps(
                {"run_id": self.run_id, "pid": os.getpid(), "holder": self.holder.pid if self.holder else None,
                 "netns_inodes": inodes}))
            os.replace(tmp, STATE_DIR / f"{self.run_id}.json")
        except OSError as e:
            log.warning("cannot write state file under %s: %s", STATE_DIR, e)

    def _ns_fd(self, node: int) -> int:
        try:
            return os.open(self.nodes[node].ns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ApplyError(f"cannot open namespace: {e.strerror}", node=self.names[node],
                             operation="open netns") from None

    def _next_peers(self, slots: np.ndarray, step: int, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For antenna ``slots``: the first satellite after ``step`` that is not ``current`` (per slot),
        and the step it comes at; -1 where the timeline gives none."""
        peer = self.timeline.peer[slots, step + 1:]
        if peer.shape[1] == 0:
            none = np.full(len(slots), -1, np.int64)
            return none, none.copy()
        ok = (peer >= 0) & (peer != np.asarray(current)[:, None])
        has = ok.any(axis=1)
        first = ok.argmax(axis=1)
        nxt = np.where(has, peer[np.arange(len(slots)), first], -1)
        return nxt.astype(np.int64), np.where(has, step + 1 + first, -1).astype(np.int64)

    def _create_links(self, snap: Snapshot) -> list[rtnl.Batch]:
        """Create every veth pair of step 0, addressed and down; returns per namespace the batch that
        brings up the ends that are up at step 0 (sent once they are shaped)."""
        a = self.addr
        la = self.link_a
        # The active pair's far end at the slot's satellite (an idle antenna: at the first satellite it
        # will have); an antenna's spare at the satellite after that; a far end with nowhere to go is
        # parked, down, at its gateway.
        far = np.where(snap.peer >= 0, snap.peer, la).astype(np.int64)
        ant = self._antennas
        idle = ant[snap.peer[ant] < 0]
        nxt, _ = self._next_peers(idle, snap.step, la[idle])
        far[idle] = np.where(nxt >= 0, nxt, la[idle])
        self._pfar[:, 0] = far
        self._far = far.copy()
        nxt, spare_at = self._next_peers(ant, snap.step, far[ant])
        self._pfar[ant, 1] = np.where(nxt >= 0, nxt, la[ant])
        pairs = [(l, 0) for l in range(self.timeline.n_links)] + [(l, 1) for l in ant.tolist()]
        # Each pair is created through the near end's own namespace socket. Sent from the root
        # namespace with a fixed ifindex, kernels before 6.x look the index up in the root namespace
        # first and answer EEXIST whenever the host happens to have a device with that index.
        # The far ends' namespaces are opened for each near namespace's batch and closed after it: a
        # handful of descriptors at a time, never one per node.
        # In a host's part: a pair with both ends here is a veth as on one host, one with a single end here
        # is that end made as a VXLAN device (_create_cross), one with none is another host's business.
        here = self.local
        by_near: list[list[tuple[int, int]]] = [[] for _ in range(self.n_nodes)]
        cross: list[tuple[int, int, int]] = []  # (link, pair, side of the end made here)
        for l, pair in pairs:
            na, nb = int(la[l]), int(self._pfar[l, pair])
            if here[na] and here[nb]:
                by_near[na].append((l, pair))
            elif here[na] or here[nb]:
                cross.append((l, pair, 0 if here[na] else 1))
        for na, todo in enumerate(by_near):
            if todo:
                self._make_veths(na, todo)
        if cross:
            self._create_cross(cross)
        # addresses and link states, one batch per namespace
        batches = [rtnl.Batch() for _ in range(self.n_nodes)]
        for i in np.flatnonzero(here).tolist():
            batches[i].add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(1, True), "lo up")
            if self.is_router[i]:
                batches[i].add(rtnl.RTM_NEWADDR, _CREATE, rtnl.addr_body(1, int(a.loopback[i]), 32),
                               f"loopback {ip_str(a.loopback[i])}")
                self.nodes[i].add_intf("lo", 0, ip_str(a.loopback[i]), 32)
            else:
                self.nodes[i].add_intf("lo", 0, "127.0.0.1", 8)
        up = snap.up
        ups = [rtnl.Batch() for _ in range(self.n_nodes)]
        for l, pair in pairs:
            na, nb = int(la[l]), int(self._pfar[l, pair])
            on = bool(up[l]) and pair == 0
            if here[na]:
                self._queue_end(batches[na], na, l, pair, 0, on, ups[na])
            if nb != na:
                if here[nb]:
                    self._queue_end(batches[nb], nb, l, pair, 1, on and snap.peer[l] >= 0, ups[nb])
            elif here[nb]:
                name, index, _ = a.pair_end(l, pair, 1)
                self.nodes[nb].add_intf(name, index, None, None)
        for i in np.flatnonzero(here).tolist():
            self._rtnl[i].check(batches[i], "configure interfaces")
        self._spares_at = spare_at
        return ups

    def _make_veths(self, near: int, pairs: list[tuple[int, int]]) -> None:
        """Create the ``(link, pair)`` veth pairs whose near end is in ``near``'s namespace, each far end
        directly in the namespace of the pair's far node (:attr:`_pfar`), both down."""
        a = self.addr
        fds: dict[int, int] = {}
        try:
            batch = rtnl.Batch()
            for l, pair in pairs:
                nb = int(self._pfar[l, pair])
                if nb not in fds:
                    fds[nb] = self._ns_fd(nb)
                name_a, index_a, _ = a.pair_end(l, pair, 0)
                name_b, index_b, _ = a.pair_end(l, pair, 1)
                groups = self._pair_groups(near, nb)
                batch.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                          rtnl.veth_body(name_a, index_a, None, name_b, index_b, fds[nb], *groups),
                          f"veth {self.names[near]}:{name_a} -- {self.names[nb]}:{name_b}")
            self._rtnl[near].check(batch, "create veth")
        finally:
            for fd in fds.values():
                os.close(fd)

    def _create_cross(self, ends: list[tuple[int, int, int]]) -> None:
        """A host's part: create this host's ends of pairs whose other end is on another host, ``[(link, pair,
        side), ...]``, as VXLAN devices (down) in their nodes' namespaces over the host's underlay, with the
        names and indices the veth ends would have (addressed and brought up as those are)."""
        from .cluster import vxlan

        part = self.part
        assert part is not None
        items = []
        for l, pair, side in ends:
            near, far = int(self.link_a[l]), int(self._pfar[l, pair])
            node, other = (near, far) if side == 0 else (far, near)
            name, index, _ = self.addr.pair_end(l, pair, side)
            items.append((part.end(l, pair, name, index, other), self.nodes[node].ns_path))
        host = rtnl.Rtnl(part.underlay_ns, f"host-{part.host}")
        try:
            vxlan.add_ends(host, items, up=False)
        finally:
            host.close()

    def _queue_end(self, batch: rtnl.Batch, node: int, link: int, pair: int, side: int, up: bool,
                   later: rtnl.Batch | None = None) -> None:
        """Address one end (``side``) of veth pair ``pair`` of ``link`` in ``node``'s namespace and set
        it up/down (queued). With ``later``, a new (down) end that is to be up is set up in that batch
        instead."""
        name, index, addr = self.addr.pair_end(link, pair, side)
        plen = int(self.addr.link_prefix_len[link])
        batch.add_end_conf(name, index, addr, plen, bool(self.is_router[node]))
        if later is None:
            batch.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(index, up), f"{name} {'up' if up else 'down'}")
        elif up:
            later.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(index, True), f"{name} up")
        self.nodes[node].add_intf(name, index, ip_str(addr), plen)

    def _make_nexthops(self, links: np.ndarray, pairs: np.ndarray | None = None) -> None:
        """Make the nexthop objects routes use through ``links``' active pairs (or ``pairs``), both ends up:
        in each router at an end, id :func:`nexthop_id` via the other end's address. The kernel accepts one
        only on a device with its carrier (both ends up), and removes it, with the routes through it, when
        the device goes down or loses its carrier: they are made each time a link comes up."""
        if not self._use_nh or not len(links):
            return
        batches: dict[int, rtnl.Batch] = {}
        e = self.ends
        for i, l in enumerate(np.asarray(links).tolist()):
            pair = int(e.pair[l]) if pairs is None else int(pairs[i])
            ends = ((int(self.link_a[l]), 0), (int(self._pfar[l, pair]), 1))
            if ends[1][0] == ends[0][0]:
                continue  # parked at its gateway: no satellite
            for node, side in ends:
                if not self.is_router[node] or not self.local[node]:
                    continue
                _, index, _ = self.addr.pair_end(l, pair, side)
                _, _, gw = self.addr.pair_end(l, pair, 1 - side)
                nh = int(nexthop_id(l, pair))
                batches.setdefault(node, rtnl.Batch()).add(
                    rtnl.RTM_NEWNEXTHOP, _CREATE, rtnl.nexthop_body(nh, int(gw), int(index)),
                    lambda nh=nh, gw=gw: f"nexthop {nh} via {ip_str(gw)}")
        for node, b in batches.items():
            self._rtnl[node].check(b, "nexthops")

    def _ipr_of(self, name: str) -> Any:
        """A pyroute2 IPRoute in ``name``'s namespace, for the caller's immediate use: at most
        :data:`IPR_CACHE` stay open, the least recently used is closed."""
        i = self.timeline.node_index(name)
        ipr = self._ipr.get(i)
        if ipr is not None:
            self._ipr.move_to_end(i)
            return ipr
        while len(self._ipr) >= IPR_CACHE:
            _, old = self._ipr.popitem(last=False)
            old.close()
        ipr = self._ipr[i] = iproute_in(self.nodes[i].ns_path, name)
        return ipr

    def _pair_groups(self, na: int, nb: int) -> tuple[int, int]:
        """Interface groups of a veth pair's ends in ``na`` and ``nb`` (0: none): the sender's end holds what
        leaves it, the receiver's lets what arrives pass (the shaper's catch-all rules read both). With route
        epochs a router's arrivals are still queued, unheld: the daemon's verdict gives them the epoch's
        mark, which picks the route table (the kernel's arrival stamp is taken before, on the veth)."""
        from .shaping.nfnl import HOLD_EGRESS_GROUP, PASS_INGRESS_GROUP

        def passing(receiver: int) -> int:
            return 0 if self._epochs and self.is_router[receiver] else PASS_INGRESS_GROUP

        if self._grouped(na, nb):
            return HOLD_EGRESS_GROUP, passing(nb)
        if self._grouped(nb, na):
            return passing(na), HOLD_EGRESS_GROUP
        return 0, 0

    def _grouped(self, near: int, far: int) -> bool:
        """Whether what ``near`` sends to ``far`` (both on this host) is held as it leaves ``near``: sent to a
        lower tier (:data:`TIERS`) by a node no TCP flow starts or ends at, when the run uses egress groups
        (see _port). A link's kinds of ends never change (a moving end is always a satellite), nor does this."""
        return self._egress_groups and self._tier[near] > self._tier[far] and not self._sends_tcp[near]

    def _port(self, link: int, side: int, pair: int | None = None) -> Any:
        """The shaper's port for one direction of ``link`` (sent from ``side``) on veth pair ``pair``
        (default: the active one)."""
        p = int(self.ends.pair[link]) if pair is None else pair
        far = int(self._pfar[link, p])
        got = self._ports.get((link, p, side))
        if got is not None and got[0] == far:  # Ports are immutable; one stays valid while its far end stays
            return got[1]
        from .shaping import Port

        def node_of(side: int) -> int:
            return int(self.link_a[link]) if side == 0 else int(self._pfar[link, p])

        def end(side: int, peer: Any = None, egress_group: bool = False) -> Any:
            node = node_of(side)
            name, index, _ = self.addr.pair_end(link, p, side)
            return Port(self.names[node], self.nodes[node].ns_path, name, index, peer, egress_group)

        # Where the userspace shaper holds this direction's packets:
        # - at the receiving end (after the veth has detached them from the sending socket, so TCP is not
        #   throttled by its own small queues);
        # - on the sending end's egress when the receiver is on another host (a VXLAN end: before the
        #   underlay), or when a node sends toward the edge (_grouped: a satellite to a gateway, terminal or
        #   compute node, a gateway to its host...). Such a sender starts no TCP flow (so no socket of its
        #   own is throttled by a held departure), and after the hold the packets cross the veth, where the kernel
        #   stamps their arrival: a socket that asks for receive stamps (ping, the UDP probe) gets the time
        #   the hold ended. Held at the receiver's ingress, a packet's stamp had to be cleared (it would say
        #   before the hold), so the socket stamped it when the program read it, and the program's own wait
        #   for a CPU counted as delay: in the access example 12 % of ping's wake-ups waited > 1 ms.
        near, far = node_of(side), node_of(1 - side)
        if not self.local[far]:
            port = end(side)
        elif self._grouped(near, far):
            port = end(side, egress_group=True)
        else:
            port = end(side, end(1 - side))
        self._ports[(link, p, side)] = (far, port)
        return port

    def _shape(self, links: np.ndarray, snap: Snapshot) -> None:
        """Shape both directions of ``links``' active pairs (one direction while an antenna has no
        satellite) with ``snap``'s parameters."""
        if len(links) == 0:
            return
        links = np.asarray(links, np.int64)
        need = self._sends_here(links, snap)  # the directions this host shapes: (near -> far, far -> near)
        if self.part is not None:  # a host's part: only the links with a direction this host sends
            mine = need.any(axis=1)
            links, need = links[mine], need[mine]
        links = self._shape_fast(links, snap, need)
        if len(links) == 0:
            return
        from .shaping import LinkShape

        items, where = [], []
        params = snap.params[links].astype(np.float64)
        for l, (delay_ms, rate_mbps, loss_pct) in zip(links.tolist(), params.tolist()):
            shape = LinkShape(delay_ms, rate_mbps, loss_pct, self._queue_of(l))
            p = int(self.ends.pair[l])
            # each direction is shaped by the host it leaves from (all of them on one host)
            na, nb = int(self.link_a[l]), int(self._pfar[l, p])
            if self.local[na]:
                items.append((self._port(l, 0), self._sent(shape, nb)))
                where.append((l, p, 0))
            if snap.peer[l] >= 0 and self.local[nb]:
                items.append((self._port(l, 1), self._sent(shape, na)))
                where.append((l, p, 1))
        if not items:
            return
        self.shaper.set(items, self._ipr_of)
        self._number_ports(items, where)

    def _sent(self, shape: Any, receiver: int) -> Any:
        """``shape`` as sent towards node ``receiver``: to another host (a host's part), its delay less the
        underlay's (:meth:`emulator.cluster.part.HostPart.sent_delay_ms`)."""
        if self.part is None or self.local[receiver]:
            return shape
        return dataclasses.replace(shape, delay_ms=self.part.sent_delay_ms(shape.delay_ms, receiver))

    def _sent_delays(self, delay_ms: np.ndarray, receiver: np.ndarray) -> np.ndarray:
        """:meth:`_sent` for many directions: ``delay_ms`` of each, less the underlay's one-way delay to the host
        of its ``receiver`` where that is another host (never below 0)."""
        part = self.part
        if part is None or part.underlay_ms is None:
            return delay_ms
        remote = ~self.local[receiver]
        under = np.asarray(part.underlay_ms, np.float64)[part.host_of[receiver]]
        return np.where(remote, np.maximum(delay_ms - under, 0.0), delay_ms)

    def set_underlay(self, one_way_ms: Sequence[float]) -> None:
        """A host's part: the underlay's one-way delay from this host to each host (ms; this host's own entry
        unused), measured again. From the next step on, every link to another host is shaped with it
        subtracted, whether the link's own delay changes then or not. Safe to call from another thread than
        the one applying steps (the part is replaced whole).

        Raises
        ------
        ApplyError
            Not a host's part.
        ConfigError
            Not one finite number >= 0 per host.
        """
        if self.part is None:
            raise ApplyError("set_underlay is for one host's part of a clustered run", operation="underlay")
        self.part = dataclasses.replace(self.part, underlay_ms=tuple(float(x) for x in one_way_ms))
        self._underlay_new = True

    def _cross_links(self, snap: Snapshot) -> np.ndarray:
        """The link slots whose active pair joins a node of this host to one of another host at ``snap``."""
        if self.part is None:
            return np.empty(0, np.int64)
        act = self.ends.pair.astype(np.int64)
        far = self._pfar[np.arange(self.timeline.n_links), act]
        up = snap.up & (snap.peer >= 0)
        return np.flatnonzero(up & (self.local[self.link_a] != self.local[far]))

    def _shape_fast(self, links: np.ndarray, snap: Snapshot, need: np.ndarray) -> np.ndarray:
        """Shape those of ``links`` whose ports the shaper numbered (``set_delays``, the userspace shaper)
        and whose rate and queue stay: their delay and loss change from arrays, without Python per link
        (at 10^4 satellites ~1,000 links change delay every step: ~12 ms of the step's Python through
        :meth:`_shape`'s general path). ``need``: the directions of each link this host shapes
        (:meth:`_sends_here`). Returns the links left for that path."""
        set_delays = getattr(self.shaper, "set_delays", None)
        if set_delays is None or not len(links):
            return links
        p = self.ends.pair[links].astype(np.int64)
        f0, f1 = self._fast_id[links, p, 0], self._fast_id[links, p, 1]
        known = ((~need[:, 0] | (f0 >= 0)) & (~need[:, 1] | (f1 >= 0)) & need.any(axis=1)
                 & (self._fast_far[links, p] == self._pfar[links, p]))
        k = np.flatnonzero(known)
        if not len(k):
            return links
        k0, k1 = k[need[k, 0]], k[need[k, 1]]
        ids = np.concatenate([f0[k0], f1[k1]])
        ports_of = links[np.concatenate([k0, k1])]  # the link of each id
        params = snap.params[ports_of].astype(np.float64)
        delay = params[:, 0]
        if self.part is not None:  # what goes to another host: less the underlay's delay, as _sent does
            receiver = np.concatenate([self._pfar[links[k0], p[k0]], self.link_a[links[k1]]]).astype(np.int64)
            delay = self._sent_delays(delay, receiver)
        ok = set_delays(ids, delay, params[:, 2], params[:, 1], self._queue_array(ports_of))
        done = known.copy()
        done[k0] &= ok[:len(k0)]
        done[k1] &= ok[len(k0):]
        return links[~done]

    def _sends_here(self, links: np.ndarray, snap: Snapshot) -> np.ndarray:
        """Which directions of ``links``' active pairs this emulation shapes, shape (len(links), 2): near end ->
        far end, and far end -> near end (not while an antenna has no satellite, ``snap.peer`` -1). Each is
        shaped by the host it leaves from: all of them on one host, a host's part its own ends'."""
        p = self.ends.pair[links].astype(np.int64)
        far = self._pfar[links, p].astype(np.int64)
        two = (snap.peer[links] >= 0) & (far >= 0)
        if self.part is None:
            return np.stack([np.ones(len(links), bool), two], axis=1)
        return np.stack([self.local[self.link_a[links]], two & self.local[np.maximum(far, 0)]], axis=1)

    def _queue_array(self, links: np.ndarray) -> np.ndarray:
        """:meth:`_queue_of` of many links, -1 for None."""
        q = self.queue_packets or {}
        by_class = np.array([q.get(c) or -1 for c in LINK_CLASSES], np.int64)
        return by_class[self.timeline.link_class[links]]

    def _number_ports(self, items: list[tuple[Any, Any]], where: list[tuple[int, int, int]]) -> None:
        """After the shaper's ``set`` of ``items`` (ports of ``where``: (link, pair, side)), record the numbers
        :meth:`_shape_fast` shapes them by next time."""
        fast_id = getattr(self.shaper, "fast_id", None)
        if fast_id is None:
            return
        for (port, _shape), (l, p, side) in zip(items, where):
            self._fast_id[l, p, side] = fast_id(port)
            self._fast_far[l, p] = self._pfar[l, p]

    def _queue_of(self, link: int) -> int | None:
        """The queue (packets) asked for ``link``'s class in :attr:`queue_packets`, or None (the default)."""
        q = self.queue_packets
        return q.get(LINK_CLASSES[int(self.timeline.link_class[link])]) if q else None

    def _shape_spares(self, links: Any, steps: Any) -> None:
        """Shape both directions of the spare pairs of antenna ``links`` with the parameters of the
        timeline ``steps`` they will be used at (a parked spare, or a step of -1, is skipped)."""
        from .shaping import LinkShape

        tl = self.timeline
        items, where = [], []
        for l, k in zip(np.asarray(links).tolist(), np.asarray(steps).tolist()):
            pair = 1 - int(self.ends.pair[l])
            if k < 0 or self._pfar[l, pair] == self.link_a[l]:
                continue
            shape = LinkShape(float(tl.delay_ms[l, k]), float(tl.rate_mbps[l, k]), float(tl.loss_pct[l, k]),
                              self._queue_of(l))
            ends = (int(self.link_a[l]), int(self._pfar[l, pair]))
            for side in (0, 1):
                if self.local[ends[side]]:  # shaped by the host it leaves from
                    items.append((self._port(l, side, pair), self._sent(shape, ends[1 - side])))
                    where.append((l, pair, side))
        if items:
            self.shaper.set(items, self._ipr_of)
            self._number_ports(items, where)

    def _settle_links(self, ends: dict[int, list[int]], wait_s: float = 0.0) -> int:
        """Ask the kernel for each interface of ``ends`` (``{node: [ifindex, ...]}``, brought up) whether it
        applied its carrier yet (:meth:`emulator.rtnl.Rtnl.pending_links`; the asking applies it on kernels
        6.8 and later). With ``wait_s``, ask again every 20 ms until none is pending, and raise ApplyError
        naming one after ``wait_s``. Returns how many were pending at the first look."""
        todo = {i: idx for i, idx in ends.items() if idx and self.local[i]}
        first = -1
        deadline = time.monotonic() + wait_s
        while True:
            todo = {i: p for i, idx in todo.items() if (p := self._rtnl[i].pending_links(idx))}
            n = sum(len(p) for p in todo.values())
            first = n if first < 0 else first
            if not n or wait_s <= 0:
                return first
            if time.monotonic() >= deadline:
                i, idx = next(iter(todo.items()))
                raise ApplyError(f"{n} interfaces still drop every packet {wait_s:g} s after they came up (the "
                                 f"kernel has not applied their carrier), e.g. interface {idx[0]}",
                                 node=self.names[i], operation="bring interfaces up")
            time.sleep(0.02)

    # ------------------------------------------------------------------------------ link changes
    def _set_links(self, links: np.ndarray, up: bool, peer: np.ndarray) -> None:
        """Admin up/down both ends of ``links``' active pairs (``peer``: the slots' peers now; the far
        end of an antenna without a satellite is not brought up)."""
        if len(links) == 0:
            return
        batches: dict[int, rtnl.Batch] = {}
        e = self.ends
        for l in links.tolist():
            ends = [(int(self.link_a[l]), int(e.ifindex_a[l]), e.ifname_a[l])]
            far = int(self._far[l])
            if far != self.link_a[l] and (not up or peer[l] >= 0):
                ends.append((far, int(e.ifindex_b[l]), e.ifname_b[l]))
            for node, index, name in ends:
                if not self.local[node]:  # the other host sets its own end
                    continue
                batches.setdefault(node, rtnl.Batch()).add(
                    rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(index, up), f"{name} {'up' if up else 'down'}")
                if not up:
                    self._forget_routes_via(node, l)
        for node, b in batches.items():
            self._rtnl[node].check(b, "link up" if up else "link down")
        if up:
            self._settle_links({node: _up_indexes(b) for node, b in batches.items()})
            self._make_nexthops(links[peer[links] >= 0])

    def _pairs_down(self, pairs: list[tuple[int, int]]) -> None:
        """Set both ends of the ``(link, pair)`` veth pairs down (pairs handed over from: the routes
        through them were replaced, so no installed record is forgotten)."""
        self._pairs_set(pairs, False, "handover")

    def _pairs_set(self, pairs: list[tuple[int, int]], up: bool, operation: str) -> None:
        """Admin up or down both ends of the ``(link, pair)`` veth pairs, wherever they are now."""
        batches: dict[int, rtnl.Batch] = {}
        for l, pair in pairs:
            for side, node in ((0, int(self.link_a[l])), (1, int(self._pfar[l, pair]))):
                if not self.local[node]:
                    continue
                name, index, _ = self.addr.pair_end(l, pair, side)
                batches.setdefault(node, rtnl.Batch()).add(
                    rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(index, up), f"{name} {'up' if up else 'down'}")
        for node, b in batches.items():
            self._rtnl[node].check(b, operation)
        if up:
            self._settle_links({node: _up_indexes(b) for node, b in batches.items()})

    def _start_moves(self, moves: list[tuple[int, int, int]]) -> _Moves | None:
        """Start putting the satellite ends of antenna veth pairs, ``[(link, pair, new namespace), ...]``,
        at their new namespaces in worker threads; :meth:`_finish_moves` waits for them and does the rest.
        Only pairs that carry no traffic (down) are moved.

        On one host each pair is remade there (:meth:`_remake`, urgent: ahead of the spares remade between
        steps). A clustered run's part moves the ends instead (``IFLA_NET_NS_FD``): each move costs the
        kernel 15-20 ms (dev_change_net_namespace waits in rcu_barrier) under the rtnl lock, and sending
        them out of different namespaces from concurrent threads was measured to gain nothing, so one
        thread sends them one batch per source namespace, in turn. Until :meth:`_finish_moves`, the caller
        may do pure work and shaping of other links, but must not use the rtnetlink sockets of the source
        namespaces.
        """
        a = self.addr
        if self.part is None:
            remakes = []
            for l, pair, new in moves:
                rj = self._remaking.get(l)
                if rj is None and int(self._pfar[l, pair]) != new:
                    rj = self._remake(l, pair, int(new), -1, urgent=True)
                elif rj is not None:  # remade for this step's satellite already (apply_step waited for others)
                    self._remaker_hurry(rj)
                if rj is not None:
                    remakes.append(rj)
            return _Moves([], remakes=remakes) if remakes else None
        moves = self._moves_across(moves)
        todo: list[tuple[int, int, int, int]] = []  # (link, pair, old ns, new ns)
        for l, pair, new in moves:
            old = int(self._pfar[l, pair])
            if old == new:
                continue
            if self._spares_up.get(l) == pair:  # the kernel takes an interface down to move it
                del self._spares_up[l]
                self._forget_spare_routes(l)
            if old != int(self.link_a[l]):  # its shaping (and held packets) leave with it
                try:
                    self.shaper.forget(self._port(l, 1, pair))
                except Exception as e:  # noqa: BLE001 - the port is going away anyway
                    log.warning("shaper.forget(%s) failed: %s", a.pair_end(l, pair, 1)[0], e)
            todo.append((l, pair, old, int(new)))
        if not todo:
            return None
        job = _Moves(todo)
        try:
            for l, pair, old, new in todo:
                fd = self._ns_fd(new)
                job.fds.append(fd)
                name, index, _ = a.pair_end(l, pair, 1)
                job.by_old.setdefault(old, rtnl.Batch()).add(
                    rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(index, False, ns_fd=fd),
                    f"move {name} from {self.names[old]} to {self.names[new]}")
        except BaseException:
            job.close_fds()
            raise

        def send() -> None:
            t = time.perf_counter()
            try:
                for old, b in job.by_old.items():
                    self._rtnl[old].check(b, "handover")
            except BaseException as e:  # noqa: BLE001 - handed to the caller by _finish_moves
                job.error = e
            job.kernel_ms = _ms(t)

        job.thread = threading.Thread(target=send, name="satnetem-handover", daemon=True)
        job.thread.start()
        return job

    def _moves_across(self, moves: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """A host's part: of the spare pairs' moves ``[(link, pair, new far node), ...]``, do those that are
        not a veth end moving between two namespaces of this host, and return the others (for
        :meth:`_start_moves`).

        A pair with an end on another host before or after the move changes form: this host deletes the
        ends it has of it and makes the ends it will have, both down, with the names, indices and addresses
        the veth ends have on one host: a veth pair when both ends are here now, else this host's end as a
        VXLAN device towards the other end's host with the pair's VNI (:meth:`_create_cross`). A near end
        that stays a VXLAN end towards the same host is left as it is. Every host books every move, its
        ends or not, so that all of them agree where each pair's far end is: each decides from the timeline
        and the placement alone, with no message between hosts. A deletion here is the run's own (the
        cluster agents run no :class:`emulator.watchdog.LinkWatch`).
        """
        part = self.part
        assert part is not None
        here, la, a = self.local, self.link_a, self.addr
        plain: list[tuple[int, int, int]] = []
        across: list[tuple[int, int, int, int]] = []  # (link, pair, old far node, new far node)
        for l, pair, new in moves:
            old, near = int(self._pfar[l, pair]), int(la[l])
            if old == new:
                continue
            if here[near] and here[old] and here[new]:
                plain.append((l, pair, new))
            else:
                across.append((l, pair, old, int(new)))
        if not across:
            return plain
        gone: dict[int, rtnl.Batch] = {}
        veths: dict[int, list[tuple[int, int]]] = {}  # near node -> pairs made as veths
        cross: list[tuple[int, int, int]] = []  # (link, pair, side) made as VXLAN ends
        for l, pair, old, new in across:
            near = int(la[l])
            if self._spares_up.get(l) == pair:
                del self._spares_up[l]
            if here[near]:
                if not here[old] and not here[new] and part.host_of[old] == part.host_of[new]:
                    continue  # its VXLAN end already goes to that host
                self._drop_end(gone, l, pair, 0)  # a veth end takes its peer (here, or parked) with it
                if here[old]:
                    self._drop_end(None, l, pair, 1)
                if here[new]:
                    veths.setdefault(near, []).append((l, pair))
                else:
                    cross.append((l, pair, 0))
            else:
                if here[old]:
                    self._drop_end(gone, l, pair, 1)
                if here[new]:
                    cross.append((l, pair, 1))
        for node, b in gone.items():
            self._rtnl[node].check(b, "handover across hosts")
        for l, pair, _old, new in across:
            self._pfar[l, pair] = new
            if pair == self.ends.pair[l]:
                self._far[l] = new
        for near, pairs in veths.items():
            self._make_veths(near, pairs)
        if cross:
            self._create_cross(cross)
        conf: dict[int, rtnl.Batch] = {}
        made = [(l, pair, side) for pairs in veths.values() for l, pair in pairs for side in (0, 1)] + cross
        for l, pair, side in made:
            node = int(la[l]) if side == 0 else int(self._pfar[l, pair])
            if side == 1 and node == la[l]:  # parked at its gateway: not addressed
                name, index, _ = a.pair_end(l, pair, 1)
                self.nodes[node].add_intf(name, index, None, None)
            else:
                self._queue_end(conf.setdefault(node, rtnl.Batch()), node, l, pair, side, False)
        for node, b in conf.items():
            self._rtnl[node].check(b, "handover across hosts")
        return plain

    def _drop_end(self, gone: dict[int, rtnl.Batch] | None, link: int, pair: int, side: int) -> None:
        """Forget one end of a pair about to be deleted (its shaping, its interface record) and, with ``gone``,
        queue its deletion in its node's batch there."""
        node = int(self.link_a[link]) if side == 0 else int(self._pfar[link, pair])
        got = self._ports.pop((link, pair, side), None)
        if got is not None:
            try:
                self.shaper.forget(got[1])
            except Exception as e:  # noqa: BLE001 - the port is going away anyway
                log.warning("shaper.forget(%s) failed: %s", got[1].ifname, e)
        name, index, _ = self.addr.pair_end(link, pair, side)
        self.nodes[node].drop_intf(name)
        if gone is not None:
            gone.setdefault(node, rtnl.Batch()).add(rtnl.RTM_DELLINK, 0, rtnl.link_set_body(index),
                                                    f"delete {name} of {self.names[node]}")

    def _finish_moves(self, job: _Moves | None) -> None:
        """Wait for the moves of :meth:`_start_moves`, then address the moved ends (down) in their new
        namespaces, or record them parked at their gateway."""
        if job is None:
            return
        if job.remakes:
            self._collect(job.remakes, wait=True, shape=False)
            job.kernel_ms = sum(r.kernel_ms for r in job.remakes)
            return
        assert job.thread is not None
        job.thread.join()
        job.close_fds()
        if job.error is not None:
            raise job.error
        after: dict[int, rtnl.Batch] = {}
        for l, pair, old, new in job.moves:
            name, index, _ = self.addr.pair_end(l, pair, 1)
            self.nodes[old].drop_intf(name)
            self._pfar[l, pair] = new
            if pair == self.ends.pair[l]:
                self._far[l] = new
            if new != self.link_a[l]:
                self._queue_end(after.setdefault(new, rtnl.Batch()), new, l, pair, 1, False)
            else:
                self.nodes[new].add_intf(name, index, None, None)
        for node, b in after.items():
            self._rtnl[node].check(b, "handover")

    def _remake(self, link: int, pair: int, new: int, at: int, urgent: bool = False) -> Remake:
        """Hand spare pair ``pair`` of antenna ``link`` to the worker threads (:mod:`emulator.spares`), to be
        deleted where it is and made again with its far end at node ``new`` (its gateway: parked), for
        timeline step ``at`` (-1: the step being applied). The pair is forgotten now (its shaping, its
        interface records, routes through it held up ahead) and recorded again by :meth:`_collect`."""
        a = self.addr
        near, old = int(self.link_a[link]), int(self._pfar[link, pair])
        if self._spares_up.get(link) == pair:  # the kernel takes it down with the deletion
            del self._spares_up[link]
            self._forget_spare_routes(link)
        self._drop_end(None, link, pair, 0)
        self._drop_end(None, link, pair, 1)
        job = remake_job(link, pair, at, (near, self.names[near], self.nodes[near].ns_path), (old, self.names[old]),
                         (new, self.names[new], self.nodes[new].ns_path),
                         (a.pair_end(link, pair, 0), a.pair_end(link, pair, 1)), int(a.link_prefix_len[link]),
                         (bool(self.is_router[near]), bool(self.is_router[new])), self._pair_groups(near, new))
        if self._remaker is None:
            self._remaker = Remaker(expect=self._expect_deleted)
        self._remaking[link] = job
        self._remaker.submit(job, urgent)
        return job

    def _expect_deleted(self, node: str, ifname: str) -> None:
        if self.expect_deleted is not None:
            self.expect_deleted(node, ifname)

    def _remaker_hurry(self, job: Remake) -> None:
        if self._remaker is not None:
            self._remaker.hurry(job)

    def _collect(self, jobs: list[Remake] | None = None, wait: bool = False, shape: bool = True) -> int:
        """Record the spare pairs the worker threads remade (``jobs``, waited for with ``wait``; default:
        every one done now): where each far end is, the interfaces of both ends; then, with ``shape``, shape
        them for the step each is wanted at. Returns how many it recorded.

        Raises
        ------
        ApplyError
            A worker's request failed (the first failure; the others are recorded).
        """
        if jobs is None:
            jobs = [j for j in self._remaking.values() if j.done.is_set()]
        a = self.addr
        done: list[Remake] = []
        error: BaseException | None = None
        for job in jobs:
            if wait:
                job.done.wait()
            elif not job.done.is_set():
                continue
            if self._remaking.get(job.link) is job:
                del self._remaking[job.link]
            if job.error is not None:
                error = error or job.error
                continue
            l, pair = job.link, job.pair
            self._pfar[l, pair] = job.new
            plen = int(a.link_prefix_len[l])
            name0, index0, addr0 = a.pair_end(l, pair, 0)
            self.nodes[job.near].add_intf(name0, index0, ip_str(addr0), plen)
            name1, index1, addr1 = a.pair_end(l, pair, 1)
            if job.new == job.near:
                self.nodes[job.new].add_intf(name1, index1, None, None)
            else:
                self.nodes[job.new].add_intf(name1, index1, ip_str(addr1), plen)
            done.append(job)
        if error is not None:
            raise error
        shaped = [j for j in done if j.at >= 0 and j.pair != self.ends.pair[j.link]]
        if shape and shaped:
            self._shape_spares([j.link for j in shaped], [j.at for j in shaped])
        return len(done)

    # ------------------------------------------------------------------------------ routes
    def _routes_init(self) -> None:
        """Size the record of installed routes: ``_inst_nh`` (n_dest, n_nodes) is the first next hop
        (-1: no route, -2: a multipath route that may survive with fewer next hops), ``_inst_link``
        (n_dest, n_nodes, width) the link slots of every next hop."""
        if self._worker is not None:
            table = self._worker.compute(0, self.applied)
        else:
            table = self.protocol.compute(self.timeline, 0, self.applied)
        nd = len(table.destinations)
        self._inst_nh = np.full((nd, self.n_nodes), -1, np.int32)
        self._inst_link = np.full((nd, self.n_nodes, table.width), -1, np.int32)
        self._dest_row = {int(d): i for i, d in enumerate(table.destinations)}
        self._inst_dest = table.destinations.copy()
        # a host behind a router that is a destination too is reached by the route to the router's site block
        self._covered = self.addr.covered_by(table.destinations) >= 0
        a = self.addr
        site = a.is_router & (a.site_len > 0)
        self._route_pfx = np.where(site, a.site_prefix, a.prefix)
        self._route_plen = np.where(site, a.site_len, a.prefix_len)
        self._recs = [(self._inst_nh, self._inst_link), (self._inst_nh.copy(), self._inst_link.copy())]
        self._rec_i = 0
        self._inst_version = self._new_version()
        self._rec_vers = [self._inst_version, self._new_version()]
        if table.width > 1:
            self._multipath_hash()

    def _use_record(self, i: int) -> None:
        """Make table ``i``'s installed record the one routes are compared with, packed against and sent
        to (:attr:`_inst_nh`, :attr:`_inst_link`; the table :meth:`_table_id` names)."""
        if i == self._rec_i or not self._recs:
            return
        self._recs[self._rec_i] = (self._inst_nh, self._inst_link)
        self._rec_vers[self._rec_i] = self._inst_version
        self._inst_nh, self._inst_link = self._recs[i]
        self._inst_version = self._rec_vers[i]
        self._rec_i = i

    def _new_version(self) -> int:
        """A version no record had before (a pack is valid for the record and version it was made against)."""
        self._ver_seq += 1
        return self._ver_seq

    def _table_id(self) -> int:
        """The kernel route table the current record describes: main without epochs."""
        return EPOCH_TABLES[self._rec_i] if self._epochs else rtnl.RT_TABLE_MAIN

    def _epoch_rules(self) -> None:
        """In every router: packets marked EPOCH_MARKS[i] look up EPOCH_TABLES[i]; others (sent by the
        router itself: ICMP errors and replies, its services) the first table, which holds this step's
        routes, or in every other step the next step's while they are sent ahead."""
        for i in np.flatnonzero(self.is_router & self.local).tolist():
            b = rtnl.Batch()
            for pref, (mark, tid) in zip(EPOCH_PREFS, zip(EPOCH_MARKS, EPOCH_TABLES)):
                b.add(rtnl.RTM_NEWRULE, _CREATE, rtnl.rule_body(pref, tid, mark), f"rule fwmark {mark} lookup {tid}")
            b.add(rtnl.RTM_NEWRULE, _CREATE, rtnl.rule_body(EPOCH_PREFS[-1] + 1, EPOCH_TABLES[0]),
                  f"rule lookup {EPOCH_TABLES[0]}")
            self._rtnl[i].check(b, "route epoch rules")

    def _multipath_hash(self) -> None:
        """Hash multipath routes on the L4 5-tuple in every router (namespace sysctl, not the host's),
        so that flows between the same two hosts spread over the next hops."""
        for i in np.flatnonzero(self.is_router & self.local).tolist():
            nd = self.nodes[i]
            with entered(nd.ns_path, nd.name):
                try:
                    with open("/proc/sys/net/ipv4/fib_multipath_hash_policy", "w") as f:
                        f.write("1")
                except OSError as e:
                    raise ApplyError(f"cannot set sysctl net/ipv4/fib_multipath_hash_policy=1: {e.strerror}",
                                     node=nd.name, operation="sysctl") from None

    def _forget_routes_via(self, node: int, link: int, every_table: bool = True) -> None:
        """The kernel flushed ``node``'s routes through ``link`` (interface down or moved), in every table
        (or, ``every_table`` False, in the current record's only); a multipath route may instead live on
        with its other next hops: mark it unknown (-2) so the next update replaces or deletes it."""
        self._inst_version = self._new_version()
        records = [(self._inst_nh, self._inst_link)]
        if every_table and self._epochs:
            records.append(self._recs[1 - self._rec_i])
            self._rec_vers[1 - self._rec_i] = self._new_version()
        for inst_nh, inst_link in records:
            if not inst_link.size:
                continue
            links = inst_link[:, node]  # (n_dest, width), a view
            gone = (links == link).any(axis=1)
            multi = (links >= 0).sum(axis=1) > 1
            inst_nh[gone & ~multi, node] = -1
            inst_nh[gone & multi, node] = -2
            links[gone] = -1

    def _host_routes(self) -> None:
        a = self.addr
        for i in np.flatnonzero(~self.is_router & self.local).tolist():
            l = int(a.access_link[i])
            if self.applied.state[l] != 0:
                continue  # down from the start by a scheduled event: installed when it comes up (apply_step)
            b = rtnl.Batch()
            b.add(rtnl.RTM_NEWROUTE, _CREATE,
                  rtnl.route_body(0, 0, int(a.gateway_addr[i]), int(a.ifindex_a[l]), int(a.addr_a[l])),
                  f"default via {ip_str(a.gateway_addr[i])}")
            self._rtnl[i].check(b, "default route")

    def _update_routes(self, step: int, snap: Snapshot) -> tuple[int, int]:
        """Install the routes of ``step`` (computed on ``snap``, the state the kernel has by now) that
        differ from the installed ones; delete the ones that vanished."""
        return self._install_routes(self._compute_routes(step, snap))

    def _compute_routes(self, step: int, snap: Snapshot) -> RouteTable:
        """The protocol's table for ``step`` on ``snap`` (pure: no kernel work), checked against the
        installed record."""
        if self._worker is not None:
            if self._worker.busy:
                self._worker_discard()
            return self._check_table(self._worker.compute(step, snap))
        return self._check_table(self.protocol.compute(self.timeline, step, snap))

    def _check_table(self, table: RouteTable) -> RouteTable:
        if not np.array_equal(table.destinations, self._inst_dest):
            raise ApplyError("the routing protocol changed its destination set", operation="routes")
        if table.width != self._inst_link.shape[2]:
            raise ApplyError(f"the routing protocol changed its number of next hops per route from "
                             f"{self._inst_link.shape[2]} to {table.width}", operation="routes")
        return table

    def _route_changes(self, table: RouteTable, exclude: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where ``table`` differs from the installed routes: (dest rows, routers) grouped by router, and
        the first next hop and the link slots wanted there. Whole-table comparisons (2.2 million routes
        at 10^4 satellites, ~25 ms): done between steps when the table is ready then
        (:meth:`prefetch_routes`), valid while the installed record does not change."""
        nh, link = table.next_hop, table.links_wide()
        dest = table.destinations
        # a host/compute prefix is on-link at its attachment router: the kernel's connected route serves it
        onlink = (nh == dest[:, None]) & ~self.is_router[dest][:, None]
        want_nh = np.where(onlink, -1, nh)
        want_link = np.where(onlink[:, :, None], -1, link)
        if want_link.shape[2] == 1:
            link_diff = want_link[:, :, 0] != self._inst_link[:, :, 0]
        else:
            link_diff = (want_link != self._inst_link).any(axis=2)
        # (a host's part installs its own routers' routes only)
        changed = (((want_nh != self._inst_nh) | link_diff) & (self.is_router & self.local)[None, :]
                   & ~self._covered[:, None])
        rows, routers = np.nonzero(changed)
        if exclude is not None:  # leave out the routes wanted through an excluded link slot
            wl = want_link[rows, routers]
            keep = ~(exclude[np.maximum(wl, 0)] & (wl >= 0)).any(axis=1)
            rows, routers = rows[keep], routers[keep]
        order = np.argsort(routers, kind="stable")  # group by namespace
        rows, routers = rows[order], routers[order]
        return rows, routers, want_nh[rows, routers], want_link[rows, routers]

    def _install_routes(self, table: RouteTable, held: Callable[[], None] | None = None,
                        pack: _RoutePack | None = None, current: bool = True, pace: bool = False) -> tuple[int, int]:
        """Bring the kernel's routes to ``table``: the changed ones, as RTM_NEWROUTE (replace) or
        RTM_DELROUTE. A route with several next hops (a multipath table) is one RTM_NEWROUTE with
        RTA_MULTIPATH. ``held`` is called once this call's Python work is done but for the error reports
        and the rare one-at-a-time routes: when the bulk sends start, or at the latest on return.

        Single-next-hop routes and deletions, nearly all of them, are packed as numpy records (no Python
        code per route) and sent without acknowledgements (:func:`rtnl.run_packed_many`); the first
        failure, if any, is raised once every namespace has had its messages. The packing is done ahead,
        between steps, when the table is ready then (:meth:`prefetch_routes`, :meth:`_pack_routes`).
        With ``pace`` (routes sent ahead of their step), the sends keep to :data:`rtnl.AHEAD_PACE`.
        """
        if current:  # else (route epochs, ahead of its step) the table is not the one packets use yet
            self.routes = table
        if pack is None:
            pack, self._prepared = self._prepared, None
        if (pack is None or pack.table is not table or pack.version != self._inst_version
                or (pack.partial and pack is self._prepared)):
            pack = self._pack_routes(table)
        self._inst_version = self._new_version()
        if len(pack.rows) == 0:
            return 0, 0
        e = self.ends
        if pack.nh_at is not None and len(pack.nh_link) and not pack.pair_fixed:
            # an antenna switched to its other veth pair since the packing: its routes use that pair's nexthop
            now = e.pair[pack.nh_link]
            moved = np.flatnonzero(now != pack.nh_at)
            if len(moved):
                pack.add_msgs["nh_id"][moved] = nexthop_id(pack.nh_link[moved], now[moved])
        failure: tuple[int, int, int, str] | None = None  # (router, message row, errno, "add"/"del")
        n_fail = 0
        t_send = time.perf_counter()
        for part, msgs, starts, owners in (("add", pack.add_msgs, pack.add_starts, pack.add_owners),
                                           ("del", pack.del_msgs, pack.del_starts, pack.del_owners)):
            if not owners:
                continue
            fails = rtnl.run_packed_many([self._rtnl[r] for r in owners], msgs, starts,
                                         ignore=(errno.ESRCH,) if part == "del" else (), held=held,
                                         pace=rtnl.ahead_pace() if pace else 0.0)
            held = None
            n_fail += len(fails)
            if fails and failure is None:
                row, err, i = fails[0]
                failure = (owners[i], row, err, part)
        if not pace and len(pack.rows) >= ROUTE_COST_MIN:
            self._route_us = 0.5 * self._route_us + 0.5 * (time.perf_counter() - t_send) * 1e6 / len(pack.rows)
        if failure is not None:
            r, row, err, part = failure
            if row < 0:
                what = "routes (error reports lost)"
            elif part == "add":
                k = int(pack.k_add[row])
                gw, _ = self._route_hops(pack, np.array([k]))
                what = f"route {ip_str(pack.pfx[k])}/{pack.plen[k]} via {ip_str(gw[0, pack.first[k]])}"
            else:
                k = int(pack.k_del[row])
                what = f"delete route {ip_str(pack.pfx[k])}/{pack.plen[k]}"
            more = f" (and {n_fail - 1} more)" if n_fail > 1 else ""
            raise ApplyError(f"{what}: {os.strerror(err)} [{errno.errorcode.get(err, err)}]{more}",
                             node=self.names[r], operation="routes")
        n_slow_del = 0
        if len(pack.slow):
            batches: dict[int, rtnl.Batch] = {}
            gws, oifs = self._route_hops(pack, pack.slow)
            for k, gw_k, oif_k in zip(pack.slow.tolist(), gws.tolist(), oifs.tolist()):
                r = int(pack.routers[k])
                b = batches.setdefault(r, rtnl.Batch())
                p, n, src = int(pack.pfx[k]), int(pack.plen[k]), int(pack.src[k])
                if pack.add[k]:
                    hops = [(int(g), int(o)) for g, o, v in zip(gw_k, oif_k, pack.valid[k]) if v]
                    if len(hops) == 1:
                        body = rtnl.route_body(p, n, hops[0][0], hops[0][1], src, table=pack.table_id)
                    else:
                        body = rtnl.multipath_route_body(p, n, hops, src, table=pack.table_id)
                    b.add(rtnl.RTM_NEWROUTE, _CREATE, body,
                          lambda p=p, n=n, h=hops: f"route {ip_str(p)}/{n} via "
                          + ", ".join(ip_str(g) for g, _ in h))
                else:
                    b.add(rtnl.RTM_DELROUTE, 0, rtnl.route_del_body(p, n, table=pack.table_id),
                          lambda p=p, n=n: f"delete route {ip_str(p)}/{n}", ignore=(errno.ESRCH,))
                    n_slow_del += 1
            for r, b in batches.items():
                self._rtnl[r].check(b, "routes")
        self._inst_nh[pack.rows, pack.routers] = pack.nh_sel
        self._inst_link[pack.rows, pack.routers] = pack.link_sel
        return int(pack.add.sum()), len(pack.k_del) + n_slow_del

    def _pack_routes(self, table: RouteTable, exclude: np.ndarray | None = None,
                     limit: int | None = None, pair_at: np.ndarray | None = None) -> _RoutePack:
        """The messages that bring the installed routes to ``table`` (:meth:`_route_changes`), grouped by
        namespace: everything :meth:`_install_routes` sends but the sends. Pure numpy (~10 ms for 2x10^4
        changed routes), done between steps when the table is ready then. Valid while the installed record
        does not change (``version``); an antenna that switches veth pair meanwhile is patched at the send
        (``nh_link``/``nh_at``)."""
        tc = time.perf_counter()
        rows, routers, nh_sel, link_sel = self._route_changes(table, exclude)
        self._pack_s = time.perf_counter() - tc
        wanted = len(rows)
        if limit is not None and wanted > limit:  # the first routers' changes, at most limit, whole routers
            cut = int(np.searchsorted(routers, routers[limit], side="left"))
            rows, routers, nh_sel, link_sel = rows[:cut], routers[:cut], nh_sel[:cut], link_sel[:cut]
        a = self.addr
        dest = table.destinations
        l = link_sel.astype(np.int64)  # (n_changed, width), -1 padded
        valid = l >= 0
        n_hops = valid.sum(axis=1)
        add = n_hops > 0
        dnode = dest[rows]
        pfx, plen, src = self._route_pfx[dnode], self._route_plen[dnode], a.loopback[routers]
        installed = self._inst_nh[rows, routers] != -1  # installed, or a multipath route that may be
        packable = (plen > 0) & (src != 0)
        single = add & (n_hops == 1) & packable
        delete = ~add & installed & packable
        first = np.argmax(valid, axis=1)  # the one valid next hop of a single-hop route
        k_add = np.flatnonzero(single)
        k_del = np.flatnonzero(delete)
        pack = _RoutePack(table, self._inst_version, rows, routers, nh_sel, link_sel, valid, add, first,
                          pfx, plen, src, k_add, k_del,
                          slow=np.flatnonzero((add & ~single) | (~add & installed & ~packable)))
        if self._use_nh:
            lk = np.maximum(l, 0)[k_add, first[k_add]]
            at = (self.ends.pair if pair_at is None else pair_at)[lk].astype(self.ends.pair.dtype)
            pack.pair_fixed = pair_at is not None
            pack.add_msgs = rtnl.route_nh_msgs(pfx[k_add], plen[k_add], nexthop_id(lk, at), src[k_add], _CREATE)
            pack.nh_link, pack.nh_at = lk, at
        else:
            gw, oif = self._route_hops(pack, k_add)
            pack.add_msgs = rtnl.route_msgs(pfx[k_add], plen[k_add], gw[np.arange(len(k_add)), first[k_add]],
                                            oif[np.arange(len(k_add)), first[k_add]], src[k_add], _CREATE)
        pack.del_msgs = rtnl.route_del_msgs(pfx[k_del], plen[k_del])
        pack.table_id = self._table_id()
        pack.partial = exclude is not None or limit is not None
        pack.wanted = wanted
        if pack.table_id != rtnl.RT_TABLE_MAIN:
            pack.add_msgs["rtm_table"] = pack.table_id
            pack.del_msgs["rtm_table"] = pack.table_id
        # one send per namespace: the messages are grouped by router (sorted), adds first, then deletes
        for part, rs in (("add", routers[k_add]), ("del", routers[k_del])):
            starts = np.concatenate([[0], np.flatnonzero(np.diff(rs)) + 1, [len(rs)]]) if len(rs) else np.zeros(1, int)
            setattr(pack, f"{part}_starts", starts)
            setattr(pack, f"{part}_owners", rs[starts[:-1]].tolist() if len(rs) else [])
        return pack

    def _route_hops(self, pack: _RoutePack, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gateway address and output ifindex of every next hop of the changed routes ``ks`` (rows of
        ``pack``), through the veth pairs that carry their link slots now: shape (len(ks), width)."""
        lc = np.maximum(pack.link_sel[ks].astype(np.int64), 0)
        near = self.link_a[lc] == pack.routers[ks][:, None]
        e = self.ends
        return np.where(near, e.addr_b[lc], e.addr_a[lc]), np.where(near, e.ifindex_a[lc], e.ifindex_b[lc])


@dataclass
class _RoutePack:
    """Route changes packed ahead of their step (:meth:`Emulation._pack_routes`): per changed route
    (``rows``/``routers``, grouped by router) what is wanted, and the messages of the packable ones."""

    table: RouteTable
    version: int  # Emulation._inst_version the changes were computed against
    rows: np.ndarray  # destination row of each changed route
    routers: np.ndarray  # its router (sorted)
    nh_sel: np.ndarray  # first next hop wanted (-1: none)
    link_sel: np.ndarray  # (n, width) link slots wanted, -1 padded
    valid: np.ndarray  # link_sel >= 0
    add: np.ndarray  # a route is wanted (else deleted)
    first: np.ndarray  # column of the one valid next hop of a single-hop route
    pfx: np.ndarray
    plen: np.ndarray
    src: np.ndarray
    k_add: np.ndarray  # rows of add_msgs in the changes
    k_del: np.ndarray  # rows of del_msgs in the changes
    slow: np.ndarray  # changes sent one message at a time (multipath, no prefix length or source)
    add_msgs: np.ndarray = field(default_factory=lambda: np.zeros(0, rtnl.ROUTE_NH_MSG))
    del_msgs: np.ndarray = field(default_factory=lambda: np.zeros(0, rtnl.ROUTE_DEL_MSG))
    add_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, int))
    add_owners: list[int] = field(default_factory=list)
    del_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, int))
    del_owners: list[int] = field(default_factory=list)
    nh_link: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # link slot of each add message
    nh_at: np.ndarray | None = None  # the veth pair its nexthop id was packed for
    table_id: int = rtnl.RT_TABLE_MAIN  # the kernel table the messages go to
    partial: bool = False  # some changes left out (routes through links not usable yet, route epochs)
    pair_fixed: bool = False  # the nexthops name the pairs meant (spares ahead of a handover), not today's
    wanted: int = 0  # changes found before a limit cut them (_pack_routes)


class _Installer:
    """:meth:`Emulation._install_routes` of one table in a thread; :meth:`join` returns its counts or
    raises its error. :attr:`held` is set when the thread's own Python work is done and its sends run
    in C without the interpreter lock (or when it ended): the caller's Python waits for it, so the two
    do not take turns on the interpreter lock (at 10^4 satellites its ~5 ms of socket bookkeeping took
    10-50 ms while the caller's shaping ran)."""

    def __init__(self, emu: Emulation, table: RouteTable) -> None:
        self._result: tuple[int, int] = (0, 0)
        self._error: BaseException | None = None
        self.held = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(emu, table), name="satnetem-routes",
                                        daemon=True)
        self._thread.start()

    def _run(self, emu: Emulation, table: RouteTable) -> None:
        try:
            normal_priority()  # bulk kernel work: not at the clock's SCHED_FIFO, which a thread inherits
            self._result = emu._install_routes(table, self.held.set)
        except BaseException as e:  # handed to join(), in the step's thread
            self._error = e
        finally:
            self.held.set()

    def join(self) -> tuple[int, int]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


@dataclass
class _Moves:
    """Handovers under way in a worker thread (see :meth:`Emulation._start_moves`)."""

    moves: list[tuple[int, int, int, int]]  # (link, pair, old namespace, new namespace)
    remakes: list[Remake] = field(default_factory=list)  # on one host: the pairs remade instead
    by_old: dict[int, rtnl.Batch] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None
    error: BaseException | None = None
    kernel_ms: float = 0.0  # how long the moves took in the kernel, ms

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def nexthop_id(link: Any, pair: Any) -> Any:
    """Id of the nexthop object through veth pair ``pair`` of link slot ``link`` in the namespace of either
    end (ids are per namespace; a namespace holds at most one end of a pair). Scalars or arrays."""
    return 1 + 2 * np.asarray(link, np.int64) + np.asarray(pair, np.int64)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:  # within budget anyway: namespace sockets are closed and reopened as needed
            log.info("open-file limit %d is below the %d that keeps every namespace socket open: sockets "
                     "will be reopened as needed", new, want)


def _up_indexes(batch: rtnl.Batch) -> list[int]:
    """The interface indices ``batch`` sets up (its RTM_NEWLINK requests with IFF_UP in flags and change)."""
    out = []
    for r in batch.requests:
        if r.msg_type == rtnl.RTM_NEWLINK:
            _fam, _type, index, flags, change = rtnl._IFINFO.unpack_from(r.body)
            if flags & change & rtnl.IFF_UP:
                out.append(index)
    return out
