"""What a compute node can know about where it is: its satellite's state at a step, read from the timeline.

The emulator writes one such view per compute node and step into a read-only file inside the node
(``/run/satnetem/node/whereami.json``, :mod:`emulator.traffic.compute`). Everything here follows from the
timeline alone:

* position: the satellite's WGS84 latitude, longitude and altitude, and its Earth-fixed (ECEF) position;
* velocity: Earth-fixed, km/s, the central difference of the ECEF positions of the steps either side (one
  side at the ends). The timeline keeps positions as float32 degrees (~1 m), so with 1 s steps the
  velocity is good to ~1 m/s; a 15 s step adds the chord's error, ~0.5 m/s at LEO;
* sunlight: ``sunlit``, ``penumbra`` or ``umbra`` (:mod:`topologies.sunlight`), absent when the timeline
  has no sunlight;
* the satellites it has a laser link up with now, and the ground nodes (gateways, user terminals) with an
  antenna linked to it now;
* the gateways it is in view of: above the scenario's ``[gsl] min_elevation_deg`` from the gateway (WGS84
  vertical, no refraction), with that elevation, highest first;
* its battery's charge (Wh and percent of ``battery_wh``) and power state, when the timeline has them
  (:mod:`topologies.power`);
* the next handover (the next step at which the set of ground antennas linked to it changes) and the next
  eclipse entry and exit (steps at which it leaves and re-enters full sunlight), as seconds from now and
  UTC times, at the timeline's step resolution; None when none is within the timeline.

The events are found once for all nodes (:class:`WhereAmI`), so a step's views cost array lookups.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .frames import geodetic_to_ecef_km, look_angles
from .timeline import LINK_CLASSES, Timeline

SUNLIGHT_NAMES = {0: "sunlit", 1: "penumbra", 2: "umbra"}
_GROUND_KINDS = ("gateway", "terminal")
#: ISO times of steps kept at most (a 2 h run at 1 s asks for 7,200, each once, plus its events' times)
ISO_CACHE_MAX = 512


def _next_after(events: list[np.ndarray], i: int, step: int) -> int | None:
    e = events[i]
    k = int(np.searchsorted(e, step, side="right"))
    return int(e[k]) if k < e.size else None


class WhereAmI:
    """Views of compute nodes ``nodes`` (node indices) at any step of ``tl``.

    Parameters
    ----------
    tl : Timeline
    nodes : sequence of int
        Compute node indices; each describes the satellite named by its info's ``satellite``.

    Raises
    ------
    ValueError
        A node is not a compute node.
    """

    def __init__(self, tl: Timeline, nodes: list[int]) -> None:
        self.tl = tl
        for i in nodes:
            if tl.nodes[i].kind != "compute":
                raise ValueError(f"node {tl.nodes[i].name!r} is a {tl.nodes[i].kind}, not a compute node")
        self.nodes = list(nodes)
        # satellites come first in the node table, so their node indices index sat_lla too
        self.sats = np.asarray([tl.node_index(tl.nodes[i].info["satellite"]) for i in nodes], dtype=np.int64)
        rows = {n: k for k, n in enumerate(tl.nodes_of("compute"))}
        self._rows = [rows[i] for i in nodes]
        self.charge_wh = getattr(tl, "compute_charge_wh", None)
        self.power = getattr(tl, "compute_power", None)
        n_sat = tl.sat_lla.shape[0]
        if self.sats.size and (self.sats.min() < 0 or self.sats.max() >= n_sat):
            raise ValueError(f"satellite indices must be in [0, {n_sat}), got {self.sats.tolist()}")
        lla = tl.sat_lla[self.sats].astype(np.float64)  # (n, n_steps, 3)
        self.ecef_km = geodetic_to_ecef_km(lla[..., 0], lla[..., 1], lla[..., 2] * 1000.0)
        self.vel_km_s = np.gradient(self.ecef_km, tl.step_s, axis=1) if tl.n_steps > 1 else \
            np.full_like(self.ecef_km, np.nan)
        # ground antenna slots: who each is linked to at each step (-1 when down or idle)
        self._isl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("isl"))
        gsl = np.flatnonzero(tl.link_class == LINK_CLASSES.index("gsl"))
        self._gsl = gsl
        linked = np.where(tl.state[gsl] == 0, tl.peer[gsl], -1)  # (n_gsl, n_steps)
        pos = {int(s): i for i, s in enumerate(self.sats)}
        self._handovers: list[np.ndarray] = [np.zeros(0, np.int64) for _ in self.sats]
        if linked.shape[1] > 1:
            slot, k = np.nonzero(linked[:, 1:] != linked[:, :-1])
            steps: dict[int, list[int]] = {}
            for s_old, s_new, kk in zip(linked[slot, k], linked[slot, k + 1], k + 1, strict=True):
                for s in (int(s_old), int(s_new)):
                    if s in pos:
                        steps.setdefault(pos[s], []).append(int(kk))
            for i, st in steps.items():
                self._handovers[i] = np.unique(st)
        self._entry: list[np.ndarray] = [np.zeros(0, np.int64) for _ in self.sats]
        self._exit: list[np.ndarray] = [np.zeros(0, np.int64) for _ in self.sats]
        gw = tl.nodes_of("gateway")
        self._gw_names = [tl.nodes[g].name for g in gw]
        self._gw_lat = np.array([float(tl.nodes[g].info["lat_deg"]) for g in gw])
        self._gw_lon = np.array([float(tl.nodes[g].info["lon_deg"]) for g in gw])
        self._gw_ecef = geodetic_to_ecef_km(self._gw_lat, self._gw_lon,
                                            np.array([float(tl.nodes[g].info.get("alt_m", 0.0)) for g in gw]))
        from .gsl import GslConfig

        self.min_elevation_deg = float((tl.scenario.get("gsl") or {}).get("min_elevation_deg",
                                                                           GslConfig.min_elevation_deg))
        self._names = [n.name for n in tl.nodes]
        self._kinds = [n.kind for n in tl.nodes]
        self._iso_cache: dict[int, str] = {}
        self.sunlight = None if tl.sat_sunlight is None else tl.sat_sunlight[self.sats]
        if self.sunlight is not None and tl.n_steps > 1:
            lit = self.sunlight == 0
            for i in range(len(self.sats)):
                d = np.diff(lit[i].astype(np.int8))
                self._entry[i] = np.flatnonzero(d == -1) + 1
                self._exit[i] = np.flatnonzero(d == 1) + 1

    def _iso(self, step: int) -> str:
        iso = self._iso_cache.get(step)
        if iso is None:
            if len(self._iso_cache) >= ISO_CACHE_MAX:  # a long run asks for every step once: bounded, not kept
                self._iso_cache.clear()
            iso = self._iso_cache[step] = self.tl.time_of(step).isoformat().replace("+00:00", "Z")
        return iso

    def _when(self, step: int, event: int | None) -> dict[str, Any]:
        if event is None:
            return {"in_s": None, "utc": None}
        return {"in_s": round((event - step) * self.tl.step_s, 3), "utc": self._iso(event)}

    @staticmethod
    def _grouped(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> list[list[int]]:
        """For each of ``wanted``: the ``values`` whose key it is (one sort for all, not a scan per node)."""
        order = np.argsort(keys, kind="stable")
        k, v = keys[order], values[order]
        lo = np.searchsorted(k, wanted, side="left").tolist()
        hi = np.searchsorted(k, wanted, side="right").tolist()
        vals = v.tolist()
        return [vals[a:b] for a, b in zip(lo, hi, strict=True)]

    def views(self, step: int) -> dict[str, dict[str, Any]]:
        """Compute node name -> a JSON-able dict of its satellite at ``step`` (see the module docstring)."""
        tl = self.tl
        if not 0 <= step < tl.n_steps:
            raise ValueError(f"step must be in [0, {tl.n_steps}), got {step}")
        names = self._names
        isl_up = self._isl[tl.state[self._isl, step] == 0]
        a, b = tl.link_a[isl_up], tl.peer[isl_up, step]
        lasers = self._grouped(np.concatenate([a, b]), np.concatenate([b, a]), self.sats)
        gsl_up = self._gsl[tl.state[self._gsl, step] == 0]
        ground = self._grouped(tl.peer[gsl_up, step], tl.link_a[gsl_up], self.sats)
        # elevation of every compute satellite from every gateway, (n_gateways, n_nodes); the few in view
        # grouped by node, highest first
        elev, _, _ = look_angles(self._gw_ecef[:, None, :], self._gw_lat[:, None], self._gw_lon[:, None],
                                 self.ecef_km[None, :, step, :])
        g_idx, n_idx = np.nonzero(elev >= self.min_elevation_deg)
        order = np.lexsort((-elev[g_idx, n_idx], n_idx))
        in_view = self._grouped(n_idx[order], np.arange(order.size), np.arange(len(self.sats)))  # j: sorted order
        g_sorted, e_sorted = g_idx[order].tolist(), np.round(elev[g_idx, n_idx][order], 3).tolist()
        lla = tl.sat_lla[self.sats, step].astype(np.float64).tolist()
        pos = np.round(self.ecef_km[:, step], 4).tolist()
        vel = np.round(self.vel_km_s[:, step], 5).tolist()
        sun = None if self.sunlight is None else self.sunlight[:, step].tolist()
        utc = self._iso(step)
        power_names: tuple[str, ...] = ()
        if self.charge_wh is not None and self.power is not None:
            # imported here: topologies.power exists wherever the timeline carries its arrays
            power_names = importlib.import_module("topologies.power").POWER_STATES
            wh_all = self.charge_wh[self._rows, step].tolist()
            state_all = self.power[self._rows, step].tolist()
        out = {}
        for i, s in enumerate(self.sats.tolist()):
            lat, lon, alt = lla[i]
            v: dict[str, Any] = {
                "utc": utc, "step": step,
                "node": names[self.nodes[i]], "satellite": names[s],
                "lat_deg": round(lat, 5), "lon_deg": round(lon, 5), "alt_km": round(alt, 4),
                "position_ecef_km": pos[i],
                "velocity_ecef_km_s": vel[i],
                "laser_neighbours": [names[n] for n in sorted(set(lasers[i]))],
                "ground_linked": [names[g] for g in sorted(set(ground[i])) if self._kinds[g] in _GROUND_KINDS],
                "gateways_in_view": [{"gateway": self._gw_names[g_sorted[j]], "elevation_deg": e_sorted[j]}
                                     for j in in_view[i]],
                "next_handover": self._when(step, _next_after(self._handovers, i, step)),
            }
            if sun is not None:
                v["sunlight"] = SUNLIGHT_NAMES.get(sun[i])
                v["next_eclipse_entry"] = self._when(step, _next_after(self._entry, i, step))
                v["next_eclipse_exit"] = self._when(step, _next_after(self._exit, i, step))
            if power_names:
                wh = wh_all[i]
                cap = tl.nodes[self.nodes[i]].info.get("battery_wh")
                v["battery"] = {"charge_wh": round(wh, 3),
                                "charge_pct": round(100.0 * wh / cap, 2) if cap else None,
                                "state": power_names[state_all[i]]}
            out[v["node"]] = v
        return out

