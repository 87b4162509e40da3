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
    """

    name: str
    pattern: str
    altitude_km: float
    inclination_deg: float
    planes: int
    sats_per_plane: int
    phasing: int = 0

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

    @property
    def n_sats(self) -> int:
        """Nominal number of satellites, ``planes * sats_per_plane``."""
        return self.planes * self.sats_per_plane


def _index_array(name: str, value: Any, n: int) -> NDArray[np.int32]:
    arr = np.array(value, dtype=np.int64)  # a copy: the caller's array stays theirs
    if arr.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},), got {arr.shape}", key=name)
    if n and arr.min() < 0:
        raise ConfigError(f"{name} must be >= 0, got {int(arr.min())}", key=name)
    out = arr.astype(np.int32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Constellation:
    """Satellites with their SGP4 elements and their place (shell, plane, slot) in the constellation.

    Attributes
    ----------
    names : tuple of str
        Node names, ``"sat-<plane>-<slot>"`` with one shell, ``"sat-<shell>-<plane>-<slot>"`` with several.
    satrecs : tuple of sgp4.api.Satrec
        Elements of each satellite, same order as ``names``.
    shell, plane, slot : numpy.ndarray, shape (n,), int32
        Shell index into ``shells``; plane within the shell (planes ordered by RAAN, contiguous
        0..P-1); position along the plane, ordered by argument of latitude (contiguous 0..m-1).
        Stored read-only.
    shells : tuple of Shell
    excluded : dict of str to int
        For TLE sources: reason -> number of satellites left out. Empty for Walker constellations.
    excluded_names : tuple of (str, str)
        ``(TLE name, reason)`` of each satellite left out.
    source : str
        ``"walker:<preset or spec>"`` or the TLE file path.
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
        if n == 0:
            return
        n_planes = np.array([s.planes for s in self.shells])
        per_plane = np.array([s.sats_per_plane for s in self.shells])
        if self.shell.max() >= len(self.shells):
            raise ConfigError(f"shell index {int(self.shell.max())} >= {len(self.shells)} shells", key="shell")
        bad = np.flatnonzero(self.plane >= n_planes[self.shell])
        if bad.size:
            raise ConfigError(f"{self.names[bad[0]]}: plane {int(self.plane[bad[0]])} out of range", key="plane")
        bad = np.flatnonzero(self.slot >= per_plane[self.shell])
        if bad.size:
            raise ConfigError(f"{self.names[bad[0]]}: slot {int(self.slot[bad[0]])} out of range", key="slot")
        key3 = (self.shell.astype(np.int64) * int(n_planes.max()) + self.plane) * int(per_plane.max()) + self.slot
        if np.unique(key3).size != n:
            raise ConfigError("two satellites share a (shell, plane, slot)", key="slot")

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
