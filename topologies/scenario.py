"""The scenario file: a TOML description of one experiment, loaded and validated in one place.

Every section maps onto a frozen dataclass. Loading checks every key against that dataclass: an
unknown key, a value of the wrong type or out of range is a :class:`ConfigError` that names the file,
the line, the key and what is allowed. With no file, :func:`default_scenario` gives the built-in one.

Example (every section is optional; missing keys take the defaults documented in README.md)::

    name = "two-cities"

    [time]
    start = "2023-07-18T12:00:00Z"
    duration_s = 120
    step_s = 1.0

    [constellation]
    preset = "starlink-shell1"          # or: tle = "starlink.tle", tle_inclination_deg = 53.0

    [isl]
    acquisition_s = 2.0

    [gsl]
    min_elevation_deg = 25.0

    [[ground.sites]]
    name = "gs-london"
    lat_deg = 51.5
    lon_deg = -0.13

    [[hosts]]
    name = "h-london"
    gateway = "gs-london"
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .events import EventSpec, build_events
from .ground import STARLINK_GATEWAY_ANTENNAS
from .limits import LINK_RATE_MIN_MBPS, max_rate_mbps

#: Node names end up in interface labels, process titles and command lines: keep them boring.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
NAME_RULE = "lower-case letters, digits and '-', starting with a letter, at most 31 characters"

DEFAULT_START = datetime(2023, 7, 18, 12, 0, 0, tzinfo=UTC)

#: The scenario's name becomes a path component (results/<time>-<name>): no separators, no dot-names.
SCENARIO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Seeds feed numpy generators and the delay daemon's 32-bit loss hash: one range for all of them.
SEED_MAX = 2**32 - 1


def check_name(name: Any, what: str, ctx: _Ctx, key: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ctx.error(f"{what} name {name!r} is not allowed: use {NAME_RULE}", key)
    return name


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeConfig:
    start: datetime = DEFAULT_START
    duration_s: float = 60.0
    step_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.step_s <= 3600:
            raise ValueError(f"step_s must be in (0, 3600], got {self.step_s}")
        if not 0 < self.duration_s <= 7 * 86400:
            raise ValueError(f"duration_s must be in (0, 604800], got {self.duration_s}")
        if self.duration_s < self.step_s:
            raise ValueError(f"duration_s ({self.duration_s}) is shorter than step_s ({self.step_s})")

    @property
    def n_steps(self) -> int:
        return max(1, int(round(self.duration_s / self.step_s)))


@dataclass(frozen=True)
class ShellSpec:
    """One Walker shell given in full in the scenario."""

    name: str = "shell"
    pattern: str = "delta"
    altitude_km: float = 550.0
    #: 53.0 when not given; with ltan_h, the sun-synchronous inclination for altitude_km
    inclination_deg: float = None  # type: ignore[assignment]  # None only until __post_init__ fills it
    planes: int = 72
    sats_per_plane: int = 22
    phasing: int = 1
    #: local time of the ascending node (h) of a sun-synchronous shell: 6.0 or 18.0 is dawn-dusk
    ltan_h: float | None = None
    #: RAAN range the planes spread over (deg); default 360 (delta) or 180 (star)
    raan_span_deg: float | None = None

    def __post_init__(self) -> None:
        # the same rule as topologies.constellation.Shell, checked here so that the error has its line
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"name must be non-empty without spaces, got {self.name!r}")
        if self.pattern not in ("delta", "star"):
            raise ValueError(f"pattern must be 'delta' or 'star', got {self.pattern!r}")
        if not 160 <= self.altitude_km <= 2000:
            raise ValueError(f"altitude_km must be in [160, 2000] (LEO), got {self.altitude_km}")
        if self.ltan_h is not None:
            if not (math.isfinite(self.ltan_h) and 0 <= self.ltan_h < 24):
                raise ValueError(f"ltan_h must be in [0, 24) h, got {self.ltan_h}")
            if self.inclination_deg is not None:
                raise ValueError("inclination_deg cannot be given with ltan_h: a sun-synchronous shell's "
                                 "inclination follows from its altitude_km")
            from .walker import sso_inclination_deg

            object.__setattr__(self, "inclination_deg", sso_inclination_deg(self.altitude_km))
        elif self.inclination_deg is None:
            object.__setattr__(self, "inclination_deg", 53.0)
        if self.raan_span_deg is not None and not (math.isfinite(self.raan_span_deg)
                                                   and 0 < self.raan_span_deg <= 360):
            raise ValueError(f"raan_span_deg must be in (0, 360] deg, got {self.raan_span_deg}")
        if not 0 <= self.inclination_deg <= 180:
            raise ValueError(f"inclination_deg must be in [0, 180], got {self.inclination_deg}")
        if not 1 <= self.planes <= 1000:
            raise ValueError(f"planes must be in [1, 1000], got {self.planes}")
        if not 1 <= self.sats_per_plane <= 1000:
            raise ValueError(f"sats_per_plane must be in [1, 1000], got {self.sats_per_plane}")
        if not 0 <= self.phasing < max(self.planes, 1):
            raise ValueError(f"phasing F must be in [0, planes-1] = [0, {self.planes - 1}], got {self.phasing}")


@dataclass(frozen=True)
class ConstellationConfig:
    preset: str | None = None
    shells: tuple[ShellSpec, ...] = ()
    tle: str | None = None
    tle_inclination_deg: float | None = None
    tle_altitude_km: float | None = None
    #: with ``tle``: also build the satellites in no operational shell (orbit-raising, decaying, ...)
    #: as nodes without laser links
    include_transient: bool = False

    def __post_init__(self) -> None:
        given = [k for k, v in (("preset", self.preset), ("shells", self.shells), ("tle", self.tle)) if v]
        if len(given) > 1:
            raise ValueError(f"give only one of preset, shells and tle (got {', '.join(given)})")
        if self.include_transient and not self.tle:
            raise ValueError("include_transient needs tle: only a TLE set has transient satellites")


@dataclass(frozen=True)
class SiteSpec:
    name: str
    lat_deg: float
    lon_deg: float
    alt_m: float = 0.0
    antennas: int | None = None

    def __post_init__(self) -> None:
        if not -90 <= self.lat_deg <= 90:
            raise ValueError(f"lat_deg must be in [-90, 90], got {self.lat_deg}")
        if not -180 <= self.lon_deg <= 360:
            raise ValueError(f"lon_deg must be in [-180, 360], got {self.lon_deg}")
        if not -500 <= self.alt_m <= 9000:
            raise ValueError(f"alt_m must be in [-500, 9000], got {self.alt_m}")
        if self.antennas is not None and not 1 <= self.antennas <= 16:
            raise ValueError(f"antennas must be in [1, 16], got {self.antennas}")


#: named sets of real gateways that [ground] gateways = "..." loads
GATEWAY_SETS = ("starlink",)
#: named sets of PoPs that [ground] pops = "..." loads (topologies.pops.POP_SETS)
POP_SETS = ("starlink",)


@dataclass(frozen=True)
class GroundConfig:
    #: how many of the built-in 100 most populous cities become gateways (first N by population)
    cities: int = 0
    sites: tuple[SiteSpec, ...] = ()
    #: one ground host behind every gateway, named h-<gateway without 'gs-'>
    host_per_gateway: bool = True
    #: "starlink": also Starlink's 214 operational gateways (topologies/data/starlink-ground-stations-2026-03.csv)
    gateways: str | None = None
    #: antennas of each of those gateways (default: SpaceX's gateway filings, see topologies.ground)
    gateway_antennas: int = STARLINK_GATEWAY_ANTENNAS
    #: "starlink": Starlink's PoPs (topologies/data/starlink-pops.csv) as routers, every gateway joined to
    #: its nearest by fibre, the PoPs by a backbone ([backhaul], topologies.pops); needs gateways
    pops: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.cities <= 100:
            raise ValueError(f"cities must be in [0, 100] (the built-in list has 100), got {self.cities}")
        if self.gateways is not None and self.gateways not in GATEWAY_SETS:
            raise ValueError(f"gateways must be one of {', '.join(GATEWAY_SETS)} or absent, got {self.gateways!r}")
        if not 1 <= self.gateway_antennas <= 16:
            raise ValueError(f"gateway_antennas must be in [1, 16], got {self.gateway_antennas}")
        if self.pops is not None and self.pops not in POP_SETS:
            raise ValueError(f"pops must be one of {', '.join(POP_SETS)} or absent, got {self.pops!r}")


COUNTRY_RE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class TerminalSpec:
    """A user terminal (``[[terminals]]``): one steerable beam to one satellite (see topologies.terminals).

    ``country`` is an ISO 3166-1 alpha-2 code; ``pop`` names a home point of presence (a PoP code). With
    ``[ground] pops`` the home PoP is ``pop``, or one drawn from the country's PoP shares (topologies.pops);
    without it both are only kept in the timeline's node table.
    """

    name: str
    lat_deg: float
    lon_deg: float
    country: str | None = None
    pop: str | None = None

    def __post_init__(self) -> None:
        if not -90 <= self.lat_deg <= 90:
            raise ValueError(f"lat_deg must be in [-90, 90], got {self.lat_deg}")
        if not -180 <= self.lon_deg <= 360:
            raise ValueError(f"lon_deg must be in [-180, 360], got {self.lon_deg}")
        if self.country is not None and not COUNTRY_RE.match(self.country):
            raise ValueError(f"country must be an ISO 3166-1 alpha-2 code (two upper-case letters, e.g. 'KE'), "
                             f"got {self.country!r}")
        if self.pop is not None and not self.pop.strip():
            raise ValueError("pop must name a point of presence, got an empty string")


@dataclass(frozen=True)
class HostSpec:
    name: str
    gateway: str


#: Compute capacity bounds. The lowest share is the kernel's smallest CFS quota (1 ms) over the emulator's
#: 20 ms period; the memory floor leaves room for the service's own pages (~0.2 MB).
CPU_SHARE_RANGE = (0.05, 64.0)
MEMORY_MB_RANGE = (1.0, 1_048_576.0)


def _check_capacity(cpu_share: Any, memory_mb: Any) -> None:
    lo, hi = CPU_SHARE_RANGE
    if isinstance(cpu_share, bool) or not isinstance(cpu_share, (int, float)) or not lo <= cpu_share <= hi:
        raise ValueError(f"cpu_share must be a number of cores in [{lo:g}, {hi:g}], got {cpu_share!r}")
    lo, hi = MEMORY_MB_RANGE
    if memory_mb is not None and (isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float))
                                  or not lo <= memory_mb <= hi):
        raise ValueError(f"memory_mb must be in [{lo:g}, {hi:.0f}] MB, got {memory_mb!r}")


@dataclass(frozen=True)
class ComputeSpec:
    """One ``[[compute]]`` entry: a compute node on one satellite, or compute nodes on many by rule.

    ``name`` + ``satellite``: one node of that name. Rules (topologies.compute): ``satellites`` (a list),
    ``shell`` (every satellite of that shell: its name or 0-based index) and/or ``every_nth`` (slots 0, N,
    2N, ... of each plane); each chosen satellite ``sat-<rest>`` gets a node ``<prefix>-<rest>``.
    """

    name: str = ""
    satellite: str | None = None
    satellites: tuple[str, ...] = ()
    shell: str | int | None = None
    every_nth: int | None = None
    #: rules only: node names are <prefix>-<satellite name without its leading "sat-">
    prefix: str = "dc"
    #: capacity of each node, enforced by cgroups on its service (emulator.kernel.cgroups): CPU time as a
    #: fraction of one core (> 1: several cores), and a memory limit in MB (None: no limit)
    cpu_share: float = 1.0
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        _check_capacity(self.cpu_share, self.memory_mb)
        rule = [k for k, v in (("satellites", self.satellites), ("shell", self.shell is not None),
                               ("every_nth", self.every_nth is not None)) if v]
        if self.satellite is not None:
            if rule:
                raise ValueError(f"satellite names one satellite; {rule[0]} is a rule: give one or the other")
            if not self.name:
                raise ValueError("name is required with satellite (the compute node's name)")
            if self.prefix != "dc":
                raise ValueError("prefix applies to rules (satellites, shell, every_nth), not to satellite")
            return
        if not rule:
            raise ValueError("satellite is required, or a rule: satellites = [...], shell and/or every_nth")
        if self.name:
            raise ValueError(f"name names one node (with satellite); a rule's nodes are named <prefix>-<plane>-"
                             f"<slot> from their satellites: give prefix (default 'dc'), got name {self.name!r}")
        if self.satellites and len(rule) > 1:
            raise ValueError(f"satellites is a list of its own: it cannot be combined with {rule[1]}")
        if self.satellites and len(set(self.satellites)) != len(self.satellites):
            raise ValueError("satellites names a satellite twice")
        if self.every_nth is not None and not 1 <= self.every_nth <= 1000:
            raise ValueError(f"every_nth must be in [1, 1000], got {self.every_nth}")
        if isinstance(self.shell, int) and self.shell < 0:
            raise ValueError(f"shell must be a shell's name or its index from 0, got {self.shell}")


@dataclass(frozen=True)
class RoutingConfig:
    protocol: str = "shortest-delay"
    #: ``[routing.ospf]``: options of the ospf protocol (routing.ospf.OspfOptions), checked by
    #: routing.base.check_protocol_options; they apply whenever ospf runs (also under ``compare``)
    ospf: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmulationConfig:
    shaper: str = "auto"
    speed: float = 1.0
    #: a delay change smaller than this (against what is applied) is not pushed to the kernel
    delay_tolerance_ms: float = 0.01
    #: rate of the access links (host to gateway, compute node to satellite)
    access_rate_mbps: float = 1000.0
    #: queue of a link's rate limit per link class, full-size packets (``{isl = 100, gsl = 200}``); a class
    #: not named keeps the backend's default (1,000 packets for the userspace backend's token bucket)
    queue_packets: dict[str, Any] = field(default_factory=dict)
    #: how a step changes routes (emulator.network.Emulation.route_switch): "in-place", or "epoch" (two
    #: tables per router, the next step's filled ahead and switched to at the step by the delay daemon)
    route_switch: str = "in-place"
    #: hold the kernel's CPU latency request at 0 us while the run lasts (emulator.kernel.cpulatency): idle
    #: CPUs poll instead of sleeping, so the delay daemon's timers wake it on time
    keep_cpus_awake: bool = True
    #: the userspace delay daemon makes up a late release at the packet's next hold (emulator.shaping.delayd):
    #: the path's delay stays true, each link's own delay is off by what it made up
    carry_lateness: bool = True
    #: 1-9: the thread that applies the steps plays at SCHED_FIFO with this priority, below the delay daemon's
    #: shards (10), above the host's ordinary work (emulator.clock.Playback); 0: normal scheduling
    clock_priority: int = 5
    #: validity bounds (emulator.validity): a sample is invalid while a step is applied later than this
    valid_step_late_ms: float = 100.0
    #: ... while the delay daemon's release lateness p99 over a monitor interval exceeds this (userspace)
    valid_release_late_ms: float = 1.0
    #: ... while tasks waited for a CPU (PSI "some", /proc/pressure/cpu) more than this share of an interval;
    #: 100 turns the check off
    valid_cpu_wait_pct: float = 50.0

    def __post_init__(self) -> None:
        from .timeline import LINK_CLASSES

        for cls, q in self.queue_packets.items():
            if cls not in LINK_CLASSES:
                raise ValueError(f"queue_packets names link class {cls!r}; classes are {', '.join(LINK_CLASSES)}")
            if isinstance(q, bool) or not isinstance(q, int) or not 2 <= q <= 100_000:
                raise ValueError(f"queue_packets.{cls} must be an integer in [2, 100000] packets, got {q!r}")
        if self.route_switch not in ("in-place", "epoch"):
            raise ValueError(f"route_switch must be one of in-place, epoch; got {self.route_switch!r}")
        if not isinstance(self.keep_cpus_awake, bool):
            raise ValueError(f"keep_cpus_awake must be true or false, got {self.keep_cpus_awake!r}")
        if isinstance(self.clock_priority, bool) or not isinstance(self.clock_priority, int) or \
                not 0 <= self.clock_priority <= 9:
            raise ValueError(f"clock_priority must be an integer in [0, 9] (below the delay daemon's 10), got "
                             f"{self.clock_priority!r}")
        if not isinstance(self.carry_lateness, bool):
            raise ValueError(f"carry_lateness must be true or false, got {self.carry_lateness!r}")
        if self.shaper not in ("auto", "netem", "userspace"):
            raise ValueError(f"shaper must be one of auto, netem, userspace; got {self.shaper!r}")
        if not 0.01 <= self.speed <= 100:
            raise ValueError(f"speed must be in [0.01, 100], got {self.speed}")
        if not 0 <= self.delay_tolerance_ms <= 1:
            raise ValueError(f"delay_tolerance_ms must be in [0, 1], got {self.delay_tolerance_ms}")
        if not 0 < self.access_rate_mbps <= 100_000:
            raise ValueError(f"access_rate_mbps must be in (0, 100000], got {self.access_rate_mbps}")
        if not 0 < self.valid_step_late_ms <= 3_600_000:
            raise ValueError(f"valid_step_late_ms must be in (0, 3600000] ms, got {self.valid_step_late_ms}")
        if not 0 < self.valid_release_late_ms <= 10_000:
            raise ValueError(f"valid_release_late_ms must be in (0, 10000] ms, got {self.valid_release_late_ms}")
        if not 0 < self.valid_cpu_wait_pct <= 100:
            raise ValueError(f"valid_cpu_wait_pct must be in (0, 100] %, got {self.valid_cpu_wait_pct}")


#: placement strategies of a clustered run (emulator.cluster.placement.STRATEGIES, repeated here: this layer
#: does not import the emulator; a unit test keeps the two equal)
CLUSTER_PLACEMENTS = ("plane", "partition")


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: run over the hosts of a Ray cluster (``satnetem run --cluster ADDRESS`` overrides
    ``address``). Without an address the run is on this host.

    ``hosts``: how many hosts (0: every host whose Ray node offers a ``satnetem-host-<h>`` resource);
    ``placement``: ``plane`` (orbital planes kept whole) or ``partition`` (METIS); ``max_clock_offset_ms``:
    a host whose clock is further than this from the driver's refuses the run; ``vni_base``: the first VXLAN
    id of the run's cross-host links (0: derived from the run id, so that two runs on the same hosts do not
    share VNIs); ``underlay_every_s``: each host measures the underlay's delay to the others again this often
    while the run plays, and subtracts the new figure from then on (0: only at the start)."""

    address: str = ""
    hosts: int = 0
    placement: str = "plane"
    max_clock_offset_ms: float = 5.0
    vni_base: int = 0
    underlay_every_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or len(self.address) > 300:
            raise ValueError(f"address must be the Ray head's IPv4:PORT, got {self.address!r}")
        if isinstance(self.hosts, bool) or not isinstance(self.hosts, int) or not 0 <= self.hosts <= 1000:
            raise ValueError(f"hosts must be an integer in [0, 1000] (0: every host of the cluster), got "
                             f"{self.hosts!r}")
        if self.placement not in CLUSTER_PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(CLUSTER_PLACEMENTS)}; got {self.placement!r}")
        if not 0 < self.max_clock_offset_ms <= 10_000:  # NaN fails too
            raise ValueError(f"max_clock_offset_ms must be in (0, 10000] ms, got {self.max_clock_offset_ms}")
        if isinstance(self.vni_base, bool) or not isinstance(self.vni_base, int) \
                or not 0 <= self.vni_base <= (1 << 24) - 1:
            raise ValueError(f"vni_base must be an integer in [0, {(1 << 24) - 1}] (0: from the run id), "
                             f"got {self.vni_base!r}")
        u = self.underlay_every_s
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not (u == 0 or 0.5 <= u <= 86_400):
            raise ValueError(f"underlay_every_s must be 0 (only at the start) or in [0.5, 86400] s, got {u!r}")


