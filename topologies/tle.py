"""Read two-line element sets (TLE), strictly: a malformed line is an error that names it.

Accepted input: any mix of 3-line sets (a name line, then lines 1 and 2) and bare 2-line sets,
blank lines anywhere, trailing whitespace, CRLF line ends, and name lines written ``0 NAME``
(Space-Track's 3LE form). Each data line must be 69 characters with a valid mod-10 checksum;
every numeric field is checked for its column format before sgp4 parses the set, because sgp4's own
parser reads some malformed fields silently as other numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any

from sgp4.api import Satrec

from .errors import ConfigError

TLE_LINE_LENGTH = 69
#: Mean motion above which a satellite is taken to be decaying, rev/day (about 415 km altitude).
DECAY_MEAN_MOTION_REV_DAY = 15.5

# (first column, last column) 1-based inclusive as in the TLE format description, field name, regex.
_INT = r" *[0-9]+"
_DEC = r" *[-+]?[0-9]*\.[0-9]+"
_EXP = r" *[-+ ]?[0-9]{5}[-+ ][0-9]"  # implied leading decimal point, e.g. " 58057-4"
_SATNUM = r" *[0-9A-HJ-NP-Z]?[0-9]+"  # Alpha-5 allowed: a leading letter other than I and O
_LINE1_FIELDS = (
    (3, 7, "satellite number", _SATNUM),
    (8, 8, "classification", r"[UCS ]"),
    (19, 20, "epoch year", r"[0-9 ][0-9]"),
    (21, 32, "epoch day of year", r" *[0-9]{1,3}\.[0-9]+"),
    (34, 43, "first derivative of mean motion", _DEC),
    (45, 52, "second derivative of mean motion (implied point, e.g. ' 12345-6')", _EXP),
    (54, 61, "drag term bstar (implied point, e.g. ' 12345-6')", _EXP),
    (63, 63, "ephemeris type", r"[0-9 ]"),
    (65, 68, "element set number", r" *[0-9]*"),
    (69, 69, "checksum", r"[0-9]"),
)
_LINE2_FIELDS = (
    (3, 7, "satellite number", _SATNUM),
    (9, 16, "inclination (deg)", _DEC),
    (18, 25, "right ascension of the ascending node (deg)", _DEC),
    (27, 33, "eccentricity (7 digits, implied leading point)", r"[0-9 ]{6}[0-9]"),
    (35, 42, "argument of perigee (deg)", _DEC),
    (44, 51, "mean anomaly (deg)", _DEC),
    (53, 63, "mean motion (rev/day)", _DEC),
    (64, 68, "revolution number", r" *[0-9]*"),
    (69, 69, "checksum", r"[0-9]"),
)
_SGP4_ERRORS = {
    1: "mean eccentricity out of [0, 1)",
    2: "mean motion below zero",
    3: "perturbed eccentricity out of [0, 1)",
    4: "semi-latus rectum below zero",
    6: "orbit decayed below the Earth's surface",
}
_SPACE_COLUMNS = {1: (2, 9, 18, 33, 44, 53, 62, 64), 2: (2, 8, 17, 26, 34, 43, 52)}


def tle_checksum(line: str) -> int:
    """Mod-10 checksum of the first 68 characters: digits count their value, each '-' counts 1."""
    total = 0
    for ch in line[:68]:
        if ch.isdigit():
            total += ord(ch) - 48
        elif ch == "-":
            total += 1
    return total % 10


@dataclass(frozen=True)
class TleRecord:
    """One element set as read from a file.

    Attributes
    ----------
    name : str
        The name line (without a leading ``"0 "``), or ``"<catalog number>"`` for a 2-line set.
    line1, line2 : str
        The data lines, 69 characters each (trailing whitespace removed).
    file : str
        Where the set came from (a path or ``"<string>"``).
    line_no : int
        1-based line number of the set's first line (the name line if there is one).
    satrec : sgp4.api.Satrec
        The parsed elements.
    """

    name: str
    line1: str
    line2: str
    file: str
    line_no: int
    satrec: Any = field(compare=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.satrec is None:
            object.__setattr__(self, "satrec", Satrec.twoline2rv(self.line1, self.line2))

    @property
    def catalog_number(self) -> str:
        """Satellite catalog number as written (5 characters, Alpha-5 allowed), stripped."""
        return self.line1[2:7].strip()

    @property
    def inclination_deg(self) -> float:
        """Inclination, deg."""
        return math.degrees(self.satrec.inclo)

    @property
    def raan_deg(self) -> float:
        """Right ascension of the ascending node at epoch, deg."""
        return math.degrees(self.satrec.nodeo)

    @property
    def eccentricity(self) -> float:
        """Eccentricity."""
        return float(self.satrec.ecco)

    @property
    def mean_motion_rev_day(self) -> float:
        """Mean motion (Kozai, as in the TLE), revolutions per day."""
        return float(self.satrec.no_kozai) * 1440.0 / (2.0 * math.pi)

    @property
    def epoch(self) -> datetime:
        """Epoch of the elements, aware UTC (to the microsecond)."""
        days = (self.satrec.jdsatepoch - 2451545.0) + self.satrec.jdsatepochF
        return datetime(2000, 1, 1, 12, tzinfo=UTC) + timedelta(microseconds=round(days * 86_400e6))


def _check_data_line(text: str, number: int, file: str, line_no: int) -> str:
    """Validate one data line (1 or 2) and return it without trailing whitespace."""
    line = text.rstrip()
    if not line.startswith(f"{number} "):
        raise ConfigError(
            f"expected TLE line {number} starting with '{number} ', got {line[:20]!r}", file=file, line=line_no
        )
    if len(line) != TLE_LINE_LENGTH:
        raise ConfigError(
            f"TLE line {number} must be {TLE_LINE_LENGTH} characters long, got {len(line)}: {line!r}",
            file=file,
            line=line_no,
        )
    for col in _SPACE_COLUMNS[number]:
        if line[col - 1] != " ":
            raise ConfigError(
                f"TLE line {number}: expected a blank in column {col}, got {line[col - 1]!r}: {line!r}",
                file=file,
                line=line_no,
            )
    for first, last, what, pattern in _LINE1_FIELDS if number == 1 else _LINE2_FIELDS:
        value = line[first - 1 : last]
        if not re.fullmatch(pattern, value):
            raise ConfigError(
                f"TLE line {number}, columns {first}-{last} ({what}): {value!r} is not a valid number "
                f"for this field: {line!r}",
                file=file,
                line=line_no,
            )
    expected = tle_checksum(line)
    if int(line[68]) != expected:
        raise ConfigError(
            f"TLE line {number}: checksum digit is {line[68]}, expected {expected} "
            f"(sum of digits + 1 per '-', mod 10): {line!r}",
            file=file,
            line=line_no,
        )
    return line


def _make_record(name: str | None, name_no: int | None, l1: tuple[int, str], l2: tuple[int, str],
                 file: str) -> TleRecord:
    (no1, raw1), (no2, raw2) = l1, l2
    line1 = _check_data_line(raw1, 1, file, no1)
    line2 = _check_data_line(raw2, 2, file, no2)
    if line1[2:7].strip().lstrip("0") != line2[2:7].strip().lstrip("0"):
        raise ConfigError(
            f"satellite number {line2[2:7].strip()!r} on line 2 differs from {line1[2:7].strip()!r} "
            f"on line 1 (line {no1}): expected the same number on both lines",
            file=file,
            line=no2,
        )
    try:
        satrec = Satrec.twoline2rv(line1, line2)
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"sgp4 cannot parse this element set: {exc}", file=file, line=no1) from exc
    if not 0.0 <= satrec.ecco < 1.0 or satrec.no_kozai <= 0.0:
        raise ConfigError(
            f"expected eccentricity in [0, 1) and mean motion > 0, got {satrec.ecco} and "
            f"{satrec.no_kozai * 1440 / (2 * math.pi)} rev/day",
            file=file,
            line=no2,
        )
    if satrec.error != 0:
        why = _SGP4_ERRORS.get(satrec.error, "unknown error")
        raise ConfigError(
            f"sgp4 rejects the element set of lines {no1}-{no2}: error {satrec.error} ({why}); expected "
            "elements SGP4 can propagate at their epoch",
            file=file,
            line=no1,
        )
    label = name if name else line1[2:7].strip()
    return TleRecord(name=label, line1=line1, line2=line2, file=file,
                     line_no=name_no if name_no is not None else no1, satrec=satrec)


def parse_tle(text: str, source: str = "<string>") -> list[TleRecord]:
    """Parse TLE text (3-line and 2-line sets, mixed; blank lines allowed).

    Parameters
    ----------
    text : str
        Contents of a TLE file.
    source : str
        File name to put in records and error messages.

    Returns
    -------
    list of TleRecord
        In file order.

    Raises
    ------
    ConfigError
        With ``file`` and ``line`` set and a message saying what was expected: a line 1 or 2 of the
        wrong length, a wrong line-number prefix, a blank missing between fields, a non-numeric field,
        a bad checksum, different satellite numbers on lines 1 and 2, a line 2 without a line 1, a
        name line not followed by a line 1, a set cut off at the end of the file, an element set
        sgp4 rejects, or no element set at all.
    """
    records: list[TleRecord] = []
    name: str | None = None
    name_no: int | None = None
    line1: tuple[int, str] | None = None
    last_no = 0
    for line_no, raw in enumerate(text.splitlines(), start=1):
        last_no = line_no
        stripped = raw.strip()
        if not stripped:
            if line1 is not None:
                raise ConfigError(f"expected TLE line 2 after line 1 (line {line1[0]}), got a blank line",
                                  file=source, line=line_no)
            continue
        is_line1 = raw.startswith("1 ")
        is_line2 = raw.startswith("2 ")
        if line1 is not None:
            if not is_line2:
                raise ConfigError(
                    f"expected TLE line 2 (starting with '2 ') after line 1 (line {line1[0]}), got {raw[:30]!r}",
                    file=source, line=line_no,
                )
            records.append(_make_record(name, name_no, line1, (line_no, raw), source))
            name, name_no, line1 = None, None, None
        elif is_line1:
            line1 = (line_no, raw)
        elif is_line2:
            raise ConfigError(
                "found TLE line 2 without a line 1 before it: expected a line starting with '1 '"
                + (f" after the name line {name_no}" if name_no is not None else ""),
                file=source, line=line_no,
            )
        else:
            if name is not None:
                raise ConfigError(
                    f"expected TLE line 1 (starting with '1 ') after the name line {name_no} ({name!r}), "
                    f"got another non-TLE line {raw[:30]!r}",
                    file=source, line=line_no,
                )
            name = stripped[2:].strip() if stripped.startswith("0 ") else stripped
            name_no = line_no
    if line1 is not None:
        raise ConfigError(f"file ends after TLE line 1 (line {line1[0]}): expected a line 2",
                          file=source, line=last_no)
    if name is not None:
        raise ConfigError(f"file ends after the name line {name!r}: expected TLE lines 1 and 2",
                          file=source, line=name_no)
    if not records:
        raise ConfigError("no TLE element sets found: expected lines starting with '1 ' and '2 '", file=source)
    return records


def load_tle(path: str | PathLike[str]) -> list[TleRecord]:
    """Read and parse a TLE file (see :func:`parse_tle`); a file that cannot be read is a ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"cannot read TLE file: {exc.strerror or exc}", file=str(p)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"TLE files are ASCII; byte {exc.start} is not", file=str(p)) from exc
    return parse_tle(text, source=str(p))


def latest_epoch(path: str | PathLike[str]) -> datetime | None:
    """The latest epoch in a TLE file, read from the epoch columns of its line 1s only (fast, lenient).

    For choosing a start time near the data before the file is parsed in full; returns None when
    the file cannot be read or holds no readable epoch (:func:`load_tle` then says what is wrong).
    """
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    best: datetime | None = None
    for line in lines:
        if not line.startswith("1 ") or len(line.rstrip()) != TLE_LINE_LENGTH:
            continue
        try:
            yy, day = int(line[18:20]), float(line[20:32])
        except ValueError:
            continue
        # two-digit years as in the TLE format: 57-99 are 1957-1999, 00-56 are 2000-2056
        when = datetime(1900 + yy if yy >= 57 else 2000 + yy, 1, 1, tzinfo=UTC) + timedelta(days=day - 1.0)
        best = when if best is None or when > best else best
    return best
