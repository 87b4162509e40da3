"""Derive a small TLE subset of a full set that keeps every shell, for fast tests.

Usage (from the checkout; regenerates the committed subset)::

    .venv/bin/python topologies/data/make_subset.py topologies/data/starlink-2026-08-21.tle \\
        topologies/data/starlink-2026-08-21-subset.tle

The full set is grouped into shells (:func:`topologies.shells.constellation_from_tle`). Of each shell,
whole planes are kept, evenly spaced: every k-th plane (0, k, 2k, ...) with the largest k that still
keeps at least ``MIN_PLANES`` planes and ``MIN_SATS`` satellites, so the subset has the same shells (a
shell needs 3 planes and 50 satellites). Of the satellites in no shell, every ``TRANSIENT_EVERY``-th
(in file order) is kept. The kept element sets are written unchanged, in the order of the full file,
and the subset is grouped again to check that it holds as many shells as the full set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from topologies.shells import constellation_from_tle
from topologies.tle import load_tle

MIN_PLANES = 4
MIN_SATS = 60
MAX_STEP = 32
TRANSIENT_EVERY = 10


def subset_indices(path: Path) -> list[int]:
    """Indices (into the file's element sets) of the satellites the subset keeps, in file order."""
    records = load_tle(path)
    const = constellation_from_tle(records, include_transient=True)
    index_of = {id(r.satrec): i for i, r in enumerate(records)}
    keep: list[int] = []
    for k in range(len(const.shells)):
        in_shell = np.flatnonzero(const.shell == k)
        planes = const.plane[in_shell]
        for step in range(MAX_STEP, 0, -1):
            chosen = in_shell[planes % step == 0]
            if np.unique(planes[planes % step == 0]).size >= MIN_PLANES and chosen.size >= MIN_SATS:
                break
        keep += [index_of[id(const.satrecs[i])] for i in chosen.tolist()]
    off = np.flatnonzero(~const.on_grid)
    keep += [index_of[id(const.satrecs[i])] for i in off[::TRANSIENT_EVERY].tolist()]
    return sorted(keep)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    records = load_tle(src)
    keep = subset_indices(src)
    text = "".join(f"{records[i].name}\n{records[i].line1}\n{records[i].line2}\n" for i in keep)
    dst.write_text(text, encoding="ascii")
    n_full = len(constellation_from_tle(records).shells)
    n_sub = len(constellation_from_tle(load_tle(dst)).shells)
    print(f"{dst}: {len(keep)} of {len(records)} satellites; {n_sub} shells (full set: {n_full})")
    return 0 if n_sub == n_full else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