TRAFFIC_KINDS = ("ping", "udp-probe", "iperf3-tcp", "iperf3-udp", "path", "request", "matrix", "allreduce")
REQUEST_POLICIES = ("nearest", "fixed", "round-robin", "best")


@dataclass(frozen=True)
class TrafficSpec:
    """One measurement flow between two nodes (``[[traffic]]``).

    ``kind``: ``ping`` (ICMP RTT), ``udp-probe`` (sequence-numbered timestamped datagrams: one-way
    delay, loss, reordering), ``iperf3-tcp`` / ``iperf3-udp`` (throughput), ``path`` (TTL-limited
    probes recording the path taken), ``request`` (requests to the service on compute nodes; ``dst``
    is the fixed target, or the candidates are all compute nodes for ``nearest``/``round-robin``/``best``;
    ``best`` is the least score (predicted RTT, time in the node, battery look-ahead; docs/model.md) among
    nodes neither throttled nor stopped, moving ``migrate_state_mb``
    of state to the next node before its users switch: emulator.migration),
    ``matrix`` (background load between many ``endpoints`` at ``aggregate_mbps`` in all, from a gravity
    model or ``matrix_csv``; see topologies.traffic_matrix; no ``src``/``dst``), ``allreduce`` (a ring
    all-reduce of ``size_mb`` among the compute ``nodes``, ``rounds`` times, timed per round:
    emulator.traffic.allreduce; no ``src``/``dst``).
    """

    src: str = ""
    dst: str = ""
    kind: str = "ping"
    name: str = ""
    start_s: float = 0.0
    duration_s: float | None = None
    rate_pps: float = 5.0
    rate_mbps: float = 10.0
    size_bytes: int = 64
    policy: str = "fixed"
    work_ms: float = 5.0
    #: kind "request", policy "best": MB of service state sent over TCP from the old compute node to the new
    #: one before its users switch (0: users switch at the planned step with no state to move)
    migrate_state_mb: float = 0.0
    #: kind "request", policy "best": the choice's weights (emulator.migration.BestRule; None: its defaults
    #: 10 ms, 300 s, 50 ms): stay on a node within stickiness_ms of the best; a node leaving its normal power
    #: state within battery_horizon_s scores up to battery_penalty_ms more
    stickiness_ms: float | None = None
    battery_horizon_s: float | None = None
    battery_penalty_ms: float | None = None
    #: kind "matrix": total rate of every pair, Mbit/s (gravity: required; with matrix_csv: scales the file)
    aggregate_mbps: float | None = None
    #: kind "matrix": a src,dst,rate_mbps file instead of the gravity model (relative to the scenario)
    matrix_csv: str | None = None
    #: kind "matrix": the hosts/terminals that send and receive (default: all of them)
    endpoints: tuple[str, ...] = ()
    #: kind "matrix": UDP payload of the load's datagrams, bytes
    payload_bytes: int = 1200
    #: kind "matrix": this many of the largest pairs also carry a TCP bulk flow (iperf3), as much as it gets
    tcp_flows: int = 0
    #: kind "allreduce": the compute nodes of the ring, in ring order (each sends to the next, the last to the first)
    nodes: tuple[str, ...] = ()
    #: kind "allreduce": the vector every node contributes, MB (10^6 bytes) of float32
    size_mb: float | None = None
    #: kind "allreduce": how many all-reduces, one after the other
    rounds: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TRAFFIC_KINDS:
            raise ValueError(f"kind must be one of {', '.join(TRAFFIC_KINDS)}; got {self.kind!r}")
        for key, hi in (("stickiness_ms", 10_000), ("battery_horizon_s", 86_400), ("battery_penalty_ms", 10_000)):
            v = getattr(self, key)
            if v is None:
                continue
            if self.kind != "request" or self.policy != "best":
                raise ValueError(f"{key} applies to kind 'request' with policy 'best' only")
            if not (0 < v if key == "battery_horizon_s" else 0 <= v) or not v <= hi:
                raise ValueError(f"{key} must be in {'(0' if key == 'battery_horizon_s' else '[0'}, {hi}], got {v}")
        if self.kind != "allreduce":
            for key in ("nodes", "size_mb", "rounds"):
                if getattr(self, key) not in ((), None):
                    raise ValueError(f"{key} applies to kind 'allreduce' only, not {self.kind!r}")
        if self.kind != "matrix":
            for key in ("aggregate_mbps", "matrix_csv"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to kind 'matrix' only, not {self.kind!r}")
            if self.endpoints or self.tcp_flows:
                raise ValueError(f"{'endpoints' if self.endpoints else 'tcp_flows'} applies to kind 'matrix' "
                                 f"only, not {self.kind!r}")
            if not self.src and self.kind != "allreduce":
                raise ValueError(f"src must name a node for kind {self.kind!r}")
        # written so that NaN fails too (every comparison with NaN is false)
        if not 0 <= self.start_s <= 7 * 86400:
            raise ValueError(f"start_s must be in [0, 604800], got {self.start_s}")
        if self.duration_s is not None and not 0 < self.duration_s <= 7 * 86400:
            raise ValueError(f"duration_s must be in (0, 604800], got {self.duration_s}")
        if self.kind == "matrix":
            self._check_matrix()
            return
        if self.kind == "allreduce":
            self._check_allreduce()
            return
        if not 0 < self.rate_pps <= 1000:
            raise ValueError(f"rate_pps must be in (0, 1000], got {self.rate_pps}")
        if not 0 < self.rate_mbps <= 10_000:
            raise ValueError(f"rate_mbps must be in (0, 10000], got {self.rate_mbps}")
        if not 16 <= self.size_bytes <= 1400:
            raise ValueError(f"size_bytes must be in [16, 1400], got {self.size_bytes}")
        if self.policy not in REQUEST_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(REQUEST_POLICIES)}; got {self.policy!r}")
        if not 0 <= self.work_ms <= 10_000:
            raise ValueError(f"work_ms must be in [0, 10000], got {self.work_ms}")
        if self.kind != "request" and not self.dst:
            raise ValueError(f"dst must name a node for kind {self.kind!r}")
        if self.kind == "request" and self.policy == "fixed" and not self.dst:
            raise ValueError("dst must name a compute node for a request with policy 'fixed'")
        if not 0 <= self.migrate_state_mb <= 10_000:
            raise ValueError(f"migrate_state_mb must be in [0, 10000] MB, got {self.migrate_state_mb}")
        if self.migrate_state_mb and (self.kind != "request" or self.policy != "best"):
            raise ValueError("migrate_state_mb applies to kind 'request' with policy 'best' only")

    def _check_matrix(self) -> None:
        if self.src or self.dst:
            raise ValueError(f"{'src' if self.src else 'dst'} does not apply to kind 'matrix': give endpoints "
                             f"(default: every host and terminal)")
        if self.aggregate_mbps is None and self.matrix_csv is None:
            raise ValueError("aggregate_mbps is required for a gravity-model matrix (or give matrix_csv)")
        if self.aggregate_mbps is not None and not 0 < self.aggregate_mbps <= 10_000:
            raise ValueError(f"aggregate_mbps must be in (0, 10000], got {self.aggregate_mbps}")
        if self.matrix_csv is not None and not self.matrix_csv.strip():
            raise ValueError("matrix_csv must name a file, got an empty string")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints names a node twice")
        if self.endpoints and len(self.endpoints) < 2:
            raise ValueError(f"endpoints must name at least two nodes, got {len(self.endpoints)}")
        if not 64 <= self.payload_bytes <= 1400:
            raise ValueError(f"payload_bytes must be in [64, 1400], got {self.payload_bytes}")
        if not 0 <= self.tcp_flows <= 16:
            raise ValueError(f"tcp_flows must be in [0, 16], got {self.tcp_flows}")

    def _check_allreduce(self) -> None:
        if self.src or self.dst:
            raise ValueError(f"{'src' if self.src else 'dst'} does not apply to kind 'allreduce': give nodes "
                             f"(the compute nodes of the ring, in order)")
        if self.migrate_state_mb:
            raise ValueError("migrate_state_mb applies to kind 'request' with policy 'best' only")
        if len(self.nodes) < 2:
            raise ValueError(f"nodes must name at least two compute nodes, got {len(self.nodes)}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("nodes names a node twice")
        if self.size_mb is None or self.rounds is None:
            raise ValueError(f"{'size_mb' if self.size_mb is None else 'rounds'} is required for kind 'allreduce'")
        if isinstance(self.size_mb, bool) or not 0 < self.size_mb <= 1000:
            raise ValueError(f"size_mb must be in (0, 1000] MB, got {self.size_mb}")
        if self.size_mb * 1e6 < 4 * len(self.nodes):
            raise ValueError(f"size_mb {self.size_mb:g} is less than one float32 per node ({len(self.nodes)} nodes)")
        if isinstance(self.rounds, bool) or not 1 <= self.rounds <= 10_000:
            raise ValueError(f"rounds must be an integer in [1, 10000], got {self.rounds}")

    @property
    def label(self) -> str:
        if self.kind == "allreduce":
            more = f"-and-{len(self.nodes) - 3}-more" if len(self.nodes) > 4 else ""
            return self.name or f"allreduce:{'-'.join(self.nodes[:3] if more else self.nodes)}{more}"
        if self.kind == "matrix":
            return self.name or f"matrix:{'csv' if self.matrix_csv else 'gravity'}"
        return self.name or f"{self.kind}:{self.src}--{self.dst or self.policy}"


@dataclass(frozen=True)
class Scenario:
    name: str = "default"
    seed: int = 1
    time: TimeConfig = TimeConfig()
    constellation: ConstellationConfig = ConstellationConfig()
    isl: dict[str, Any] = field(default_factory=dict)
    gsl: dict[str, Any] = field(default_factory=dict)
    ground: GroundConfig = GroundConfig()
    terminal: dict[str, Any] = field(default_factory=dict)
    terminals: tuple[TerminalSpec, ...] = ()
    backhaul: dict[str, Any] = field(default_factory=dict)
    hosts: tuple[HostSpec, ...] = ()
    compute: tuple[ComputeSpec, ...] = ()
    #: the compute nodes' battery model (topologies.power.PowerConfig), checked on load
    power: dict[str, Any] = field(default_factory=dict)
    routing: RoutingConfig = RoutingConfig()
    emulation: EmulationConfig = EmulationConfig()
    #: run over several hosts (emulator.cluster)
    cluster: ClusterConfig = ClusterConfig()
    traffic: tuple[TrafficSpec, ...] = ()
    #: scheduled failures, restores, degradations and regional outages (topologies.events)
    events: tuple[EventSpec, ...] = ()
    #: where the scenario came from (file path or "<built-in>"); relative paths resolve against its folder
    source: str = "<built-in>"
    #: the raw TOML table, kept so a run folder can store exactly what was asked
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SCENARIO_NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r} is not allowed: it names the results folder, so use letters, "
                             f"digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an integer in [0, {SEED_MAX}], got {self.seed!r}")

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source != "<built-in>" else Path.cwd()

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    def isl_config(self):
        from .isl import IslConfig
        # pointing outages are drawn from [isl] seed, which defaults to the scenario's seed
        return _build_from(IslConfig, {"seed": self.seed} | self.isl, _Ctx(self.source, None), "isl")

    def gsl_config(self):
        from .gsl import GslConfig
        return _build_from(GslConfig, self.gsl, _Ctx(self.source, None), "gsl")

    def terminal_config(self):
        from .terminals import TerminalConfig
        return _build_from(TerminalConfig, self.terminal, _Ctx(self.source, None), "terminal")

    def backhaul_config(self):
        from .pops import BackhaulConfig
        return _build_from(BackhaulConfig, self.backhaul, _Ctx(self.source, None), "backhaul")

    def power_config(self):
        from .power import PowerConfig
        return _build_from(PowerConfig, self.power, _Ctx(self.source, None), "power")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
