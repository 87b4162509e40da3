"""User terminals: the rule that keeps their one beam off the geostationary arc, and their link slots.

A user terminal is a ground site with one steerable beam. It uses a satellite only above its elevation
mask and only where the direction to the satellite is more than ``gso_exclusion_deg`` away from every
point of the geostationary (GSO) arc the terminal can see: an NGSO system must not point its user beams
along the line a collocated GSO earth station would use (see :class:`TerminalConfig` for the sources).
Satellites are picked by :func:`topologies.gsl.gsl_assign` on the same slot grid as gateways, with the
arc rule as its per-site mask; terminal links never count against the per-satellite cap of gateway links.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, check_range
from .frames import geodetic_to_ecef_km
from .ground import GroundSite
from .gsl import POLICIES, GslConfig, GslResult, gsl_assign

__all__ = ["DOWNLINK_FRAME_S", "GSO_RADIUS_KM", "TERMINAL_POLICIES", "TerminalConfig", "gso_arc_mask",
           "gso_separation_deg", "onward_delay_ms", "terminal_assign"]

#: Beam policies of user terminals (TerminalConfig.policy): the gateways', and one towards the home PoP.
TERMINAL_POLICIES = (*POLICIES, "pop-delay")

#: Frame period of Starlink's Ku-band user downlink, s. The University of Texas Radionavigation Laboratory's
#: Starlink signal simulator, which generates the signal Humphreys, Iannucci, Komodromos and Graff identified
#: ("Signal Structure of the Starlink Ku-Band Downlink", ION GNSS+ 2023, arXiv:2210.11578), describes its
#: frames as "transmitted at 750 Hz consisting of 302 symbols, two of which are known" (genStrlkFrame.m;
#: also its Python port by J. R. Tschetter); its numbers agree: 302 symbols of 1,024 + 32 samples at
#: 240 MHz plus a 68/15 us guard are 1/750 s.
DOWNLINK_FRAME_S = 1.0 / 750.0

#: Radius of the geostationary orbit, km (GM / omega_earth^2)^(1/3) with the WGS84 constants.
GSO_RADIUS_KM = 42164.17

#: Spacing of the first, coarse look along the arc, deg of GSO longitude; each best sample is then refined
#: by a golden-section search over its two neighbouring intervals.
_ARC_SAMPLE_DEG = 0.5
_GOLDEN_ITERATIONS = 40
#: Rows handled at once when comparing directions with arc samples (bounds memory to ~50 MB).
_CHUNK = 8192


@dataclass(frozen=True)
class TerminalConfig:
    """How user terminals pick satellites (``[terminal]``).

    Attributes
    ----------
    min_elevation_deg : float
        Elevation mask, deg, [0, 90). Default 25: the minimum elevation angle for user terminals (and
        gateways) in SpaceX's Gen1 modification (FCC application filed 17 April 2020, granted by the
        FCC's order of 27 April 2021, FCC 21-48), which lowered it from 40 deg. SpaceX later asked for
        temporary authority to use 10 deg above 53 deg latitude (May 2022); set it here to model that.
    gso_exclusion_deg : float
        GSO arc avoidance, deg, [0, 90): a satellite whose direction from the terminal is within this angle
        of any point of the visible GSO arc (elevation >= 0) is not used. Default 22: SpaceX's Ku-band
        filings, as quoted publicly, turn the satellite's and the user terminal's beams off "whenever
        the angle between the boresight of a GSO earth station (assumed to be collocated with the
        SpaceX user) and the direction of the SpaceX satellite transmit beam is 22 degrees or less"
        (the filing itself was not read here; SpaceX's reply to OneWeb is reported to use 18 deg, which
        is the figure to set for that reading). The angle is a property of the system, not an ITU
        value: Article 22's EPFD limits are what it is chosen to meet.
    policy : str or None
        One of :data:`TERMINAL_POLICIES`: a gateway policy (:data:`topologies.gsl.POLICIES`), or
        ``"pop-delay"``: at each slot boundary the satellite with the least one-way delay from the terminal
        to its home PoP (slant range / c plus the least delay from that satellite over lasers, gateway
        antennas and fibre at that step; leave a still-usable satellite only for one better by more than
        ``[gsl] hysteresis_km`` / c). Needs ``[ground] pops``. None: the ``[gsl]`` policy.
    scheduling_delay_ms : float
        Access delay beyond propagation on the beam, ms each way, [0, 1000]: time a packet waits for the
        medium access scheduler (uplink request and grant, a downlink slot). Default 0: no source stating it
        from protocol documentation or from a measurement that isolates the access link could be read here.
    framing_delay_ms : float
        Time a packet waits for the start of the next radio frame, ms each way, [0, 1000]. Default
        :data:`DOWNLINK_FRAME_S` / 2 = 0.667 ms, the mean wait for a frame boundary of a packet arriving at a
        uniformly random time (a derivation; the source gives the frame rate only). The downlink's frame
        structure is documented; the uplink's is not, and a link has one delay both ways here, so the uplink
        gets the downlink's figure (an assumption).
    handover_interruption_ms : float
        Time the beam carries nothing after it changes from one satellite to another, ms, [0, 10000]; as
        :class:`topologies.gsl.GslConfig`'s for gateway antennas, whose docstring gives the sources looked
        at. Default 0: no measured length of the gap was found.

    The scheduling and framing delays are added to the beam's one-way delay at every step it has a
    satellite, so the emulator applies them and ``plan`` reports them as "access" (docs/model.md, "Access
    delay").
    """

    min_elevation_deg: float = 25.0
    gso_exclusion_deg: float = 22.0
    policy: str | None = None
    scheduling_delay_ms: float = 0.0
    framing_delay_ms: float = DOWNLINK_FRAME_S / 2 * 1000.0
    handover_interruption_ms: float = 0.0

    def __post_init__(self) -> None:
        check_range("min_elevation_deg", self.min_elevation_deg, 0.0, 90.0, hi_open=True)
        check_range("gso_exclusion_deg", self.gso_exclusion_deg, 0.0, 90.0, hi_open=True)
        check_range("scheduling_delay_ms", self.scheduling_delay_ms, 0.0, 1000.0)
        check_range("framing_delay_ms", self.framing_delay_ms, 0.0, 1000.0)
        check_range("handover_interruption_ms", self.handover_interruption_ms, 0.0, 10000.0)
        if self.policy is not None and self.policy not in TERMINAL_POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(TERMINAL_POLICIES)} or absent, got "
                              f"{self.policy!r}", key="policy")

    @property
    def access_delay_ms(self) -> float:
        """Scheduling plus framing delay, ms each way."""
        return self.scheduling_delay_ms + self.framing_delay_ms


def _up(lat_deg: float, lon_deg: float) -> NDArray[np.float64]:
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    return np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])


def _arc_dirs(pos_km: NDArray[np.float64], up: NDArray[np.float64],
              lon_rad: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Unit vectors from the site to GSO points at longitudes ``lon_rad`` (any shape), and whether each
    point is above the site's horizon."""
    g = np.stack([GSO_RADIUS_KM * np.cos(lon_rad), GSO_RADIUS_KM * np.sin(lon_rad), np.zeros_like(lon_rad)],
                 axis=-1) - pos_km
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    return g, g @ up >= 0.0


def gso_separation_deg(lat_deg: float, lon_deg: float, alt_m: float,
                       rel_km: NDArray[np.float64]) -> NDArray[np.float64]:
    """Smallest angle between each direction ``rel_km`` and the directions to the visible GSO arc, deg.

    Parameters
    ----------
    lat_deg, lon_deg, alt_m : float
        The site (WGS84 geodetic).
    rel_km : ndarray, (..., 3)
        Vectors from the site to the satellites, Earth-fixed, km.

    Returns
    -------
    ndarray, (...)
        Angle to the nearest point of the GSO arc above the site's horizon, deg; 180 where none of the
        arc is above the horizon (a site beyond about 81 deg latitude).

    Notes
    -----
    The arc is sampled every 0.5 deg of longitude; around each direction's best sample a golden-section
    search over the two neighbouring intervals finds the minimum (to well under 1e-6 deg). Arc points
    below the horizon are left out (a GSO earth station points at none of them).
    """
    rel = np.asarray(rel_km, dtype=np.float64)
    shape = rel.shape[:-1]
    d = rel.reshape(-1, 3)
    norm = np.linalg.norm(d, axis=1)
    d = d / np.where(norm > 0, norm, 1.0)[:, None]
    pos = geodetic_to_ecef_km(lat_deg, lon_deg, alt_m)
    up = _up(lat_deg, lon_deg)
    step = math.radians(_ARC_SAMPLE_DEG)
    lons = np.arange(0.0, 2 * math.pi, step)
    arc, above = _arc_dirs(pos, up, lons)
    out = np.full(len(d), 180.0)
    if not above.any() or not len(d):
        return out.reshape(shape)
    arc_v, lon_v = arc[above], lons[above]

    def cos_at(dd: NDArray[np.float64], lon: NDArray[np.float64]) -> NDArray[np.float64]:
        u, ok = _arc_dirs(pos, up, lon)
        return np.where(ok, np.einsum("nk,nk->n", dd, u), -1.0)  # below the horizon: as far as can be

    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    for s in range(0, len(d), _CHUNK):
        dd = d[s:s + _CHUNK]
        cos_samples = dd @ arc_v.T
        k = np.argmax(cos_samples, axis=1)
        best = lon_v[k]
        # golden-section search for the largest cosine (smallest angle) over the best sample's two
        # neighbouring intervals
        a, b = best - step, best + step
        c, e = b - inv_phi * (b - a), a + inv_phi * (b - a)
        fc, fe = cos_at(dd, c), cos_at(dd, e)
        for _ in range(_GOLDEN_ITERATIONS):
            left = fc >= fe  # the maximum lies in [a, e]
            b = np.where(left, e, b)
            a = np.where(left, a, c)
            c_new = np.where(left, b - inv_phi * (b - a), e)
            e_new = np.where(left, c, a + inv_phi * (b - a))
            fx = cos_at(dd, np.where(left, c_new, e_new))
            fc, fe = np.where(left, fx, fe), np.where(left, fc, fx)
            c, e = c_new, e_new
        cos_best = np.maximum(np.maximum(fc, fe), cos_samples[np.arange(len(dd)), k])
        out[s:s + _CHUNK] = np.degrees(np.arccos(np.clip(cos_best, -1.0, 1.0)))
    return out.reshape(shape)


def gso_arc_mask(sites: Sequence[GroundSite], exclusion_deg: float
                 ) -> Callable[[int, NDArray[np.float64], NDArray[np.bool_]], NDArray[np.bool_]]:
    """A per-site mask for :func:`topologies.gsl.gsl_assign`: True where the satellite is farther than
    ``exclusion_deg`` from the site's visible GSO arc (only the entries of ``where`` are computed)."""
    sites = tuple(sites)

    def mask(si: int, rel_km: NDArray[np.float64], where: NDArray[np.bool_]) -> NDArray[np.bool_]:
        out = np.zeros(where.shape, bool)
        if exclusion_deg <= 0.0:
            out[where] = True
            return out
        s = sites[si]
        out[where] = gso_separation_deg(s.lat_deg, s.lon_deg, s.alt_m, rel_km[where]) > exclusion_deg
        return out

    return mask


def terminal_assign(sites: Sequence[GroundSite], ephem: Any, gsl_cfg: GslConfig, cfg: TerminalConfig,
                    meshed: NDArray[np.bool_] | None = None,
                    pop_delay: Callable[[int, NDArray[np.int64]], NDArray[np.float64]] | None = None) -> GslResult:
    """Satellites of user terminals at every step: one beam each, on the gateways' slot grid.

    Parameters
    ----------
    sites : sequence of GroundSite
        The terminals (their ``antennas`` is ignored: one beam each).
    ephem : Ephemeris
        As for :func:`topologies.gsl.gsl_assign`.
    gsl_cfg : GslConfig
        The gateways' configuration: slot length and offset, hysteresis, acquisition time, rate, loss,
        the meshed rule and (unless ``cfg.policy`` is given) the policy are shared.
    cfg : TerminalConfig
        Elevation mask and GSO arc exclusion.
    meshed : ndarray, (n_sat, n_t) bool, optional
        As for :func:`topologies.gsl.gsl_assign`.
    pop_delay : callable, optional
        For ``policy = "pop-delay"``: ``pop_delay(terminal_index, sats)`` -> (n_t, len(sats)) ms, the least
        one-way delay from each satellite to that terminal's home PoP at each step (inf: unreachable).

    Returns
    -------
    GslResult
        One link slot per terminal, in the order given.

    Raises
    ------
    ConfigError
        ``pop-delay`` without ``pop_delay`` (a scenario without PoPs).
    """
    sites = tuple(replace(s, antennas=1) for s in sites)
    towards_pop = cfg.policy == "pop-delay"
    if towards_pop and pop_delay is None:
        raise ConfigError("policy 'pop-delay' needs PoPs ([ground] pops = \"starlink\")", key="policy")
    tcfg = replace(gsl_cfg, min_elevation_deg=cfg.min_elevation_deg, antennas=1,
                   policy=gsl_cfg.policy if towards_pop or cfg.policy is None else cfg.policy)
    return gsl_assign(sites, ephem, tcfg, meshed=meshed, site_mask=gso_arc_mask(sites, cfg.gso_exclusion_deg),
                      capped=False, site_cost_ms=pop_delay if towards_pop else None)


def onward_delay_ms(n_nodes: int, edges: Sequence[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_],
                                                         NDArray[np.float64]]],
                    targets: NDArray[np.int64], n_t: int, n_sat: int) -> NDArray[np.float32]:
    """Least one-way delay from every satellite to each target node at every step.

    Parameters
    ----------
    n_nodes : int
        Nodes of the graph; satellites are nodes ``0 .. n_sat - 1``.
    edges : sequence of (a, b, up, delay_ms)
        Groups of undirected links: ``a`` (n_links,) and ``b`` (n_links,) or (n_links, n_t) node indices,
        ``up`` and ``delay_ms`` (n_links, n_t); a link counts at a step where it is up and ``b >= 0``.
    targets : ndarray, (n_targets,) int
        Node indices (the home PoPs).

    Returns
    -------
    ndarray, (n_targets, n_t, n_sat) float32
        ms; inf where the target is unreachable. Memory: 4 bytes per target, step and satellite (24 h at
        15 s steps on 10^4 satellites: 230 MB per home PoP).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    targets = np.asarray(targets, np.int64)
    out = np.full((len(targets), n_t, n_sat), np.inf, np.float32)
    for k in range(n_t):
        src, dst, w = [], [], []
        for a, b, up, d in edges:
            bk = b[:, k] if b.ndim == 2 else b
            ok = up[:, k] & (bk >= 0)
            src.append(a[ok])
            dst.append(bk[ok])
            w.append(d[ok, k].astype(np.float64) + 1e-9)  # csgraph drops stored zeros
        u = np.concatenate(src + dst)
        v = np.concatenate(dst + src)
        ww = np.concatenate(w + w)
        # csr_matrix would sum parallel links: keep the lightest of each node pair
        order = np.lexsort((ww, u * n_nodes + v))
        key = (u * n_nodes + v)[order]
        first = np.ones(len(key), bool)
        first[1:] = key[1:] != key[:-1]
        keep = order[first]
        g = csr_matrix((ww[keep], (u[keep], v[keep])), shape=(n_nodes, n_nodes))
        dist = dijkstra(g, directed=True, indices=targets)
        out[:, k, :] = dist[:, :n_sat]
    return out
