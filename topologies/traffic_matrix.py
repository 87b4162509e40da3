"""Background load between many endpoints: the traffic matrix of a ``[[traffic]] kind = "matrix"`` entry.

A matrix gives, for every ordered pair of endpoints (hosts and terminals of the scenario), the rate that
flows from one to the other, in Mbit/s. Two sources:

* **gravity** (default): the rate between two endpoints is proportional to the product of their
  populations, ``rate[i, j] = aggregate_mbps * w_i * w_j / sum_{k != l} w_k * w_l`` (no self-traffic).
  Populations come from the bundled city list (``topologies/data/cities-top100.csv``, the Hypatia
  paper's 100 most populous cities). That list gives each city's *rank* by estimated 2025 population,
  not the population itself, so the weight used is the rank-size rule (Zipf): ``w = 1 / (rank + 1)``,
  the largest city 1, the second 1/2, ... An endpoint is matched to a city by name (its name without a
  leading ``h-``/``gs-``/``t-``/... equals the city's name or one of its alternative names, e.g.
  ``h-mumbai`` and ``h-bombay`` -> ``Mumbai-(Bombay)``) or is the first words of it (``h-new-york`` ->
  ``New-York-Newark``), else to
  the nearest city by great-circle distance; :class:`CityMatch` says which.
* **csv**: a user file ``src,dst,rate_mbps`` (a header line, then one row per ordered pair, names of
  endpoints); with ``aggregate_mbps`` the rates are scaled so that they sum to it.

Pure: no kernel, no root. The emulator starts one sender per endpoint carrying its row
(:mod:`emulator.traffic.matrix`).
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:  # for the annotations only: this module stays importable without them
    from .scenario import TrafficSpec
    from .timeline import Timeline

CITIES_FILE = Path(__file__).parent / "data" / "cities-top100.csv"
EARTH_RADIUS_KM = 6371.0
#: name prefixes of the scenario's node names that say what a node is, not where it is
ROLE_PREFIXES = ("h", "gs", "gw", "t", "ut", "term", "host", "pop")


@dataclass(frozen=True)
class Cities:
    """The bundled city list: names, positions (deg) and rank by estimated 2025 population (0 = largest)."""

    names: tuple[str, ...]
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    rank: np.ndarray

    @property
    def population_weight(self) -> np.ndarray:
        """Rank-size (Zipf) weight of each city, ``1 / (rank + 1)``: the list gives ranks, not counts."""
        return 1.0 / (self.rank.astype(np.float64) + 1.0)


def load_cities(path: Path = CITIES_FILE) -> Cities:
    """Read ``id,name,latitude_deg,longitude_deg,...`` (``id`` is the population rank).

    Raises
    ------
    ConfigError
        A missing column or a value that is not a number, naming the file and line.
    """
    names, lat, lon, rank = [], [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            try:
                rank.append(int(row["id"]))
                lat.append(float(row["latitude_deg"]))
                lon.append(float(row["longitude_deg"]))
                names.append(row["name"])
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError(f"bad city row ({e})", file=str(path), line=lineno) from None
    return Cities(tuple(names), np.array(lat), np.array(lon), np.array(rank, np.int64))


def _fold(text: str) -> str:
    """Lower case, accents dropped, anything but letters and digits turned into single '-'."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")


def city_keys(name: str) -> set[str]:
    """The names a city answers to: its whole name, each parenthesised alternative, the part before '--'
    (``Guangzhou--Guangdong``) and the part outside the parentheses (``Mumbai-(Bombay)`` -> mumbai, bombay)."""
    keys = {_fold(name)}
    for alt in re.findall(r"\(([^)]*)\)", name):
        keys.add(_fold(alt))
    outside = re.sub(r"\([^)]*\)", "", name)
    keys.add(_fold(outside))
    keys.add(_fold(outside.split("--")[0]))
    return {k for k in keys if k}


def endpoint_key(name: str) -> str:
    """A node name without its role prefix: ``h-new-york`` -> ``new-york``."""
    parts = name.split("-", 1)
    return parts[1] if len(parts) == 2 and parts[0] in ROLE_PREFIXES else name


