"""Points of presence (PoPs) and the terrestrial fibre behind the gateways: where a terminal's traffic
enters the internet.

Three facts come from data copied into ``topologies/data`` (see its README): Starlink's PoPs
(``starlink-pops.csv``), and for each country the PoPs its customers' address blocks are homed on, with
their shares (``starlink-country-pop.csv``). The rest is a model, documented in docs/model.md
("PoPs and backhaul"):

* each gateway joins its nearest PoP (great-circle distance) by one fibre link;
* the PoPs are joined by a backbone, the greedy ``backbone_stretch``-spanner of their great-circle
  distances: pairs are taken from the closest up, and a pair gets a direct link unless the links so far
  already join it by a path at most ``backbone_stretch`` times its distance. So every pair of PoPs has a
  backbone path within that factor of the great circle (the graph is connected), with few links (280 at
  1.1 for the 81 Starlink PoPs). Simpler rules fail at long range: each PoP to its 3 nearest, plus a
  minimum spanning tree to connect the islands that leaves, put London - New York through Dakar and
  Fortaleza (135 ms one way against 36 ms on a direct link);
* a fibre link's one-way delay is ``distance_km * route_factor / (c / refractive_index)``;
* a terminal's home PoP is the one its ``pop`` names, or one drawn from its country's shares with a
  generator seeded by the scenario's seed and the terminal's name.
"""

from __future__ import annotations

import csv
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, check_range
from .ground import slug
from .timeline import C_KM_S

__all__ = ["BACKHAUL_POLICIES", "BackhaulConfig", "EARTH_RADIUS_KM", "PoP", "backbone_edges", "country_shares",
           "draw_home_pop", "fibre_delay_ms", "great_circle_km", "home_pops", "nearest", "starlink_pops"]

_POPS_FILE = "starlink-pops.csv"
_POPS_COLUMNS = ("code", "city", "country_iso2", "lat_deg", "lon_deg", "coord_source")
_SHARES_FILE = "starlink-country-pop.csv"
_SHARES_COLUMNS = ("country_iso2", "country_iso3", "country_name", "primary_pop", "primary_share", "pops_by_share")

#: Mean Earth radius (IUGG), km: the sphere on which great-circle distances are taken. Against the WGS84
#: ellipsoid's geodesic this errs by at most ~0.5%, well inside the route factor's uncertainty.
EARTH_RADIUS_KM = 6371.0088

#: Named sets of PoPs that ``[ground] pops = "..."`` loads.
POP_SETS = ("starlink",)
#: ``[backhaul] policy``: whether long hauls ride lasers or the terrestrial backbone (BackhaulConfig.policy).
BACKHAUL_POLICIES = ("least-delay", "space-first", "ground-first")


@dataclass(frozen=True)
class PoP:
    """A point of presence: ``code`` as the operator names it (node ``pop-<code>``), where it is."""

    code: str
    city: str
    country: str
    lat_deg: float
    lon_deg: float

    @property
    def node_name(self) -> str:
        return f"pop-{self.code}"


@dataclass(frozen=True)
class BackhaulConfig:
    """Terrestrial fibre behind the gateways (``[backhaul]``).

    Attributes
    ----------
    route_factor : float
        Fibre route length over great-circle distance, [1, 5]. Default 1.3: Bozkurt et al., "Dissecting
        Latency in the Internet's Fiber Infrastructure" (arXiv:1811.10737, 2018) compute shortest paths
        through the conduits of the InterTubes map of US long-haul fibre and find that, for all pairs of
        the 120 largest US population centres, the factor between line-of-sight distance and fibre path
        could be 1.3 in the median (against 2.1, the rule of thumb from earlier measurement campaigns of
        Internet latency, which includes routing detours). It is a US figure for conduits; submarine
        routes and other continents are not covered by it.
    refractive_index : float
        Group index of the fibre, [1, 2]. Default 1.47, the usual figure for silica single-mode fibre
        (light at ~0.68 c, the "2/3 c" rule of thumb; Fluke Networks' fibre testers default to 1.4719 for
        9/125 um single-mode fibre at 1300 nm).
    rate_mbps : float
        Rate of every fibre link, each direction, (0, 100000].
    backbone_stretch : float
        Backbone paths between any two PoPs are at most this many times their great-circle distance,
        [1, 10] (before ``route_factor``; :func:`backbone_edges`). Default 1.1, a modelling choice (no
        published map of Starlink's terrestrial backbone was found): the cited 1.3 already is an
        end-to-end factor over a dense conduit map, so a backbone path's length, 1.3 to 1.43 times the
        great circle, errs long by at most 10%.
    policy : str
        Whether long hauls ride lasers or the backbone (:data:`BACKHAUL_POLICIES`):
        ``"least-delay"`` (default) the least-delay path over both; ``"space-first"`` the path with the
        least fibre delay, then the least delay (traffic for a PoP rides lasers to the gateway with the
        shortest fibre to it); ``"ground-first"`` the least laser delay, then the least delay (it leaves
        the constellation at the first gateway it can reach and rides fibre). ``plan``'s home-PoP paths
        and the ``shortest-delay`` protocol follow it.
    """

    route_factor: float = 1.3
    refractive_index: float = 1.47
    rate_mbps: float = 1000.0
    backbone_stretch: float = 1.1
    policy: str = "least-delay"

    def __post_init__(self) -> None:
        if self.policy not in BACKHAUL_POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(BACKHAUL_POLICIES)}, got {self.policy!r}",
                              key="policy")
        check_range("route_factor", self.route_factor, 1.0, 5.0)
        check_range("refractive_index", self.refractive_index, 1.0, 2.0)
        check_range("rate_mbps", self.rate_mbps, 0.0, 100_000.0, lo_open=True)
        check_range("backbone_stretch", self.backbone_stretch, 1.0, 10.0)

    @property
    def speed_km_s(self) -> float:
        """Speed of light in the fibre, km/s."""
        return C_KM_S / self.refractive_index


