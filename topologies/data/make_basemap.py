"""Convert Natural Earth's 1:110m countries (as TopoJSON) into the small basemap file the maps draw.

Usage (from the checkout, by hand, once; regenerates the committed file)::

    cd /tmp && npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    .venv/bin/python topologies/data/make_basemap.py /tmp/package/countries-110m.json \\
        topologies/data/naturalearth-110m-lines.npz

The input is ``countries-110m.json`` of the npm package ``world-atlas`` 2.0.2: Natural Earth 4.1.0's
Admin 0 countries at 1:110m (public domain), quantised into one TopoJSON topology whose object ``land``
is the union of the countries, built from the same arcs. The format is parsed here by hand (no
TopoJSON library is needed at run time or here):

- ``arcs`` is a list of polylines of quantised integer positions, each after its first a delta from
  the one before; ``transform`` maps a position to degrees (``lon = x * scale[0] + translate[0]``).
- A polygon is a list of rings, each ring a list of arc indices; an index ``~i`` (that is ``-i - 1``)
  means arc ``i`` walked backwards. Consecutive arcs of a ring share their joining point.

Written (``numpy.savez_compressed``; every array float32, shape ``(n, 2)`` of lon, lat in degrees,
one polyline after another, each followed by a row of NaN):

- ``coast_deg``: every ring of ``land`` (outer boundaries and holes), closed (last point = first), so
  that a point-in-polygon test by the even-odd rule in the lon/lat plane tells land from sea. Rings that
  cross the antimeridian are cut there (:func:`planar_rings`), so some run along lon = +-180, and
  Antarctica's closes along a parallel from 180 to -180: a drawing must leave those edges out.
- ``border_deg``: every arc that countries use and ``land`` does not (the land borders between two
  countries, each once).

plus ``source`` (a string naming the data and its version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SOURCE = ("Natural Earth 4.1.0 Admin 0 countries 1:110m (public domain), as TopoJSON in the npm package "
          "world-atlas 2.0.2 (countries-110m.json); converted by topologies/data/make_basemap.py")


def decode_arcs(topology: dict) -> list[np.ndarray]:
    """Every arc of a quantised topology as an ``(n, 2)`` float64 array of lon, lat in degrees."""
    scale = np.asarray(topology["transform"]["scale"], dtype=np.float64)
    translate = np.asarray(topology["transform"]["translate"], dtype=np.float64)
    return [np.cumsum(np.asarray(arc, dtype=np.int64), axis=0) * scale + translate for arc in topology["arcs"]]


def ring_points(ring: list[int], arcs: list[np.ndarray]) -> np.ndarray:
    """The closed polyline of one ring: its arcs in order, reversed where the index is negative."""
    parts = []
    for k, i in enumerate(ring):
        pts = arcs[~i][::-1] if i < 0 else arcs[i]
        parts.append(pts if k == 0 else pts[1:])  # the joining point is the previous arc's last one
    pts = np.concatenate(parts)
    if not np.allclose(pts[0], pts[-1]):
        raise ValueError(f"ring of arcs {ring} does not close: {pts[0]} .. {pts[-1]}")
    return pts


def clip_half(ring: np.ndarray, x_deg: float, keep_below: bool) -> np.ndarray:
    """The part of a closed ring on one side of the meridian ``lon = x_deg`` (Sutherland-Hodgman for one
    half-plane): pieces on that side, joined by edges along the meridian itself. Empty if none."""
    inside = ring[:, 0] <= x_deg if keep_below else ring[:, 0] >= x_deg
    out = []
    for k in range(len(ring) - 1):
        p, q = ring[k], ring[k + 1]
        if inside[k]:
            out.append(p)
        if inside[k] != inside[k + 1]:
            t = (x_deg - p[0]) / (q[0] - p[0])
            out.append(np.array([x_deg, p[1] + t * (q[1] - p[1])]))
    if not out:
        return np.empty((0, 2))
    out.append(out[0])
    return np.array(out)


def planar_rings(ring: np.ndarray) -> list[np.ndarray]:
    """A ring as one or two rings inside lon [-180, 180] that an even-odd test reads right.

    Natural Earth cuts its polygons at the antimeridian, but the topology joins the two sides again (its
    Russia and Fiji step from lon 178.6 to -180), so such a ring is unwrapped to a continuous longitude
    and clipped at the antimeridian into a western and an eastern ring. A ring that circles the pole
    (Antarctica, whose longitude unwrapped gains 360 deg) already reads right in the plane, its closing
    edge running along a parallel from 180 to -180, and is kept as it is.
    """
    lon = np.unwrap(ring[:, 0], period=360.0)
    if abs(lon[-1] - lon[0]) > 180 or (lon.min() >= -180 and lon.max() <= 180):
        return [ring]
    lon = lon - 360.0 * np.floor((lon.min() + 180.0) / 360.0)  # west end in [-180, 180)
    flat = np.column_stack([lon, ring[:, 1]])
    west = clip_half(flat, 180.0, keep_below=True)
    east = clip_half(flat, 180.0, keep_below=False)
    east[:, 0] -= 360.0
    # a vertex on the antimeridian is also where the clip cuts: drop the repeated point
    rings = [r[np.r_[True, np.any(np.diff(r, axis=0) != 0, axis=1)]] for r in (west, east)]
    return [r for r in rings if len(r) >= 4]


def polygons_of(geometry: dict) -> list[list[list[int]]]:
    """The polygons (lists of rings of arc indices) of a Polygon or MultiPolygon geometry."""
    if geometry["type"] == "Polygon":
        return [geometry["arcs"]]
    if geometry["type"] == "MultiPolygon":
        return list(geometry["arcs"])
    raise ValueError(f"unexpected geometry type {geometry['type']!r}")


def arc_ids(geometry: dict) -> set[int]:
    """The arcs (non-negative indices) a geometry uses, whichever the direction."""
    return {i if i >= 0 else ~i for poly in polygons_of(geometry) for ring in poly for i in ring}


def join(lines: list[np.ndarray]) -> np.ndarray:
    """Polylines as one float32 ``(n, 2)`` array, each followed by a row of NaN."""
    nan = np.full((1, 2), np.nan)
    return np.concatenate([np.concatenate([ln, nan]) for ln in lines]).astype(np.float32)


def convert(topology: dict) -> dict[str, np.ndarray]:
    arcs = decode_arcs(topology)
    land = topology["objects"]["land"]["geometries"]
    countries = topology["objects"]["countries"]["geometries"]
    rings = [r for g in land for poly in polygons_of(g) for ring in poly for r in planar_rings(ring_points(ring, arcs))]
    land_arcs = set().union(*(arc_ids(g) for g in land))
    # an arc is a border when two different countries use it; land's arcs must be the ones used once
    users: dict[int, int] = {}
    for g in countries:
        for i in arc_ids(g):
            users[i] = users.get(i, 0) + 1
    shared = {i for i, n in users.items() if n >= 2}
    # quantisation leaves a few arcs of one repeated point (one in North Korea's outline): no line at all
    empty = {i for i in users if np.ptp(arcs[i], axis=0).max() == 0}
    if shared & land_arcs or set(users) - shared - land_arcs - empty:
        raise ValueError("land's arcs are not exactly the arcs that one country alone uses")
    borders = [arcs[i] for i in sorted(shared)]
    return {"coast_deg": join(rings), "border_deg": join(borders), "source": np.array(SOURCE)}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: make_basemap.py countries-110m.json out.npz")
    data = convert(json.loads(Path(argv[0]).read_text()))
    np.savez_compressed(argv[1], coast_deg=data["coast_deg"], border_deg=data["border_deg"], source=data["source"])
    n_coast = int(np.isnan(data["coast_deg"][:, 0]).sum())
    n_border = int(np.isnan(data["border_deg"][:, 0]).sum())
    print(f"{argv[1]}: {n_coast} coast rings, {n_border} border lines, "
          f"{len(data['coast_deg']) + len(data['border_deg']) - n_coast - n_border} points, "
          f"{Path(argv[1]).stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