@dataclass(frozen=True)
class CityMatch:
    """Which city an endpoint stands for: ``how`` is ``name`` or ``nearest`` (then ``distance_km`` > 0)."""

    endpoint: str
    city: str
    how: str
    distance_km: float
    weight: float


def great_circle_km(lat1_deg: np.ndarray, lon1_deg: np.ndarray, lat2_deg: np.ndarray,
                    lon2_deg: np.ndarray) -> np.ndarray:
    """Haversine distance on a sphere of :data:`EARTH_RADIUS_KM`, km (broadcasting)."""
    p1, p2 = np.radians(lat1_deg), np.radians(lat2_deg)
    dl = np.radians(np.asarray(lon2_deg) - np.asarray(lon1_deg))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def match_cities(names: Sequence[str], lat_deg: Sequence[float], lon_deg: Sequence[float],
                 cities: Cities | None = None) -> list[CityMatch]:
    """Match each endpoint to a city: by name first (the most populous city answering to it), else the
    nearest city to its position (deg)."""
    cities = cities or load_cities()
    weight = cities.population_weight
    order = np.argsort(cities.rank, kind="stable")
    keys = {int(i): city_keys(cities.names[i]) for i in order}
    dist = great_circle_km(np.asarray(lat_deg, float)[:, None], np.asarray(lon_deg, float)[:, None],
                           cities.lat_deg[None, :], cities.lon_deg[None, :])
    out = []
    for e, name in enumerate(names):
        want = endpoint_key(name)
        hit = next((i for i in keys if want in keys[i] or _fold(name) in keys[i]), None)
        if hit is None:  # the first words of a longer name: new-york -> New-York-Newark
            hit = next((i for i in keys if any(k.startswith(want + "-") for k in keys[i])), None)
        if hit is not None:
            out.append(CityMatch(name, cities.names[hit], "name", float(dist[e, hit]), float(weight[hit])))
        else:
            j = int(np.argmin(dist[e]))
            out.append(CityMatch(name, cities.names[j], "nearest", float(dist[e, j]), float(weight[j])))
    return out


def gravity_rates(weights: Sequence[float], aggregate_mbps: float) -> np.ndarray:
    """``(n, n)`` rates, Mbit/s: ``aggregate_mbps * w_i * w_j / sum_{k != l} w_k w_l``, zero diagonal.

    Raises
    ------
    ConfigError
        Fewer than two endpoints, or a weight that is not finite and > 0.
    """
    w = np.asarray(weights, np.float64)
    if len(w) < 2:
        raise ConfigError(f"a traffic matrix needs at least two endpoints, got {len(w)}", key="endpoints")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ConfigError("endpoint weights must be finite and > 0", key="endpoints")
    prod = np.outer(w, w)
    np.fill_diagonal(prod, 0.0)
    return aggregate_mbps * prod / prod.sum()


def csv_rates(path: Path, endpoints: Sequence[str], aggregate_mbps: float | None) -> np.ndarray:
    """``(n, n)`` rates, Mbit/s, from a ``src,dst,rate_mbps`` file (rows of a pair add up); scaled to
    ``aggregate_mbps`` if given.

    Raises
    ------
    ConfigError
        Missing file or column, a name that is not an endpoint, a self-pair, a rate that is not finite
        and >= 0, or no traffic at all; naming the file and line.
    """
    index = {n: i for i, n in enumerate(endpoints)}
    rates = np.zeros((len(endpoints), len(endpoints)))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read traffic matrix: {e}", file=str(path), key="matrix_csv") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    if header[:3] != ["src", "dst", "rate_mbps"]:
        raise ConfigError(f"header must be src,dst,rate_mbps, got {','.join(header)!r}", file=str(path), line=1)
    for lineno, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise ConfigError(f"expected 3 fields (src,dst,rate_mbps), got {len(row)}", file=str(path),
                              line=lineno)
        src, dst, value = (x.strip() for x in row)
        for end in (src, dst):
            if end not in index:
                raise ConfigError(f"{end!r} is not an endpoint of this matrix (endpoints: "
                                  f"{', '.join(endpoints)})", file=str(path), line=lineno)
        if src == dst:
            raise ConfigError(f"{src!r} sends to itself", file=str(path), line=lineno)
        try:
            r = float(value)
        except ValueError:
            r = float("nan")
        if not (np.isfinite(r) and r >= 0):
            raise ConfigError(f"rate_mbps must be a finite number >= 0, got {value!r}", file=str(path),
                              line=lineno)
        rates[index[src], index[dst]] += r
    total = rates.sum()
    if total <= 0:
        raise ConfigError("the traffic matrix carries no traffic", file=str(path))
    return rates * (aggregate_mbps / total) if aggregate_mbps is not None else rates