def great_circle_km(lat1_deg: NDArray[np.float64] | float, lon1_deg: NDArray[np.float64] | float,
                    lat2_deg: NDArray[np.float64] | float, lon2_deg: NDArray[np.float64] | float
                    ) -> NDArray[np.float64]:
    """Great-circle distance on the sphere of radius :data:`EARTH_RADIUS_KM`, km (haversine; broadcasts)."""
    p1, p2 = np.radians(lat1_deg), np.radians(lat2_deg)
    dl = np.radians(np.asarray(lon2_deg, np.float64) - lon1_deg)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))), np.float64)


def fibre_delay_ms(distance_km: NDArray[np.float64] | float, cfg: BackhaulConfig) -> NDArray[np.float64]:
    """One-way delay of fibre laid between two points ``distance_km`` apart (great circle), ms."""
    return np.asarray(distance_km, np.float64) * cfg.route_factor / cfg.speed_km_s * 1e3


def nearest(lat_deg: Sequence[float], lon_deg: Sequence[float], pops: Sequence[PoP]) -> NDArray[np.int64]:
    """Index of the nearest PoP (great circle) to each point; ties go to the first in ``pops``."""
    plat = np.array([p.lat_deg for p in pops])
    plon = np.array([p.lon_deg for p in pops])
    d = great_circle_km(np.asarray(lat_deg, np.float64)[:, None], np.asarray(lon_deg, np.float64)[:, None],
                        plat[None, :], plon[None, :])
    return np.argmin(d, axis=1).astype(np.int64) if len(pops) else np.zeros(len(lat_deg), np.int64)


def backbone_edges(pops: Sequence[PoP], stretch: float) -> NDArray[np.int64]:
    """The backbone's links as PoP index pairs ``(i, j)``, ``i < j``, sorted, each once: the greedy
    ``stretch``-spanner of the PoPs' great-circle distances.

    Pairs are visited from the closest up (ties in index order); a pair gets a link unless the links
    chosen so far join it by a path at most ``stretch`` times its great-circle distance. Every pair then
    has such a path, so the graph is connected. Shortest-path lengths are kept in an (n, n) matrix
    updated on each new link (O(n^2) per link).

    Returns
    -------
    ndarray, (n_edges, 2) int64
    """
    n = len(pops)
    if n < 2:
        return np.empty((0, 2), np.int64)
    lat = np.array([p.lat_deg for p in pops])
    lon = np.array([p.lon_deg for p in pops])
    d = great_circle_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    iu, ju = np.triu_indices(n, 1)
    order = np.argsort(d[iu, ju], kind="stable")
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    edges = []
    for k in order.tolist():
        i, j = int(iu[k]), int(ju[k])
        w = float(d[i, j])
        if dist[i, j] > stretch * w:
            edges.append((i, j))
            # shortest paths through the new link, in either direction
            via = np.minimum(dist[:, i, None] + w + dist[None, j, :], dist[:, j, None] + w + dist[None, i, :])
            np.minimum(dist, via, out=dist)
    return np.array(sorted(edges), np.int64).reshape(-1, 2)


