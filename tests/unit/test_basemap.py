"""The bundled coastlines and borders against facts of geography, and the maps that draw them."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emulator.basemap import BASEMAP_FILE, draw_basemap, drawable, load_basemap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CITIES = ROOT / "topologies" / "data" / "cities-top100.csv"


def polylines(a: np.ndarray) -> list[np.ndarray]:
    """The NaN-separated polylines of an (n, 2) array."""
    ends = np.flatnonzero(np.isnan(a[:, 0]))
    starts = np.r_[0, ends[:-1] + 1]
    return [a[s:e].astype(np.float64) for s, e in zip(starts, ends) if e > s]


def on_land(lat_deg, lon_deg) -> np.ndarray:
    """Even-odd ray casting (a ray towards +lon) against every coast ring, written here, not the product's."""
    rings = polylines(load_basemap().coast_deg)
    x0 = np.concatenate([r[:-1, 0] for r in rings])
    y0 = np.concatenate([r[:-1, 1] for r in rings])
    x1 = np.concatenate([r[1:, 0] for r in rings])
    y1 = np.concatenate([r[1:, 1] for r in rings])
    lat = np.atleast_1d(np.asarray(lat_deg, dtype=float))[:, None]
    lon = np.atleast_1d(np.asarray(lon_deg, dtype=float))[:, None]
    spans = (y0 > lat) != (y1 > lat)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (lat - y0) * (x1 - x0) / (y1 - y0)
    return np.sum(spans & (x_cross > lon), axis=1) % 2 == 1


def test_file_is_small_and_names_its_source():
    assert BASEMAP_FILE.stat().st_size < 300_000
    bm = load_basemap()
    assert "Natural Earth" in bm.source and "public domain" in bm.source
    for a in (bm.coast_deg, bm.border_deg):
        pts = a[~np.isnan(a[:, 0])]
        assert len(pts) > 1000
        assert np.all(np.abs(pts[:, 0]) <= 180) and np.all(np.abs(pts[:, 1]) <= 90)
    for ring in polylines(bm.coast_deg):
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1]), "coast rings are closed"


@pytest.mark.parametrize("name, lat, lon, land", [
    ("Paris", 48.8566, 2.3522, True),
    ("Madrid", 40.4168, -3.7038, True),
    ("Chicago", 41.8781, -87.6298, True),
    ("Alice Springs", -23.698, 133.881, True),
    ("Manaus", -3.119, -60.022, True),
    ("Antarctic plateau", -80.0, 0.0, True),
    # either side of the antimeridian: Russia's ring crosses it in the source and is cut there
    ("Chukotka, west of the antimeridian", 66.5, -175.0, True),
    ("Anadyr lowland, east of it", 66.5, 175.0, True),
    ("Wrangel Island", 71.2, -179.5, True),
    ("mid-Atlantic", 30.0, -40.0, False),
    ("central Pacific", 0.0, -150.0, False),
    ("Indian Ocean", -30.0, 80.0, False),
    ("Bering Sea", 58.0, -175.0, False),
    ("Caspian Sea", 42.0, 50.5, False),
    ("North Pole", 89.0, 0.0, False),
])
def test_known_places_are_on_land_or_at_sea(name, lat, lon, land):
    assert on_land(lat, lon)[0] == land, name


def test_the_most_populous_cities_are_on_land():
    """Hypatia's 100 largest cities: nearly all inside land; the few coastal ones that 1:110m puts in the
    sea (a coastline simplified to tens of km) within 1 deg of a coast vertex."""
    with open(CITIES, newline="") as f:
        rows = list(csv.DictReader(f))
    lat = np.array([float(r["latitude_deg"]) for r in rows])
    lon = np.array([float(r["longitude_deg"]) for r in rows])
    inside = on_land(lat, lon)
    assert inside.sum() >= 95, [r["name"] for r, i in zip(rows, inside) if not i]
    coast = load_basemap().coast_deg
    coast = coast[~np.isnan(coast[:, 0])]
    for i in np.flatnonzero(~inside):
        assert np.hypot(coast[:, 0] - lon[i], coast[:, 1] - lat[i]).min() < 1.0, rows[i]["name"]


def test_borders_run_over_land_and_follow_the_49th_parallel():
    border = load_basemap().border_deg.astype(np.float64)
    mid = (border[:-1] + border[1:]) / 2
    mid = mid[~np.isnan(mid[:, 0])]
    assert on_land(mid[:, 1], mid[:, 0]).mean() > 0.98  # no border across open sea
    # Canada - United States from Lake of the Woods to the Strait of Georgia: 49 deg N, lon -95 to -123
    a, b = border[:-1], border[1:]
    along = (np.abs(a[:, 1] - 49.0) < 0.01) & (np.abs(b[:, 1] - 49.0) < 0.01)
    lons = np.concatenate([a[along, 0], b[along, 0]])
    assert lons.min() < -120 and lons.max() > -97


def test_drawable_lines_never_cross_the_map():
    for lines in (load_basemap().coast_deg, load_basemap().border_deg):
        xy = drawable(lines)
        # every point kept, only NaN breaks added
        assert np.array_equal(xy[~np.isnan(xy[:, 0])], lines[~np.isnan(lines[:, 0])])
        a, b = xy[:-1], xy[1:]
        drawn = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0])
        assert np.all(np.abs(a[drawn, 0] - b[drawn, 0]) <= 180)
        on_cut = (np.abs(a[:, 0]) == 180) & (np.abs(b[:, 0]) == 180)
        assert not np.any(drawn & on_cut), "an edge along the antimeridian cut is drawn"
    # the source does cross it: Russia and Fiji are cut there, Antarctica closes from 180 to -180
    c = load_basemap().coast_deg
    assert np.sum(np.abs(np.diff(c[:, 0])) > 180) >= 1


def test_draw_basemap_puts_two_grey_line_artists_under_the_data():
    fig, ax = plt.subplots()
    try:
        ax.plot([0, 10], [0, 10], label="data")
        ax.set_xlim(-30, 30)
        ax.set_ylim(20, 60)
        artists = draw_basemap(ax)
        assert len(artists) == 2 and len(ax.lines) == 3
        assert all(a in ax.lines for a in artists)
        assert all(a.get_zorder() < ax.lines[0].get_zorder() for a in artists)
        assert ax.get_xlim() == (-30, 30) and ax.get_ylim() == (20, 60)
        handles, labels = ax.get_legend_handles_labels()
        assert labels == ["data"]
        n_points = sum(int(np.sum(~np.isnan(a.get_xydata()[:, 0]))) for a in artists)
        bm = load_basemap()
        assert n_points == sum(int(np.sum(~np.isnan(x[:, 0]))) for x in (bm.coast_deg, bm.border_deg))
    finally:
        plt.close(fig)


def test_report_map_draws_the_coastlines(tmp_path):
    from emulator.api import plan_only
    from emulator.report import plot_map

    tl = plan_only(ROOT / "examples" / "campaign.toml", duration_s=2).timeline
    written = plot_map(tl, tmp_path, [0], [("h-london", "h-new-york")])
    svg = next(p for p in written if p.suffix == ".svg").read_text()
    # the basemap's grey (0.55 = #8c8c8c) is the stroke of its two paths; nothing else on the map uses it
    assert svg.count("stroke: #8c8c8c") == 2