class _Ctx:
    """Where values come from, to say so in errors."""

    def __init__(self, file: str, text: str | None) -> None:
        self.file = file
        self.lines = text.splitlines() if text else []

    def line_of(self, dotted: str) -> int | None:
        """Best-effort line number of a dotted key (``gsl.min_elevation_deg``, ``hosts[1].name``)."""
        if not self.lines:
            return None
        parts = dotted.split(".")
        last = re.sub(r"\[\d+\]$", "", parts[-1])
        tables = [re.sub(r"\[(\d+)\]$", "", p) for p in parts[:-1]]
        index = [int(m.group(1)) if (m := re.search(r"\[(\d+)\]$", p)) else 0 for p in parts[:-1]]
        start = 0
        if tables:
            header = ".".join(tables)
            seen = -1
            want = index[-1]
            for i, line in enumerate(self.lines):
                s = line.strip()
                if s in (f"[{header}]", f"[[{header}]]"):
                    seen += 1
                    if seen == want:
                        start = i + 1
                        break
            else:
                # key given inline (e.g. ``isl = { ... }``) or as a dotted key
                for i, line in enumerate(self.lines):
                    if re.match(rf"^\s*{re.escape(tables[0])}\s*[.=]", line):
                        return i + 1
                return None
        for i in range(start, len(self.lines)):
            s = self.lines[i].strip()
            if i > start and s.startswith("[") and tables:
                break
            if re.match(rf"^{re.escape(last)}\s*=", s):
                return i + 1
        return None

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line_of(key), key=key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_type(value: Any, tp: Any, ctx: _Ctx, key: str) -> Any:
    """Check ``value`` against a dataclass field annotation; coerce int->float and str->datetime."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, ctx, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # one type besides None: its own message says what was wrong
            raise errors[0]
        raise ctx.error(f"expected {' or '.join(_type_name(a) for a in args if a is not type(None))}, "
                        f"got {type(value).__name__} {value!r}", key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(f"expected a number, got {type(value).__name__} {value!r}", key)
        # TOML has nan and inf; no key of a scenario means anything by them (one check for every key)
        if not math.isfinite(value):
            raise ctx.error(f"expected a finite number, got {value!r}", key)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(f"expected an integer, got {type(value).__name__} {value!r}", key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(f"expected true or false, got {type(value).__name__} {value!r}", key)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ctx.error(f"expected a string, got {type(value).__name__} {value!r}", key)
        return value
    if tp is datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime.combine(value, time(0), tzinfo=UTC)
        if isinstance(value, str):
            try:
                d = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ctx.error(f"expected a UTC date-time like 2023-07-18T12:00:00Z, got {value!r}",
                                key) from None
            return d if d.tzinfo else d.replace(tzinfo=UTC)
        raise ctx.error(f"expected a UTC date-time like 2023-07-18T12:00:00Z, got {value!r}", key)
    if origin is tuple:  # tuple[X, ...]: a TOML array of X
        if not isinstance(value, list):
            raise ctx.error(f"expected an array, got {type(value).__name__} {value!r}", key)
        item = typing.get_args(tp)[0]
        return tuple(_check_type(v, item, ctx, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is typing.Any or tp is dict or typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ctx.error(f"expected a table, got {type(value).__name__}", key)
        return value
    raise TypeError(f"scenario loader does not handle field type {tp!r} ({key})")


def _build_from(cls: type, table: Any, ctx: _Ctx, key: str,
                nested: dict[str, Any] | None = None) -> Any:
    """Construct dataclass ``cls`` from a TOML table, checking keys and types against its fields."""
    if not isinstance(table, dict):
        raise ctx.error(f"expected a table, got {type(table).__name__} {table!r}", key)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    nested = nested or {}
    for k in table:
        if k not in fields or k in ("source", "raw"):
            allowed = ", ".join(sorted(n for n in fields if n not in ("source", "raw")))
            raise ctx.error(f"unknown key '{k}' in [{key}]; allowed keys: {allowed}",
                            f"{key}.{k}" if key else k)
    kwargs: dict[str, Any] = {}
    for k, v in table.items():
        sub = f"{key}.{k}" if key else k
        if k in nested:
            kwargs[k] = nested[k](v, ctx, sub)
        else:
            kwargs[k] = _check_type(v, hints[k], ctx, sub)
    missing = [n for n, f in fields.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and n not in kwargs]
    if missing:
        raise ctx.error(f"missing required key(s): {', '.join(missing)}", f"{key}.{missing[0]}" if key
                        else missing[0])
    try:
        return cls(**kwargs)
    except ConfigError as e:
        sub = (f"{key}.{e.key}" if key else e.key) if e.key else key
        raise ConfigError(e.message, file=ctx.file, line=ctx.line_of(sub) if sub else None, key=sub or None) from None
    except (ValueError, TypeError) as e:
        # a __post_init__ check: find which key it names, for the line number
        msg = str(e)
        named = next((k for k in table if re.match(rf"^{re.escape(k)}\b", msg)), None)
        where = (f"{key}.{named}" if key else named) if named else key
        err = ctx.error(msg, where)
        if err.line is None and named is None and table and key:
            # a missing key has no line of its own: point at the table's first key
            err = ConfigError(msg, file=ctx.file, line=ctx.line_of(f"{key}.{next(iter(table))}"), key=where)
        raise err from None


def _list_of(cls: type, check: Any = None):
    def build(value: Any, ctx: _Ctx, key: str) -> tuple:
        if not isinstance(value, list):
            raise ctx.error(f"expected an array of tables ([[{key}]]), got {type(value).__name__}", key)
        items = tuple(_build_from(cls, v, ctx, f"{key}[{i}]") for i, v in enumerate(value))
        if check:
            for i, item in enumerate(items):
                check(item, ctx, f"{key}[{i}]")
        return items
    return build


def _check_named(item: Any, ctx: _Ctx, key: str) -> None:
    check_name(item.name, key.split("[")[0].split(".")[-1].rstrip("s"), ctx, f"{key}.name")


def _check_compute(item: ComputeSpec, ctx: _Ctx, key: str) -> None:
    if item.satellite is not None:
        check_name(item.name, "compute", ctx, f"{key}.name")
    else:  # a rule: its nodes' names start with the prefix (the whole name is checked when expanded)
        check_name(item.prefix, "compute prefix", ctx, f"{key}.prefix")


def _table(cls: type, nested: dict[str, Any] | None = None):
    return lambda value, ctx, key: _build_from(cls, value, ctx, key, nested)


def _raw_table(value: Any, ctx: _Ctx, key: str) -> dict[str, Any]:
    """[isl] and [gsl] are checked against their dataclasses when the plan is built (lazily, so this
    module loads without them); here only the shape is checked, then validated at once below."""
    if not isinstance(value, dict):
        raise ctx.error(f"expected a table, got {type(value).__name__}", key)
    return dict(value)


def _scenario_from_table(table: dict[str, Any], ctx: _Ctx) -> Scenario:
    nested = {
        "time": _table(TimeConfig),
        "constellation": _table(ConstellationConfig, {"shells": _list_of(ShellSpec)}),
        "isl": _raw_table,
        "gsl": _raw_table,
        "ground": _table(GroundConfig, {"sites": _list_of(SiteSpec, _check_named)}),
        "terminal": _raw_table,
        "terminals": _list_of(TerminalSpec, _check_named),
        "backhaul": _raw_table,
        "hosts": _list_of(HostSpec, _check_named),
        "compute": _list_of(ComputeSpec, _check_compute),
        "power": _raw_table,
        "routing": _table(RoutingConfig, {"ospf": _raw_table}),
        "emulation": _table(EmulationConfig),
        "cluster": _table(ClusterConfig),
        "traffic": _list_of(TrafficSpec),
        "events": build_events,
    }
    sc = _build_from(Scenario, table, ctx, "", nested)
    sc = dataclasses.replace(sc, source=ctx.file, raw=table)
    # validate the link sections now, so a bad [isl]/[gsl] key fails at load time with its line
    from .gsl import GslConfig
    from .isl import IslConfig
    _build_from(IslConfig, sc.isl, ctx, "isl")
    gaps = {"gsl": _build_from(GslConfig, sc.gsl, ctx, "gsl").handover_interruption_ms}
    if sc.terminal:
        from .terminals import TerminalConfig
        gaps["terminal"] = _build_from(TerminalConfig, sc.terminal, ctx, "terminal").handover_interruption_ms
    for section, gap_ms in gaps.items():
        # the emulator plays the gap inside the step of the change and ends it before the next step
        if gap_ms >= sc.time.step_s * 1000.0:
            raise ctx.error(f"handover_interruption_ms must be shorter than a step ({sc.time.step_s:g} s), got "
                            f"{gap_ms:g} ms", f"{section}.handover_interruption_ms")
    if sc.backhaul:
        from .pops import BackhaulConfig
        _build_from(BackhaulConfig, sc.backhaul, ctx, "backhaul")
    if sc.power:
        from .power import PowerConfig
        _build_from(PowerConfig, sc.power, ctx, "power")
    _check_references(sc, ctx)
    check_shaper_rates(sc, sc.emulation.shaper, ctx)
    return sc


def check_shaper_rates(sc: Scenario, shaper: str, ctx: _Ctx | None = None) -> None:
    """Every link rate of the scenario must be one the shaping backend ``shaper`` can set (topologies.limits).

    ``plan`` calls this with the scenario's ``[emulation] shaper``, ``run`` again with ``--shaper``, so a rate
    the backend cannot express fails before anything is built, naming the key.

    Raises
    ------
    ConfigError
        Naming the file, line and key of the first rate out of the backend's range.
    """
    ctx = ctx or _file_ctx(sc)
    hi = max_rate_mbps(shaper)
    rates = [(f"{sec}.rate_mbps", getattr(sc, sec).get("rate_mbps")) for sec in ("isl", "gsl", "backhaul")]
    rates.append(("emulation.access_rate_mbps", sc.emulation.access_rate_mbps))
    rates += [(f"events[{i}].rate_mbps", ev.rate_mbps) for i, ev in enumerate(sc.events)]
    for key, v in rates:
        if v is not None and not LINK_RATE_MIN_MBPS <= v <= hi:
            why = "auto may choose netem, whose htb class holds a 32-bit byte rate" if shaper == "auto" else \
                f"the {shaper} shaper's range"
            raise ctx.error(f"{key.split('.')[-1]} must be in [{LINK_RATE_MIN_MBPS:g}, {round(hi, 3)}] Mbit/s "
                            f"for shaper {shaper!r} ({why}), got {v!r}", key)


def _file_ctx(sc: Scenario) -> _Ctx:
    """A :class:`_Ctx` for a loaded scenario: its file's text where it has one, for line numbers."""
    if sc.source != "<built-in>" and Path(sc.source).is_file():
        try:
            return _Ctx(sc.source, Path(sc.source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            pass
    return _Ctx(sc.source, None)


def scenario_error(sc: Scenario, message: str, key: str) -> ConfigError:
    """A :class:`ConfigError` about ``key`` of a loaded scenario, with its file and (where found) line."""
    return _file_ctx(sc).error(message, key)


def _check_references(sc: Scenario, ctx: _Ctx) -> None:
    """Names must be unique; hosts must name a gateway; probes must name known endpoints."""
    seen: dict[str, str] = {}

    def claim(name: str, key: str) -> None:
        if name in seen:
            raise ctx.error(f"name '{name}' is used twice (also at {seen[name]})", key)
        seen[name] = key

    for i, s in enumerate(sc.ground.sites):
        claim(s.name, f"ground.sites[{i}].name")
    for i, term in enumerate(sc.terminals):
        claim(term.name, f"terminals[{i}].name")
    for i, h in enumerate(sc.hosts):
        claim(h.name, f"hosts[{i}].name")
    for i, c in enumerate(sc.compute):
        if c.name:  # a rule's nodes are named when it is expanded at plan time (topologies.compute)
            claim(c.name, f"compute[{i}].name")
    labels: dict[str, int] = {}
    for i, t in enumerate(sc.traffic):
        if t.name:
            check_name(t.name, "traffic", ctx, f"traffic[{i}].name")
        if t.label in labels:
            raise ctx.error(f"traffic entry {i} has the same name {t.label!r} as entry {labels[t.label]}; "
                            f"give one of them a distinct 'name'", f"traffic[{i}].name")
        labels[t.label] = i
        if t.start_s >= sc.time.duration_s:
            raise ctx.error(f"traffic entry {t.label!r} starts at {t.start_s:g} s, not before the scenario ends "
                            f"([time] duration_s = {sc.time.duration_s:g})", f"traffic[{i}].start_s")
    if sc.constellation.tle:
        p = sc.resolve(sc.constellation.tle)
        if not p.is_file():
            raise ctx.error(f"TLE file {str(p)!r} does not exist", "constellation.tle")
    if sc.ground.pops:
        _check_home_pops(sc, ctx)


def _check_home_pops(sc: Scenario, ctx: _Ctx) -> None:
    """With PoPs, every terminal needs a home PoP: a known ``pop`` code, or a ``country`` with PoP shares."""
    from .pops import country_shares, starlink_pops

    codes = {p.code for p in starlink_pops()}
    shares = country_shares()
    for i, t in enumerate(sc.terminals):
        if t.pop is not None:
            if t.pop not in codes:
                raise ctx.error(f"terminal {t.name!r}: pop {t.pop!r} is not a PoP of [ground] pops = "
                                f"{sc.ground.pops!r} (codes like {', '.join(sorted(codes)[:3])}, ...; "
                                f"see topologies/data/starlink-pops.csv)", f"terminals[{i}].pop")
        elif t.country is not None:
            if t.country not in shares:
                raise ctx.error(f"terminal {t.name!r}: country {t.country!r} has no PoP shares in "
                                f"topologies/data/starlink-country-pop.csv; give pop = \"<code>\" instead",
                                f"terminals[{i}].country")
        else:
            raise ctx.error(f"terminal {t.name!r} has neither country nor pop: with [ground] pops its home "
                            f"PoP comes from one of them", f"terminals[{i}].name")


def check_traffic_endpoints(sc: Scenario, names: set[str], kinds: dict[str, str]) -> None:
    """Every traffic entry must name nodes that exist (``kinds``: node name -> node kind).

    Raises
    ------
    ConfigError
        Naming the entry (``traffic[i].src``/``dst``) and the unknown name.
    """
    ctx = _file_ctx(sc)
    for i, t in enumerate(sc.traffic):
        for end in t.endpoints:
            if kinds.get(end) not in ("host", "terminal"):
                raise ctx.error(f"traffic entry {t.label!r}: endpoint {end!r} is "
                                f"{'a ' + str(kinds[end]) if end in kinds else 'not a node of this network'}; "
                                f"matrix endpoints are hosts and terminals", f"traffic[{i}].endpoints")
        if t.kind == "allreduce":
            for end in t.nodes:
                if kinds.get(end) != "compute":
                    raise ctx.error(f"traffic entry {t.label!r}: all-reduce node {end!r} is "
                                    f"{'a ' + str(kinds[end]) if end in kinds else 'not a node of this network'}; "
                                    f"the ring is made of compute nodes", f"traffic[{i}].nodes")
            continue
        if t.kind == "matrix":
            if t.matrix_csv and not sc.resolve(t.matrix_csv).is_file():
                raise ctx.error(f"traffic entry {t.label!r}: matrix_csv {str(sc.resolve(t.matrix_csv))!r} does "
                                f"not exist", f"traffic[{i}].matrix_csv")
            continue
        for end, key in ((t.src, "src"), (t.dst, "dst")):
            if key == "dst" and not end:
                continue
            if end not in names:
                raise ctx.error(f"traffic entry {t.label!r}: {key} {end!r} is not a node of this network",
                                f"traffic[{i}].{key}")
        if t.kind == "request" and t.dst and kinds.get(t.dst) != "compute":
            raise ctx.error(f"traffic entry {t.label!r}: requests go to compute nodes, and {t.dst!r} is a "
                            f"{kinds.get(t.dst)}", f"traffic[{i}].dst")


def scenario_from_table(table: dict[str, Any], source: str) -> Scenario:
    """Validate an already-parsed scenario table (e.g. the copy embedded in a saved timeline)."""
    return _scenario_from_table(table, _Ctx(source, None))


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario TOML file.

    Raises
    ------
    ConfigError
        The file is missing, not TOML, or has an unknown key, a wrong type or an out-of-range value; the
        message names the file, the line and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("scenario file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read scenario: {e}", file=str(path)) from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    ctx = _Ctx(source, text)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(f"not valid TOML: {e}", file=source,
                          line=int(m.group(1)) if m else None) from None
    return _scenario_from_table(table, ctx)


DEFAULT_SCENARIO_TOML = """\
# The built-in default scenario: Starlink's first shell (72 planes x 22 satellites, 550 km, 53 deg),
# two gateways an ocean apart, a ground host behind each and a compute node in orbit.
name = "default"
seed = 1

[time]
start = "2023-07-18T12:00:00Z"
duration_s = 60
step_s = 1.0

[constellation]
preset = "starlink-shell1"

[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278

[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060

[[compute]]
name = "dc-0-0"
satellite = "sat-0-0"

[[traffic]]
kind = "ping"
src = "h-london"
dst = "h-new-york"

[[traffic]]
kind = "ping"
src = "h-london"
dst = "dc-0-0"
"""


def default_scenario() -> Scenario:
    """The built-in scenario used when no file is given."""
    return parse_scenario(DEFAULT_SCENARIO_TOML, "<built-in>")
