"""The one error hierarchy of satnetem: every failure a user can cause or meet is one of these."""

from __future__ import annotations

import math
from typing import Any


class SatnetemError(Exception):
    """Base of every error satnetem raises on purpose."""


class ConfigError(SatnetemError):
    """A scenario, TLE file or command-line value is malformed or out of range.

    The message names what was wrong and where (file, line, key) so the user can fix it.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message  # without the file, line and key, for re-raising with a fuller location
        self.file = file
        self.line = line
        self.key = key
        where = []
        if file is not None:
            where.append(f"{file}:{line}" if line is not None else str(file))
        if key is not None:
            where.append(f"key '{key}'")
        prefix = ", ".join(where)
        # one line, always: a file name or a quoted value may carry line breaks of its own
        text = f"{prefix}: {message}" if prefix else message
        super().__init__(one_line(text))


#: what str.splitlines breaks a line at
_LINE_BREAKS = {c: c.encode("unicode_escape").decode("ascii")
                for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """``text`` with every line break written as its escape, so that an error stays on one line."""
    return "".join(_LINE_BREAKS.get(c, c) for c in text)


class TopologyError(SatnetemError):
    """The constellation or its links cannot be built as asked (e.g. no +Grid can be formed)."""


class ApplyError(SatnetemError):
    """A change to the live network failed; names the node, link and operation."""

    def __init__(self, message: str, *, node: str | None = None, link: str | None = None,
                 operation: str | None = None) -> None:
        self.node = node
        self.link = link
        self.operation = operation
        parts = [f"{k}={v}" for k, v in (("node", node), ("link", link), ("operation", operation)) if v]
        super().__init__(f"{message} ({', '.join(parts)})" if parts else message)


def check_range(name: str, value: Any, lo: float, hi: float, *, integer: bool = False, none_ok: bool = False,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise :class:`ConfigError` naming the field, the value and the allowed range unless ``value`` is a
    finite number (an int if ``integer``) in the range, or None where ``none_ok``."""
    if value is None and none_ok:
        return
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (lo < value if lo_open else lo <= value) \
        and (value < hi if hi_open else value <= hi)
    if not ok:
        allowed = (f"{'an integer' if integer else 'a number'} in {'(' if lo_open else '['}{lo}, {hi}"
                   f"{')' if hi_open else ']'}{' or none' if none_ok else ''}")
        raise ConfigError(f"{name} must be {allowed}, got {value!r}", key=name)
