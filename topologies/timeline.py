"""The timeline: network snapshots every step, the diffs between them, and its file format.

A timeline is the only thing the emulator needs from the topology layer. It holds

* a node table (satellites first, then gateways, user terminals, PoPs, ground hosts and compute nodes),
* a fixed table of link *slots* (an ISL between two satellites, one antenna of a gateway, a fibre link
  from a gateway to its PoP or between two PoPs, an access link from a host to its gateway or PoP or
  from a compute node to its satellite),
* per link slot and step: state (0 = up, else the reason it is down), peer (the far node; it changes
  only for a gateway antenna, at a handover, and for a cross-shell laser terminal, at a new partner),
  one-way delay in ms, rate in Mbit/s and loss in percent.

File format (``.npz``, written by :meth:`Timeline.save`): a numpy zip archive with the arrays named
below and ``meta``, a UTF-8 JSON document (format version, start time, step, node table, link table,
the scenario that produced it). Loading it back gives the same arrays bit for bit, so a run replays
exactly.

=============  ====================  =======  ==========================================
array          shape                 dtype    meaning
=============  ====================  =======  ==========================================
state          (n_links, n_steps)    uint8    :class:`Reason` code, 0 = up
peer           (n_links, n_steps)    int32    far node index, -1 = none (idle antenna)
delay_ms       (n_links, n_steps)    float32  one-way propagation delay, distance / c
rate_mbps      (n_links, n_steps)    float32  link rate, each direction
loss_pct       (n_links, n_steps)    float32  random loss, each direction
link_a         (n_links,)            int32    near node index (satellite, gateway, host)
link_class     (n_links,)            uint8    :data:`LINK_CLASSES` index
link_role      (n_links,)            uint8    :data:`LINK_ROLES` index
sat_lla        (n_sats, n_steps, 3)  float32  satellite latitude_deg, longitude_deg, altitude_km
sat_sunlight   (n_sats, n_steps)     uint8    0 sunlit, 1 penumbra, 2 umbra, 255 no SGP4 state
                                              (:mod:`topologies.sunlight`; version 4, optional)
compute_charge_wh (n_compute, n_steps) float32 battery energy of each compute node (rows in
                                              node-table order; :mod:`topologies.power`; version 5,
                                              optional, with compute_power)
compute_power  (n_compute, n_steps)  uint8    0 normal, 1 throttled, 2 stopped (accepts no work)
=============  ====================  =======  ==========================================
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

FORMAT = "satnetem-timeline"
#: 2: link role "cross-shell" and state NO_PARTNER (cross-shell laser slots). 3: node kind "pop", link
#: class "fibre" with roles "backhaul" (gateway to PoP) and "backbone" (PoP to PoP). Files of earlier
#: versions, which have none of these, load unchanged (new names were only appended to the tables).
#: 4: the optional array sat_sunlight (a timeline without it loads with None).
#: 5: the optional arrays compute_charge_wh and compute_power (topologies.power), and compute nodes' info
#: ``entry`` (their [[compute]] entry) and ``battery_wh``.
FORMAT_VERSION = 5
_READABLE_VERSIONS = (1, 2, 3, 4, 5)

#: Speed of light in vacuum, km/s. Laser ISLs cross vacuum; the GSL path is treated the same
#: (the atmosphere adds well under 0.1% to the path).
C_KM_S = 299_792.458

NODE_KINDS = ("sat", "gateway", "terminal", "host", "compute", "pop")
#: kinds that forward packets (a user terminal is a router with one antenna, like a gateway without hosts;
#: a PoP is a router on the terrestrial fibre, where terminals' traffic enters the internet)
ROUTER_KINDS = ("sat", "gateway", "terminal", "pop")
#: fibre: terrestrial links of fixed peer and delay (topologies.pops)
LINK_CLASSES = ("isl", "gsl", "access", "fibre")
#: intra: fore/aft in the plane; inter: left/right to a neighbouring plane; cross-shell: a spare laser
#: terminal whose partner, in another shell, changes over time (class "isl", peer -1 while it has none);
#: backhaul: a gateway to its PoP, backbone: PoP to PoP (class "fibre").
LINK_ROLES = ("intra", "inter", "gsl", "access", "cross-shell", "backhaul", "backbone")


class Reason(IntEnum):
    """Why a link slot is down at a step (UP when it carries traffic)."""

    UP = 0
    RANGE = 1  # farther apart than the maximum ISL range
    OCCLUDED = 2  # line of sight passes through the Earth plus atmosphere margin
    POLAR = 3  # an inter-plane ISL above the polar cutoff latitude
    SEAM = 4  # across the seam of a Walker-star shell (counter-rotating planes)
    TRACKING = 5  # partner's line-of-sight angular rate above the terminal's slew limit
    ACQUIRING = 6  # pointing/acquisition after (re)gaining a partner
    OUTAGE = 7  # random pointing outage
    NO_SATELLITE = 8  # gateway antenna with no satellite above the elevation mask
    INVALID = 9  # an endpoint has no valid position (SGP4 failure, decayed)
    TERMINALS = 10  # no free laser terminal on an endpoint
    FAILED = 11  # forced down by a script (emulator.api fail()): never in a planned timeline
    NO_PARTNER = 12  # cross-shell laser terminal with no partner in another shell
    SCHEDULED = 13  # taken down by a scenario's [[events]] (topologies.events): planned, unlike FAILED

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class Node:
    """One node of the emulated network.

    ``info`` carries kind-specific facts: for a satellite ``shell``, ``plane``, ``slot``; for a gateway
    ``lat_deg``, ``lon_deg``, ``alt_m``, ``antennas``; for a user terminal the same (one antenna) and its
    ``country`` and ``pop`` (either may be None), and with PoPs its ``home_pop`` (node name); for a PoP
    ``code``, ``city``, ``country``, ``lat_deg``, ``lon_deg``; for a host its ``gateway`` (the gateway or
    PoP it hangs off); for a compute node its ``satellite``.
    """

    name: str
    kind: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """The network at one step (or the state the emulator has applied).

    All arrays have shape (n_links,). ``params`` is (n_links, 3): delay_ms, rate_mbps, loss_pct.
    """

    step: int
    state: np.ndarray
    peer: np.ndarray
    params: np.ndarray

    @property
    def up(self) -> np.ndarray:
        return self.state == Reason.UP

    def apply(self, diff: Diff) -> Snapshot:
        """Return the snapshot with ``diff`` applied (self is unchanged)."""
        state = self.state.copy()
        peer = self.peer.copy()
        params = self.params.copy()
        state[diff.state_links] = diff.new_state
        peer[diff.peer_links] = diff.new_peer
        params[diff.param_links] = diff.new_params
        return Snapshot(diff.to_step, state, peer, params)


@dataclass(frozen=True)
class Diff:
    """What changes from one snapshot to another, as arrays of link indices and values.

    Computing it has no side effects; applying it to the snapshot it was computed from gives the
    target, and applying :meth:`inverse` after it gives the original back.
    """

    from_step: int
    to_step: int
    state_links: np.ndarray
    old_state: np.ndarray
    new_state: np.ndarray
    peer_links: np.ndarray
    old_peer: np.ndarray
    new_peer: np.ndarray
    param_links: np.ndarray
    old_params: np.ndarray
    new_params: np.ndarray

    @property
    def went_up(self) -> np.ndarray:
        """Link indices that come up."""
        return self.state_links[(self.new_state == Reason.UP) & (self.old_state != Reason.UP)]

    @property
    def went_down(self) -> np.ndarray:
        """Link indices that go down."""
        return self.state_links[(self.new_state != Reason.UP) & (self.old_state == Reason.UP)]

    @property
    def handovers(self) -> np.ndarray:
        """Link indices (gateway antennas) that move to another satellite or lose/gain one."""
        return self.peer_links

    @property
    def empty(self) -> bool:
        return not (len(self.state_links) or len(self.peer_links) or len(self.param_links))

    def inverse(self) -> Diff:
        return Diff(self.to_step, self.from_step,
                    self.state_links, self.new_state, self.old_state,
                    self.peer_links, self.new_peer, self.old_peer,
                    self.param_links, self.new_params, self.old_params)


def diff(old: Snapshot, new: Snapshot, delay_tolerance_ms: float = 0.0) -> Diff:
    """Compute the changes from ``old`` to ``new``.

    Parameters
    ----------
    old, new : Snapshot
        Snapshots over the same link table.
    delay_tolerance_ms : float
        A delay change no larger than this is not reported. Pass the emulator's *applied* snapshot as
        ``old`` so that the error never accumulates beyond the tolerance. Rate and loss changes are
        always reported.
    """
    s = np.flatnonzero(old.state != new.state)
    p = np.flatnonzero(old.peer != new.peer)
    dd = np.abs(new.params[:, 0] - old.params[:, 0]) > delay_tolerance_ms
    dr = (new.params[:, 1] != old.params[:, 1]) | (new.params[:, 2] != old.params[:, 2])
    q = np.flatnonzero(dd | dr)
    return Diff(old.step, new.step,
                s, old.state[s], new.state[s],
                p, old.peer[p], new.peer[p],
                q, old.params[q], new.params[q])


@dataclass
class Timeline:
    """Snapshots every ``step_s`` seconds from ``start`` over a fixed node and link table."""

    start: datetime
    step_s: float
    nodes: list[Node]
    link_a: np.ndarray
    link_class: np.ndarray
    link_role: np.ndarray
    state: np.ndarray
    peer: np.ndarray
    delay_ms: np.ndarray
    rate_mbps: np.ndarray
    loss_pct: np.ndarray
    sat_lla: np.ndarray
    scenario: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    #: (n_sats, n_steps) uint8 sunlight codes (topologies.sunlight), None where not computed
    sat_sunlight: np.ndarray | None = None
    #: (n_compute, n_steps) float32 battery energy, Wh, and uint8 power state (topologies.power.POWER_STATES)
    #: of each compute node, rows in node-table order; None where not computed
    compute_charge_wh: np.ndarray | None = None
    compute_power: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_links, n_steps = self.state.shape
        for name in ("peer", "delay_ms", "rate_mbps", "loss_pct"):
            if getattr(self, name).shape != (n_links, n_steps):
                raise ValueError(f"timeline array {name} has shape {getattr(self, name).shape}, "
                                 f"expected {(n_links, n_steps)}")
        for name in ("link_a", "link_class", "link_role"):
            if getattr(self, name).shape != (n_links,):
                raise ValueError(f"timeline array {name} has shape {getattr(self, name).shape}, "
                                 f"expected {(n_links,)}")
        if self.sat_sunlight is not None and self.sat_sunlight.shape != self.sat_lla.shape[:2]:
            raise ValueError(f"timeline array sat_sunlight has shape {self.sat_sunlight.shape}, "
                             f"expected {self.sat_lla.shape[:2]}")
        n_compute = sum(1 for n in self.nodes if n.kind == "compute")
        for name in ("compute_charge_wh", "compute_power"):
            a = getattr(self, name)
            if a is not None and a.shape != (n_compute, n_steps):
                raise ValueError(f"timeline array {name} has shape {a.shape}, expected {(n_compute, n_steps)}")
        self._index = {n.name: i for i, n in enumerate(self.nodes)}

    # --- sizes and lookups -------------------------------------------------------------------
    @property
    def n_links(self) -> int:
        return int(self.state.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.state.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_steps * self.step_s

    def node_index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ConfigError(f"unknown node '{name}'") from None

    def nodes_of(self, kind: str) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.kind == kind]

    def time_of(self, step: int) -> datetime:
        return self.start + timedelta(seconds=step * self.step_s)

    # --- snapshots and diffs -----------------------------------------------------------------
    def snapshot(self, step: int) -> Snapshot:
        if not 0 <= step < self.n_steps:
            raise IndexError(f"step {step} outside 0..{self.n_steps - 1}")
        params = np.stack([self.delay_ms[:, step], self.rate_mbps[:, step], self.loss_pct[:, step]],
                          axis=1)
        return Snapshot(step, self.state[:, step].copy(), self.peer[:, step].copy(), params)

    def empty_snapshot(self) -> Snapshot:
        """Every link down with no peer: the state before anything is built."""
        n = self.n_links
        return Snapshot(-1, np.full(n, Reason.INVALID, np.uint8), np.full(n, -1, np.int32),
                        np.zeros((n, 3), np.float32))

    def diffs(self, delay_tolerance_ms: float = 0.0) -> Iterator[Diff]:
        """Diffs between consecutive steps, as the emulator would apply them (tolerance tracked
        against the applied state)."""
        applied = self.snapshot(0)
        for k in range(1, self.n_steps):
            d = diff(applied, self.snapshot(k), delay_tolerance_ms)
            applied = applied.apply(d)
            yield d

    # --- file format -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "start": self.start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "step_s": self.step_s,
            "nodes": [{"name": n.name, "kind": n.kind, "info": n.info} for n in self.nodes],
            "scenario": self.scenario,
            "report": self.report,
        }
        arrays = {k: getattr(self, k) for k in ("state", "peer", "delay_ms", "rate_mbps", "loss_pct",
                                                 "link_a", "link_class", "link_role", "sat_lla")}
        for name in ("sat_sunlight", "compute_charge_wh", "compute_power"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        with open(path, "wb") as f:
            np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta, default=str).encode(), np.uint8), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Timeline:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ConfigError("timeline file not found", file=str(path)) from None
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ConfigError(f"not a satnetem timeline (.npz): {e}", file=str(path)) from None
        if "meta" not in data:
            raise ConfigError("not a satnetem timeline: no 'meta' member", file=str(path))
        meta = json.loads(data.pop("meta").tobytes().decode())
        if meta.get("format") != FORMAT or meta.get("version") not in _READABLE_VERSIONS:
            raise ConfigError(f"unsupported timeline format {meta.get('format')!r} version "
                              f"{meta.get('version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}",
                              file=str(path))
        start = datetime.fromisoformat(meta["start"].replace("Z", "+00:00"))
        nodes = [Node(n["name"], n["kind"], n.get("info", {})) for n in meta["nodes"]]
        try:
            return cls(start=start, step_s=float(meta["step_s"]), nodes=nodes,
                       scenario=meta.get("scenario", {}), report=meta.get("report", {}), **data)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"corrupt timeline: {e}", file=str(path)) from None
