"""Coastlines and country borders under every map, from the bundled Natural Earth file (no download).

The file, ``topologies/data/naturalearth-110m-lines.npz``, is made once by
``topologies/data/make_basemap.py`` from Natural Earth's 1:110m countries (public domain); its README
entry names the source. It holds polylines of lon, lat in degrees, so a map in the lon/lat plane (as
every map of satnetem is) draws it without a projection library.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import topologies
from topologies.errors import SatnetemError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D

BASEMAP_FILE = Path(topologies.__file__).resolve().parent / "data" / "naturalearth-110m-lines.npz"

# Natural Earth cuts land at the antimeridian: an edge with both ends on lon = +-180 is that cut, not a
# coast. float32 holds 180 exactly, so the tolerance only has to absorb the quantisation of the source.
_CUT_TOLERANCE_DEG = 1e-4


@dataclass(frozen=True)
class Basemap:
    """Coastlines and borders as polylines, one after another, each followed by a row of NaN.

    Attributes
    ----------
    coast_deg : numpy.ndarray
        ``(n, 2)`` float32 lon, lat (deg): the closed rings of land (outer boundaries and holes, cut at
        the antimeridian), so that an even-odd point-in-polygon test tells land from sea.
    border_deg : numpy.ndarray
        ``(m, 2)`` float32 lon, lat (deg): land borders between countries.
    source : str
        Where the data comes from, with its version.
    """

    coast_deg: np.ndarray
    border_deg: np.ndarray
    source: str


@lru_cache(maxsize=1)
def load_basemap(path: Path = BASEMAP_FILE) -> Basemap:
    """Read the bundled basemap file (cached: every map of a report shares one copy).

    Raises
    ------
    SatnetemError
        The file is missing or malformed (a broken install: it ships inside the ``topologies`` package).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            coast, border, source = z["coast_deg"], z["border_deg"], str(z["source"])
    except (OSError, KeyError, ValueError) as e:
        raise SatnetemError(f"basemap file {path} unreadable ({e}); reinstall satnetem") from e
    for name, a in (("coast_deg", coast), ("border_deg", border)):
        if a.ndim != 2 or a.shape[1] != 2:
            raise SatnetemError(f"basemap file {path}: {name} has shape {a.shape}, expected (n, 2)")
    return Basemap(coast, border, source)


def drawable(lines_deg: np.ndarray) -> np.ndarray:
    """Polylines ready to plot in lon/lat: a NaN row put into every edge that is not a real line.

    Those are the edges that would cross the whole map (longitude jumping by more than 180 deg, as
    Antarctica's ring does where it closes along a parallel) and the edges along the antimeridian
    where Natural Earth cuts land in two.

    Parameters
    ----------
    lines_deg : numpy.ndarray
        ``(n, 2)`` lon, lat (deg) with lon in [-180, 180], polylines separated by NaN rows.

    Returns
    -------
    numpy.ndarray
        ``(n + k, 2)`` the same points with ``k`` more NaN rows.
    """
    lon = lines_deg[:, 0]
    d_lon = np.abs(np.diff(lon))
    on_cut = np.abs(np.abs(lon) - 180.0) <= _CUT_TOLERANCE_DEG
    cut = (d_lon > 180.0) | (on_cut[:-1] & on_cut[1:])
    return np.insert(lines_deg, np.flatnonzero(cut) + 1, np.nan, axis=0)


def draw_basemap(ax: Axes, *, color: str = "0.55", coast_lw: float = 0.6, border_lw: float = 0.35,
                 zorder: float = 0.5) -> list[Line2D]:
    """Draw coastlines and country borders on an Axes whose x is longitude and y latitude (deg).

    Thin grey lines under everything else (``zorder`` below matplotlib's default 1 for patches and 2
    for lines), not in the legend, and not changing the axes' limits.

    Returns
    -------
    list of matplotlib.lines.Line2D
        The two artists added: coastlines, then borders.
    """
    bm = load_basemap()
    artists: list[Line2D] = []
    for lines, lw, style in ((bm.coast_deg, coast_lw, "-"), (bm.border_deg, border_lw, (0, (3, 1.5)))):
        xy = drawable(lines)
        (line,) = ax.plot(xy[:, 0], xy[:, 1], linestyle=style, color=color, lw=lw, zorder=zorder,
                          label="_nolegend_", scalex=False, scaley=False)
        artists.append(line)
    return artists
