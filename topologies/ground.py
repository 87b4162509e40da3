"""Ground sites (gateways): the value object and the built-in list of the 100 most populous cities."""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

from .errors import ConfigError

#: Same rule as scenario node names: they end up in namespace names, labels and command lines.
SITE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
SITE_NAME_RULE = "lower-case letters, digits and '-', starting with a letter, at most 31 characters"

#: Built-in city slugs are kept this short so that "gs-<slug>" and "h-<slug>" are valid node names.
CITY_SLUG_MAX = 28

_CITIES_FILE = "cities-top100.csv"
_CITY_COLUMNS = ("id", "name", "latitude_deg", "longitude_deg", "elevation_m")


@dataclass(frozen=True)
class GroundSite:
    """A gateway on the ground.

    Attributes
    ----------
    name : str
        Node name (see ``SITE_NAME_RULE``; :func:`slug` makes one from any place name).
    lat_deg, lon_deg : float
        WGS84 geodetic latitude [-90, 90] and longitude [-180, 360] deg (east positive).
    alt_m : float
        Height above the ellipsoid, m, [-500, 9000].
    antennas : int or None
        Antennas (simultaneous satellite links), 1..16; None: the GSL configuration's default.
    """

    name: str
    lat_deg: float
    lon_deg: float
    alt_m: float = 0.0
    antennas: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SITE_NAME_RE.match(self.name):
            hint = f" (e.g. {slug(self.name)!r})" if isinstance(self.name, str) and _sluggable(self.name) else ""
            raise ConfigError(f"site name {self.name!r} is not allowed: use {SITE_NAME_RULE}{hint}", key="name")
        for key, lo, hi in (("lat_deg", -90.0, 90.0), ("lon_deg", -180.0, 360.0), ("alt_m", -500.0, 9000.0)):
            val = getattr(self, key)
            if (isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val)
                    or not lo <= val <= hi):
                raise ConfigError(f"{key} of site {self.name!r} must be in [{lo}, {hi}], got {val!r}", key=key)
        if self.antennas is not None and (isinstance(self.antennas, bool) or not isinstance(self.antennas, int)
                                          or not 1 <= self.antennas <= 16):
            raise ConfigError(f"antennas of site {self.name!r} must be an integer in [1, 16] or none, "
                              f"got {self.antennas!r}", key="antennas")


def _sluggable(name: str) -> bool:
    try:
        slug(name)
    except ConfigError:
        return False
    return True


def slug(name: str, max_len: int | None = None) -> str:
    """A node-name-safe form of a place name: ASCII-folded, lower case, ``[a-z0-9-]``.

    Accents are dropped, full stops are removed (``"M.M.A."`` -> ``"mma"``), every other run of
    characters outside ``[a-z0-9]`` becomes one ``-``, and leading/trailing ``-`` go. With
    ``max_len`` the result is cut at the last ``-`` that keeps it within the limit (or hard at the limit
    if there is none).

    Raises
    ------
    ConfigError
        Nothing usable is left (e.g. a name in a non-Latin script).

    Examples
    --------
    >>> slug("São-Paulo")
    'sao-paulo'
    >>> slug("Kinki M.M.A. (Osaka)")
    'kinki-mma-osaka'
    >>> slug("Los-Angeles-Long-Beach-Santa-Ana", max_len=28)
    'los-angeles-long-beach-santa'
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    folded = folded.replace(".", "")
    out = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")
    if max_len is not None and len(out) > max_len:
        cut = out.rfind("-", 0, max_len + 1)
        out = out[:cut] if cut > 0 else out[:max_len]
        out = out.strip("-")
    if not out:
        raise ConfigError(f"place name {name!r} gives an empty node name; give the site an ASCII name")
    return out


def city_slug(name: str) -> str:
    """Slug of a built-in city: the local name without the parenthesised English alias.

    ``"Mumbai-(Bombay)"`` -> ``"mumbai"``, ``"Al-Qahirah-(Cairo)"`` -> ``"al-qahirah"``; at most
    ``CITY_SLUG_MAX`` characters.
    """
    return slug(re.sub(r"\(.*?\)", "", name), CITY_SLUG_MAX)


def builtin_cities(limit: int | None = None) -> list[GroundSite]:
    """The built-in cities, most populous first, as ground sites named by :func:`city_slug`.

    Parameters
    ----------
    limit : int, optional
        Only the first ``limit`` cities (0..100); None: all.

    Returns
    -------
    list of GroundSite
        ``antennas`` is None (the GSL configuration decides). A slug that would repeat gets ``-2``,
        ``-3``, ... appended (none does in the shipped file).

    Raises
    ------
    ConfigError
        ``limit`` out of range, or the data file is malformed (names the line).
    """
    text = resources.files("topologies").joinpath("data", _CITIES_FILE).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(c.strip() for c in rows[0]) != _CITY_COLUMNS:
        raise ConfigError(f"header must be {','.join(_CITY_COLUMNS)}", file=_CITIES_FILE, line=1)
    body = [(i + 2, row) for i, row in enumerate(rows[1:]) if row]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or not 0 <= limit <= len(body)):
        raise ConfigError(f"limit must be an integer in [0, {len(body)}] or none, got {limit!r}", key="limit")
    sites: list[GroundSite] = []
    seen: set[str] = set()
    for line, row in body[:limit]:
        if len(row) != len(_CITY_COLUMNS):
            raise ConfigError(f"expected {len(_CITY_COLUMNS)} columns ({','.join(_CITY_COLUMNS)}), "
                              f"got {len(row)}: {row!r}", file=_CITIES_FILE, line=line)
        try:
            lat, lon, elev = float(row[2]), float(row[3]), float(row[4])
        except ValueError:
            raise ConfigError(f"latitude_deg, longitude_deg and elevation_m must be numbers: {row!r}",
                              file=_CITIES_FILE, line=line) from None
        base = city_slug(row[1])
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base[:CITY_SLUG_MAX - 1 - len(str(k))]}-{k}"
        seen.add(name)
        sites.append(GroundSite(name=name, lat_deg=lat, lon_deg=lon, alt_m=elev))
    return sites
