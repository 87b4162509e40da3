"""Ground sites (gateways): the value object, the built-in list of the 100 most populous cities and
Starlink's operational gateways."""

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

_STARLINK_FILE = "starlink-ground-stations-2026-03.csv"
_STARLINK_COLUMNS = ("name", "lat_deg", "lon_deg", "type", "status")

#: Antennas of one Starlink gateway site. SpaceX Services' request to the FCC of June 2020 for special
#: temporary authority to run six gateways (Hitterdal MN, Tionesta CA, Robertsdale AL, Baxley GA,
#: Butte MT, Colburn ID) gives eight 1.5 m antennas per site (as reported from the filing; the filing
#: itself was not read here). SpaceX's later Ka-band blanket application for gateway earth stations
#: (its narrative, as copied publicly) allows up to 40 identical 1.85 m antennas per site, talking to
#: up to 8 Gen1 and 32 Gen2 satellites at once. Eight is the figure for the sites as first built; a
#: site in the list may have more today (set ``[ground] gateway_antennas``).
STARLINK_GATEWAY_ANTENNAS = 8


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


#: Latin letters that Unicode does not decompose into a base letter and a mark (NFKD would drop them:
#: "Tromsø" -> "troms")
_NO_DECOMPOSITION = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss",
                                   "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "þ": "th", "Þ": "TH"})


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
    >>> slug("Tromsø, Norway")
    'tromso-norway'
    >>> slug("Los-Angeles-Long-Beach-Santa-Ana", max_len=28)
    'los-angeles-long-beach-santa'
    """
    ascii_bytes = unicodedata.normalize("NFKD", name.translate(_NO_DECOMPOSITION)).encode("ascii", "ignore")
    folded = ascii_bytes.decode("ascii").lower()
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


def starlink_gateways(antennas: int | None = STARLINK_GATEWAY_ANTENNAS) -> list[GroundSite]:
    """Starlink's operational gateways (``topologies/data/starlink-ground-stations-2026-03.csv``).

    Parameters
    ----------
    antennas : int or None
        Antennas of every site, 1..16 (default :data:`STARLINK_GATEWAY_ANTENNAS`); None: the GSL
        configuration's default.

    Returns
    -------
    list of GroundSite
        The rows of type ``gateway`` and status ``operational`` (214 in the shipped file), in file
        order, named ``gs-<slug>`` after the place name (``"Aerzen, Germany"`` -> ``gs-aerzen-germany``;
        at most 31 characters); a slug that would repeat gets ``-2``, ``-3``, ... Height 0 m (the list
        gives none; a gateway's height changes its slant range by metres).

    Raises
    ------
    ConfigError
        The data file is malformed (names the line) or ``antennas`` is out of range.
    """
    if antennas is not None and (isinstance(antennas, bool) or not isinstance(antennas, int)
                                 or not 1 <= antennas <= 16):
        raise ConfigError(f"antennas must be an integer in [1, 16] or none, got {antennas!r}", key="antennas")
    text = resources.files("topologies").joinpath("data", _STARLINK_FILE).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(c.strip() for c in rows[0]) != _STARLINK_COLUMNS:
        raise ConfigError(f"header must be {','.join(_STARLINK_COLUMNS)}", file=_STARLINK_FILE, line=1)
    sites: list[GroundSite] = []
    seen: set[str] = set()
    for line, row in ((i + 2, r) for i, r in enumerate(rows[1:]) if r):
        if len(row) != len(_STARLINK_COLUMNS):
            raise ConfigError(f"expected {len(_STARLINK_COLUMNS)} columns ({','.join(_STARLINK_COLUMNS)}), "
                              f"got {len(row)}: {row!r}", file=_STARLINK_FILE, line=line)
        if row[3].strip() != "gateway" or row[4].strip() != "operational":
            continue
        try:
            lat, lon = float(row[1]), float(row[2])
        except ValueError:
            raise ConfigError(f"lat_deg and lon_deg must be numbers: {row!r}", file=_STARLINK_FILE,
                              line=line) from None
        base = slug(row[0], CITY_SLUG_MAX)
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base[:CITY_SLUG_MAX - 1 - len(str(k))]}-{k}"
        seen.add(name)
        try:
            sites.append(GroundSite(name=f"gs-{name}", lat_deg=lat, lon_deg=lon, antennas=antennas))
        except ConfigError as e:
            raise ConfigError(str(e), file=_STARLINK_FILE, line=line, key=e.key) from None
    return sites
