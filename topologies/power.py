"""The battery of every compute satellite, step by step: solar input, bus and compute draw, state of charge,
and the power states (normal, throttled, stopped) that follow from it.

Per compute node and step ``k`` (to ``k + 1``, ``dt = step_s``):

* the array delivers ``solar_w`` times the share of the Sun's disc not hidden by the Earth (1 sunlit,
  0 in umbra, in between in penumbra: :func:`lit_fraction`), averaged over the step by the trapezoid rule;
* the load is ``bus_w`` plus the compute draw of the node's power state at ``k``: ``compute_w`` (normal),
  ``compute_idle_w + throttle_share x (compute_w - compute_idle_w)`` (throttled), ``compute_idle_w``
  (stopped: it accepts no work);
* a surplus charges the battery at ``charge_efficiency`` and what does not fit above ``battery_wh`` is shed
  (the array is shunted); a deficit comes out of the battery, down to empty;
* the state at ``k + 1`` follows from the charge: below ``throttle_pct`` the node throttles, below
  ``stop_pct`` it stops; it comes back up a level only ``hysteresis_pct`` above the threshold it fell
  through, so that a node whose surplus depends on its own state does not switch every step.

Every default is an assumption with its source in docs/model.md ("Power").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .sunlight import shadow_angles

if TYPE_CHECKING:
    from .timeline import Timeline

FloatArray = NDArray[np.float64]

#: Power states, indices of the timeline's ``compute_power`` codes.
POWER_STATES = ("normal", "throttled", "stopped")
NORMAL, THROTTLED, STOPPED = 0, 1, 2


@dataclass(frozen=True)
class PowerConfig:
    """The ``[power]`` section: one battery model for every compute node (defaults: docs/model.md, "Power")."""

    #: array output in full sun, W (a Sun-tracking array: no cosine loss)
    solar_w: float = 400.0
    #: platform draw (attitude control, computer, radios, laser terminals, heaters), W, always on
    bus_w: float = 80.0
    #: compute payload at full load, W
    compute_w: float = 60.0
    #: compute payload idle (stopped: it accepts no work), W
    compute_idle_w: float = 15.0
    #: usable battery energy, Wh
    battery_wh: float = 200.0
    #: charge at the plan's start, percent of battery_wh
    initial_pct: float = 100.0
    #: energy stored per energy of surplus put into the battery
    charge_efficiency: float = 0.92
    #: below this charge (percent) the node throttles
    throttle_pct: float = 40.0
    #: below this charge (percent) the node stops accepting work
    stop_pct: float = 20.0
    #: share of the compute payload's dynamic power (compute_w - compute_idle_w) a throttled node draws;
    #: also the CPU share the emulator may give it
    throttle_share: float = 0.5
    #: a node comes back up a level only this far (percent points) above the threshold it fell through
    hysteresis_pct: float = 5.0

    def __post_init__(self) -> None:
        for key, lo, hi, lo_open in (("solar_w", 0.0, 1e6, False), ("bus_w", 0.0, 1e6, False),
                                     ("compute_w", 0.0, 1e6, False), ("compute_idle_w", 0.0, 1e6, False),
                                     ("battery_wh", 0.0, 1e7, True), ("initial_pct", 0.0, 100.0, False),
                                     ("charge_efficiency", 0.0, 1.0, True), ("throttle_pct", 0.0, 100.0, False),
                                     ("stop_pct", 0.0, 100.0, False), ("throttle_share", 0.0, 1.0, False),
                                     ("hysteresis_pct", 0.0, 100.0, False)):
            v = getattr(self, key)
            if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi):
                raise ValueError(f"{key} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
        if self.compute_idle_w > self.compute_w:
            raise ValueError(f"compute_idle_w ({self.compute_idle_w:g} W) must not exceed compute_w "
                             f"({self.compute_w:g} W)")
        if self.stop_pct > self.throttle_pct:
            raise ValueError(f"stop_pct ({self.stop_pct:g}) must not exceed throttle_pct ({self.throttle_pct:g})")
        if self.throttle_pct + self.hysteresis_pct > 100.0:
            raise ValueError(f"hysteresis_pct ({self.hysteresis_pct:g}) puts the way back from throttled above "
                             f"100% (throttle_pct {self.throttle_pct:g})")

    def load_w(self, state: NDArray[Any]) -> FloatArray:
        """Bus plus compute draw, W, of nodes in power ``state`` (:data:`POWER_STATES` codes)."""
        dyn = self.compute_w - self.compute_idle_w
        share = np.array([1.0, self.throttle_share, 0.0])[np.asarray(state, np.int64)]
        return self.bus_w + self.compute_idle_w + share * dyn


def lit_fraction(r_km: FloatArray, sun_km: FloatArray) -> FloatArray:
    """Share of the Sun's disc seen from each satellite that the Earth does not hide, in [0, 1].

    The conical model of Montenbruck & Gill (Satellite Orbits, 2000, sect. 3.4.2): the Sun's and the
    Earth's discs as circles of their apparent radii ``a`` and ``b`` at separation ``c``
    (:func:`topologies.sunlight.shadow_angles`); the hidden part is the area of their overlap. 1 exactly
    where :func:`topologies.sunlight.sunlight_states` says sunlit, 0 where it says umbra.

    Parameters
    ----------
    r_km : numpy.ndarray, shape (..., 3)
        Satellite positions (TEME, km).
    sun_km : numpy.ndarray, broadcastable to ``r_km``
        The Sun (TEME, km) at the same times.
    """
    c, a, b = shadow_angles(r_km, sun_km)
    # the lens of two overlapping circles; outside (b - a, a + b) the clip makes it 0 or the whole disc
    cc = np.clip(c, b - a, a + b)
    x = np.clip((cc * cc + a * a - b * b) / (2.0 * a * cc), -1.0, 1.0)
    y = np.clip((cc * cc + b * b - a * a) / (2.0 * b * cc), -1.0, 1.0)
    k = np.sqrt(np.clip((-cc + a + b) * (cc + a - b) * (cc - a + b) * (cc + a + b), 0.0, None))
    hidden = a * a * np.arccos(x) + b * b * np.arccos(y) - 0.5 * k
    frac = 1.0 - hidden / (np.pi * a * a)
    frac = np.where(c >= a + b, 1.0, np.where(c <= b - a, 0.0, frac))
    return np.clip(frac, 0.0, 1.0)


@dataclass(frozen=True)
class PowerSeries:
    """The battery model's result for ``n`` nodes over ``n_t`` steps.

    Attributes
    ----------
    charge_wh : numpy.ndarray, shape (n, n_t)
        Battery energy at each step.
    state : numpy.ndarray, shape (n, n_t), uint8
        :data:`POWER_STATES` code at each step.
    solar_wh, load_wh, stored_wh, drawn_wh, shed_wh, unmet_wh : numpy.ndarray, shape (n, n_t - 1)
        Over each step: energy from the array, energy the loads took, energy put into the battery (after
        the charge efficiency), taken out of it, shed because the battery was full, and the loads' demand
        an empty battery could not meet.
    """

    charge_wh: FloatArray
    state: NDArray[np.uint8]
    solar_wh: FloatArray
    load_wh: FloatArray
    stored_wh: FloatArray
    drawn_wh: FloatArray
    shed_wh: FloatArray
    unmet_wh: FloatArray


def _level(pct: FloatArray, prev: NDArray[np.int64], cfg: PowerConfig) -> NDArray[np.int64]:
    down = np.where(pct < cfg.stop_pct, STOPPED, np.where(pct < cfg.throttle_pct, THROTTLED, NORMAL))
    h = cfg.hysteresis_pct
    up = np.where(pct >= cfg.throttle_pct + h, NORMAL, np.where(pct >= cfg.stop_pct + h, THROTTLED, STOPPED))
    # worse at once; better only as far as the hysteresis allows
    return np.maximum(down, np.minimum(prev, up))


def battery_series(lit: FloatArray, cfg: PowerConfig, step_s: float) -> PowerSeries:
    """Run the battery model over lit fractions.

    Parameters
    ----------
    lit : numpy.ndarray, shape (n, n_t)
        Share of the Sun's disc each node's satellite sees at each step (:func:`lit_fraction`; 0 where
        the satellite has no position).
    cfg : PowerConfig
    step_s : float
        Seconds between steps.

    Returns
    -------
    PowerSeries
    """
    lit = np.asarray(lit, np.float64)
    n, n_t = lit.shape
    cap = cfg.battery_wh
    hours = step_s / 3600.0
    charge = np.empty((n, n_t))
    state = np.empty((n, n_t), np.uint8)
    flows = {k: np.zeros((n, max(n_t - 1, 0))) for k in ("solar", "load", "stored", "drawn", "shed", "unmet")}
    e = np.full(n, cap * cfg.initial_pct / 100.0)
    s = _level(100.0 * e / cap, np.zeros(n, np.int64), cfg)
    charge[:, 0], state[:, 0] = e, s
    solar_wh = cfg.solar_w * 0.5 * (lit[:, :-1] + lit[:, 1:]) * hours  # trapezoid over each step
    for k in range(n_t - 1):
        load = cfg.load_w(s) * hours
        net = solar_wh[:, k] - load
        room = cap - e
        stored = np.minimum(np.maximum(net, 0.0) * cfg.charge_efficiency, room)
        shed = np.maximum(net, 0.0) - stored / cfg.charge_efficiency
        drawn = np.minimum(np.maximum(-net, 0.0), e)
        unmet = np.maximum(-net, 0.0) - drawn
        e = e + stored - drawn
        s = _level(100.0 * e / cap, s, cfg)
        charge[:, k + 1], state[:, k + 1] = e, s
        for name, v in (("solar", solar_wh[:, k]), ("load", load), ("stored", stored), ("drawn", drawn),
                        ("shed", shed), ("unmet", unmet)):
            flows[name][:, k] = v
    return PowerSeries(charge, state, flows["solar"], flows["load"], flows["stored"], flows["drawn"],
                       flows["shed"], flows["unmet"])


def power_events(tl: Timeline) -> list[dict[str, Any]]:
    """Every change of a compute node's power state in ``tl``, in time order (with the state at step 0
    where it is not normal).

    Returns
    -------
    list of dict
        ``step``, ``t_s`` (seconds from the start), ``node``, ``satellite``, ``state`` (the new one, a
        :data:`POWER_STATES` name), ``previous`` and ``charge_pct``. Empty without power arrays.
    """
    if tl.compute_power is None or tl.compute_charge_wh is None:
        return []
    nodes = tl.nodes_of("compute")
    st = tl.compute_power.astype(np.int64)
    prev = np.concatenate([np.full((st.shape[0], 1), NORMAL), st[:, :-1]], axis=1)
    row, step = np.nonzero(st != prev)
    order = np.lexsort((row, step))
    out = []
    for r, k in zip(row[order].tolist(), step[order].tolist()):
        node = tl.nodes[nodes[r]]
        cap = float(node.info.get("battery_wh") or 0.0)
        out.append({"step": k, "t_s": round(k * tl.step_s, 3), "node": node.name,
                    "satellite": node.info.get("satellite"), "state": POWER_STATES[st[r, k]],
                    "previous": POWER_STATES[prev[r, k]],
                    "charge_pct": round(100.0 * float(tl.compute_charge_wh[r, k]) / cap, 2) if cap else None})
    return out


def power_summary(tl: Timeline) -> dict[str, Any]:
    """What ``plan`` shows about power: per-state shares of node-time, the lowest charge, the events."""
    if tl.compute_power is None or tl.compute_charge_wh is None or not tl.compute_power.size:
        return {}
    nodes = tl.nodes_of("compute")
    cap = np.array([float(tl.nodes[i].info.get("battery_wh") or np.nan) for i in nodes])
    pct = 100.0 * tl.compute_charge_wh / cap[:, None]
    low = np.unravel_index(int(np.nanargmin(pct)), pct.shape)
    events = power_events(tl)
    return {
        "nodes": len(nodes),
        "state_pct": {name: round(100.0 * float(np.mean(tl.compute_power == code)), 3)
                      for code, name in enumerate(POWER_STATES)},
        "min_charge_pct": round(float(pct[low]), 2),
        "min_charge_node": tl.nodes[nodes[int(low[0])]].name,
        "min_charge_step": int(low[1]),
        "nodes_throttled": int(np.any(tl.compute_power == THROTTLED, axis=1).sum()),
        "nodes_stopped": int(np.any(tl.compute_power == STOPPED, axis=1).sum()),
        "events": events,
    }