@dataclass(frozen=True)
class MatrixPlan:
    """What a matrix entry sends: ``rates_mbps[i, j]`` from ``endpoints[i]`` to ``endpoints[j]``."""

    endpoints: tuple[str, ...]
    rates_mbps: np.ndarray
    matches: tuple[CityMatch, ...] = ()
    source: str = "gravity"

    def top_pairs(self, n: int) -> list[tuple[str, str, float]]:
        """The ``n`` ordered pairs with the largest rates, largest first."""
        flat = np.argsort(-self.rates_mbps, axis=None, kind="stable")[:n]
        k = len(self.endpoints)
        return [(self.endpoints[f // k], self.endpoints[f % k], float(self.rates_mbps.flat[f])) for f in flat
                if self.rates_mbps.flat[f] > 0]


def endpoint_positions(timeline: Timeline, names: Sequence[str]) -> tuple[list[float], list[float]]:
    """Latitude and longitude (deg) of hosts (their gateway's) and terminals, from the timeline's node table.

    Raises
    ------
    ConfigError
        An endpoint that is neither a host behind a gateway nor a terminal (it has no place on the ground).
    """
    nodes = timeline.nodes
    index = timeline.node_index
    lat, lon = [], []
    for n in names:
        nd = nodes[index(n)]
        info = nd.info
        if nd.kind == "host" and info.get("gateway"):
            info = nodes[index(info["gateway"])].info
        if "lat_deg" not in info or "lon_deg" not in info:
            raise ConfigError(f"matrix endpoint {n!r} is a {nd.kind}, which has no position on the ground; "
                              f"endpoints are hosts and terminals", key="endpoints")
        lat.append(float(info["lat_deg"]))
        lon.append(float(info["lon_deg"]))
    return lat, lon


def plan_matrix(spec: TrafficSpec, timeline: Timeline, base_dir: Path | None = None) -> MatrixPlan:
    """The matrix of a ``kind = "matrix"`` traffic entry on a planned timeline.

    Parameters
    ----------
    spec : topologies.scenario.TrafficSpec
        ``endpoints`` (default: every host and terminal, in node order), ``aggregate_mbps``,
        ``matrix_csv`` (relative to ``base_dir``).
    timeline : topologies.timeline.Timeline
    """
    names = list(spec.endpoints)
    if not names:
        names = [timeline.nodes[i].name for i in [*timeline.nodes_of("host"), *timeline.nodes_of("terminal")]]
    known = {nd.name for nd in timeline.nodes}
    for n in names:
        if n not in known:
            raise ConfigError(f"matrix endpoint {n!r} is not a node of this network", key="endpoints")
    matrix_csv = spec.matrix_csv
    aggregate = spec.aggregate_mbps
    if matrix_csv:
        path = Path(matrix_csv)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return MatrixPlan(tuple(names), csv_rates(path, names, aggregate), (), "csv")
    if aggregate is None:  # TrafficSpec refuses it already; the type allows it (matrix_csv may scale by nothing)
        raise ConfigError("aggregate_mbps is required for a gravity-model matrix (or give matrix_csv)",
                          key="aggregate_mbps")
    lat, lon = endpoint_positions(timeline, names)
    matches = match_cities(names, lat, lon)
    rates = gravity_rates([m.weight for m in matches], float(aggregate))
    return MatrixPlan(tuple(names), rates, tuple(matches), "gravity")
