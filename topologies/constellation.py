"""The value objects every orbit source produces: a :class:`Shell` and a :class:`Constellation`.

A constellation is a set of SGP4 satellites (``sgp4.api.Satrec``) labelled with shell, plane and slot,
whether the satellites came from a Walker pattern (:mod:`topologies.walker`) or from real TLE sets
grouped into planes (:mod:`topologies.shells`). Links (+Grid ISLs) are built on these labels: plane
``p`` is next to planes ``p - 1`` and ``p + 1``, slot ``s`` follows slot ``s - 1`` along the orbit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError
from .propagate import julian_date, orbit_angles_deg, sgp4_states

PATTERNS = ("delta", "star")
#: Shell, plane and slot of a satellite that belongs to no +Grid shell (a transient one from a TLE set:
#: orbit-raising, decaying, between shells, in a sparse plane). It has no laser links; it is a node
#: all the same, so it can still carry ground links (bent pipe).
OFF_GRID = -1


@dataclass(frozen=True)
class Shell:
    """One orbital shell: planes of equal altitude and inclination.

    Attributes
    ----------
    name : str
        E.g. ``"starlink-shell1"`` or ``"tle-53.0deg-550km"``.
    pattern : str
        ``"delta"``: planes spread over 360 deg of RAAN, the last plane is next to the first.
        ``"star"``: planes spread over 180 deg; between the last and the first plane is the seam,
        where neighbouring planes move in opposite directions.
    altitude_km : float
        Altitude above the equatorial radius (6378.137 km) of the circular orbit.
    inclination_deg : float
        Inclination, [0, 180] deg.
    planes : int
        Number of orbital planes, >= 1.
    sats_per_plane : int
        Nominal (largest) number of satellites per plane; planes from real TLE sets may hold fewer.
    phasing : int
        Walker phasing factor F in 0..planes-1: plane ``p`` is shifted along the orbit by
        ``p * F * 360 / (planes * sats_per_plane)`` deg. 0 for shells from TLE sets.
    ltan_h : float or None
        Local time of the ascending node of plane 0, [0, 24) h, for a sun-synchronous shell: its RAAN
        is the Sun's right ascension at the epoch plus ``(ltan_h - 12) * 15`` deg (6.0 or 18.0 is a
        dawn-dusk orbit). The inclination must then be the sun-synchronous one
        (:func:`topologies.walker.sso_inclination_deg`). None: plane 0 has RAAN 0.
    raan_span_deg : float or None
        RAAN range the planes spread over, (0, 360] deg: plane ``p`` is ``p * span / planes`` deg from
        plane 0. None: 360 (delta) or 180 (star). A narrow span with the star pattern keeps every plane
        of a dawn-dusk shell near the terminator (a star shell has no laser links across its seam).
    """

    name: str
    pattern: str
    altitude_km: float
    inclination_deg: float
    planes: int
    sats_per_plane: int
    phasing: int = 0
    ltan_h: float | None = None
    raan_span_deg: float | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"shell name must be non-empty without spaces, got {self.name!r}", key="name")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}", key="pattern")
        if not (math.isfinite(self.altitude_km) and 100.0 <= self.altitude_km <= 50_000.0):
            raise ConfigError(f"altitude_km must be in [100, 50000], got {self.altitude_km!r}", key="altitude_km")
        if not (math.isfinite(self.inclination_deg) and 0.0 <= self.inclination_deg <= 180.0):
            raise ConfigError(
                f"inclination_deg must be in [0, 180], got {self.inclination_deg!r}", key="inclination_deg"
            )
        if isinstance(self.planes, bool) or not isinstance(self.planes, int) or self.planes < 1:
            raise ConfigError(f"planes must be an integer >= 1, got {self.planes!r}", key="planes")
        if (
            isinstance(self.sats_per_plane, bool)
            or not isinstance(self.sats_per_plane, int)
            or self.sats_per_plane < 1
        ):
            raise ConfigError(
                f"sats_per_plane must be an integer >= 1, got {self.sats_per_plane!r}", key="sats_per_plane"
            )
        if (
            isinstance(self.phasing, bool)
            or not isinstance(self.phasing, int)
            or not 0 <= self.phasing < self.planes
        ):
            raise ConfigError(
                f"phasing must be an integer in 0..planes-1 = 0..{self.planes - 1}, got {self.phasing!r}",
                key="phasing",
            )

        if self.ltan_h is not None and not (
            isinstance(self.ltan_h, (int, float)) and not isinstance(self.ltan_h, bool)
            and math.isfinite(self.ltan_h) and 0.0 <= self.ltan_h < 24.0
        ):
            raise ConfigError(f"ltan_h must be in [0, 24) h, got {self.ltan_h!r}", key="ltan_h")
        if self.raan_span_deg is not None and not (
            isinstance(self.raan_span_deg, (int, float)) and not isinstance(self.raan_span_deg, bool)
            and math.isfinite(self.raan_span_deg) and 0.0 < self.raan_span_deg <= 360.0
        ):
            raise ConfigError(f"raan_span_deg must be in (0, 360] deg, got {self.raan_span_deg!r}",
                              key="raan_span_deg")

    @property
    def n_sats(self) -> int:
        """Nominal number of satellites, ``planes * sats_per_plane``."""
        return self.planes * self.sats_per_plane


def _index_array(name: str, value: Any, n: int) -> NDArray[np.int32]:
    arr = np.array(value, dtype=np.int64)  # a copy: the caller's array stays theirs
    if arr.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},), got {arr.shape}", key=name)
    if n and arr.min() < OFF_GRID:
        raise ConfigError(f"{name} must be >= 0 (or {OFF_GRID} off the grid), got {int(arr.min())}", key=name)
    out = arr.astype(np.int32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Constellation:
    """Satellites with their SGP4 elements and their place (shell, plane, slot) in the constellation.

    Attributes
    ----------
    names : tuple of str
        Node names, ``"sat-<plane>-<slot>"`` with one shell, ``"sat-<shell>-<plane>-<slot>"`` with several;
        satellites off the grid (see ``transient``) are ``"sat-t-<n>"``.
    satrecs : tuple of sgp4.api.Satrec
        Elements of each satellite, same order as ``names``.
    shell, plane, slot : numpy.ndarray, shape (n,), int32
        Shell index into ``shells``; plane within the shell (planes ordered by RAAN, contiguous
        0..P-1); position along the plane, ordered by argument of latitude (contiguous 0..m-1).
        All three are :data:`OFF_GRID` (-1) for a satellite in no shell: it gets no laser links
        (``shell == k`` selects shell ``k``'s members; ``on_grid`` is the mask of all of them).
        Stored read-only.
    shells : tuple of Shell
    excluded : dict of str to int
        For TLE sources: reason -> number of satellites left out (not built). Empty for Walker
        constellations.
    excluded_names : tuple of (str, str)
        ``(TLE name, reason)`` of each satellite left out.
    source : str
        ``"walker:<preset or spec>"`` or the TLE file path.
    transient : tuple of (str, str)
        ``(node name, reason)`` of each satellite built off the grid (every satellite whose shell is
        -1 appears here once, and no other).
    tle_names : tuple of str
        For TLE sources, the name line of each satellite (same order as ``names``); else empty.
    """

    names: tuple[str, ...]
    satrecs: tuple[Any, ...]
    shell: NDArray[np.int32]
    plane: NDArray[np.int32]
    slot: NDArray[np.int32]
    shells: tuple[Shell, ...]
    excluded: dict[str, int] = field(default_factory=dict)
    excluded_names: tuple[tuple[str, str], ...] = ()
    source: str = ""
    transient: tuple[tuple[str, str], ...] = ()
    tle_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.satrecs) != n:
            raise ConfigError(f"{len(self.satrecs)} satrecs for {n} names", key="satrecs")
        if len(set(self.names)) != n:
            raise ConfigError("satellite names must be unique", key="names")
        if not self.shells:
            raise ConfigError("a constellation needs at least one shell", key="shells")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "satrecs", tuple(self.satrecs))
        object.__setattr__(self, "shells", tuple(self.shells))
        for key in ("shell", "plane", "slot"):
            object.__setattr__(self, key, _index_array(key, getattr(self, key), n))
        object.__setattr__(self, "transient", tuple((str(a), str(b)) for a, b in self.transient))
        object.__setattr__(self, "tle_names", tuple(self.tle_names))
        if self.tle_names and len(self.tle_names) != n:
            raise ConfigError(f"{len(self.tle_names)} TLE names for {n} satellites", key="tle_names")
        if n == 0:
            return
        off = self.shell == OFF_GRID
        bad = np.flatnonzero((off != (self.plane == OFF_GRID)) | (off != (self.slot == OFF_GRID)))
        if bad.size:
            raise ConfigError(f"{self.names[bad[0]]}: shell, plane and slot must be all {OFF_GRID} (off the "
                              "grid) or all >= 0", key="shell")
        off_names = {self.names[i] for i in np.flatnonzero(off).tolist()}
        listed = [name for name, _why in self.transient]
        if len(set(listed)) != len(listed) or set(listed) != off_names:
            raise ConfigError("transient must list every satellite off the grid exactly once, and no other",
                              key="transient")
        on = ~off
        if not on.any():
            return
        shell, plane, slot = self.shell[on], self.plane[on], self.slot[on]
        names = [nm for nm, o in zip(self.names, on.tolist()) if o]
        n_planes = np.array([s.planes for s in self.shells])
        per_plane = np.array([s.sats_per_plane for s in self.shells])
        if shell.max() >= len(self.shells):
            raise ConfigError(f"shell index {int(shell.max())} >= {len(self.shells)} shells", key="shell")
        bad = np.flatnonzero(plane >= n_planes[shell])
        if bad.size:
            raise ConfigError(f"{names[bad[0]]}: plane {int(plane[bad[0]])} out of range", key="plane")
        bad = np.flatnonzero(slot >= per_plane[shell])
        if bad.size:
            raise ConfigError(f"{names[bad[0]]}: slot {int(slot[bad[0]])} out of range", key="slot")
        key3 = (shell.astype(np.int64) * int(n_planes.max()) + plane) * int(per_plane.max()) + slot
        if np.unique(key3).size != shell.size:
            raise ConfigError("two satellites share a (shell, plane, slot)", key="slot")

    @property
    def on_grid(self) -> NDArray[np.bool_]:
        """Mask of the satellites in a shell's +Grid (shape (n_sats,)); the others have no laser links."""
        return np.asarray(self.shell >= 0)

    @property
    def transient_counts(self) -> dict[str, int]:
        """Satellites built off the grid, by reason (e.g. ``{"orbit-raising": 660}``)."""
        out: dict[str, int] = {}
        for _name, why in self.transient:
            out[why] = out.get(why, 0) + 1
        return out

    @property
    def n_sats(self) -> int:
        """Number of satellites."""
        return len(self.names)

    def argument_of_latitude_deg(self, when: datetime) -> NDArray[np.float64]:
        """Angle from the ascending node to each satellite along its orbit, from its SGP4 state.

        Parameters
        ----------
        when : datetime
            Time (UTC; a naive datetime is taken as UTC).

        Returns
        -------
        numpy.ndarray, shape (n_sats,)
            Degrees in [0, 360); NaN where SGP4 fails for that satellite (e.g. decayed).
        """
        jd, fr = julian_date(when)
        _valid, r, v = sgp4_states(self.satrecs, np.array([jd]), np.array([fr]))
        _raan, _incl, u = orbit_angles_deg(r[:, 0], v[:, 0])
        return u