def _read(name: str, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    text = resources.files("topologies").joinpath("data", name).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(c.strip() for c in rows[0]) != columns:
        raise ConfigError(f"header must be {','.join(columns)}", file=name, line=1)
    out = []
    for line, row in ((i + 2, r) for i, r in enumerate(rows[1:]) if r):
        if len(row) != len(columns):
            raise ConfigError(f"expected {len(columns)} columns ({','.join(columns)}), got {len(row)}: {row!r}",
                              file=name, line=line)
        out.append((line, row))
    return out


def starlink_pops() -> list[PoP]:
    """Starlink's PoPs (``topologies/data/starlink-pops.csv``), in file order.

    A row without a code (one, Salt Lake City, in the shipped file: a facility listed without a PoP
    code, so no country's addresses are homed on it) takes its code from its city's name
    (``salt-lake-city``). Rows without coordinates (six: ``Unknown`` PoPs such as ``rcxship1``, on none
    of which any country is homed) are left out: there is nowhere to put them.

    Raises
    ------
    ConfigError
        The file is malformed (names the line), or two PoPs share a code.
    """
    pops: list[PoP] = []
    seen: set[str] = set()
    for line, row in _read(_POPS_FILE, _POPS_COLUMNS):
        code = row[0].strip() or slug(row[1], 26)
        if not row[3].strip() and not row[4].strip():
            continue
        try:
            lat, lon = float(row[3]), float(row[4])
        except ValueError:
            raise ConfigError(f"lat_deg and lon_deg must be numbers: {row!r}", file=_POPS_FILE, line=line) from None
        if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 360):
            raise ConfigError(f"lat_deg/lon_deg out of range: {row!r}", file=_POPS_FILE, line=line)
        if code in seen:
            raise ConfigError(f"PoP code {code!r} appears twice", file=_POPS_FILE, line=line)
        seen.add(code)
        pops.append(PoP(code, row[1].strip(), row[2].strip(), lat, lon))
    return pops


def country_shares() -> dict[str, list[tuple[str, float]]]:
    """For each country (ISO 3166-1 alpha-2), its PoPs and their shares of its address blocks, largest
    first (``topologies/data/starlink-country-pop.csv``).

    Raises
    ------
    ConfigError
        The file is malformed (names the line).
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for line, row in _read(_SHARES_FILE, _SHARES_COLUMNS):
        shares = []
        for item in row[5].split(";"):
            code, sep, val = item.partition(":")
            try:
                share = float(val)
            except ValueError:
                share = -1.0
            if not sep or not code.strip() or not 0.0 <= share <= 1.0:
                raise ConfigError(f"pops_by_share must be code:share;... with shares in [0, 1], got {row[5]!r}",
                                  file=_SHARES_FILE, line=line)
            shares.append((code.strip(), share))
        out[row[0].strip()] = shares
    return out


def draw_home_pop(shares: Sequence[tuple[str, float]], seed: int, terminal: str) -> str:
    """A home PoP drawn with probabilities ``shares`` (normalised to sum 1).

    The generator is seeded by ``seed`` and a CRC-32 of the terminal's name, so each terminal's draw is
    fixed by the scenario's seed and does not change when other terminals are added or reordered.
    """
    codes = [c for c, _ in shares]
    p = np.array([s for _, s in shares], np.float64)
    p = p / p.sum()
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(terminal.encode()), 0x706F70])
    return codes[int(rng.choice(len(codes), p=p))]


def home_pops(terminals: Sequence[tuple[str, str | None, str | None]], seed: int,
              pops: Sequence[PoP], shares: dict[str, list[tuple[str, float]]]) -> dict[str, str]:
    """Home PoP code of each terminal ``(name, country, pop)``: ``pop`` if given, else drawn from the
    country's shares (:func:`draw_home_pop`).

    Raises
    ------
    ConfigError
        An unknown PoP code or a country without shares, naming the terminal (the scenario loader
        checks the same with file and line first).
    """
    codes = {p.code for p in pops}
    out: dict[str, str] = {}
    for i, (name, country, pop) in enumerate(terminals):
        if pop is not None:
            if pop not in codes:
                raise ConfigError(f"terminal {name!r}: unknown PoP code {pop!r}", key=f"terminals[{i}].pop")
            out[name] = pop
        elif country is not None and country in shares:
            out[name] = draw_home_pop(shares[country], seed, name)
        else:
            raise ConfigError(f"terminal {name!r}: no home PoP (country {country!r} has no PoP shares, no pop "
                              f"given)", key=f"terminals[{i}].country")
    return out
