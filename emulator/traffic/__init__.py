"""Measurement traffic programs run inside emulated nodes, and the parsers of what they record.

Each program is started in a node's namespace as ``python -m emulator.traffic.<module> ...`` and
writes its records to a CSV file as it goes:

* :mod:`.udpprobe` - sequence-numbered, timestamped UDP datagrams (one-way delay, loss, reordering);
* :mod:`.iperf` - argument lists for iperf3 and the parser of its output (throughput);
* :mod:`.pathprobe` - TTL-limited ICMP echo probes recording the path taken, round by round;
* :mod:`.service` - the orbital compute service and the ground client that sends it requests.

This module holds what they share: a CSV writer that flushes at least once a second (so a crash or
Ctrl-C loses at most the last second and the file stays readable), a stop flag set by SIGINT/SIGTERM,
and a tolerant CSV reader (a partially written last line is dropped, not an error).
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from topologies.errors import ConfigError

log = logging.getLogger(__name__)

#: rows are flushed to disk at least this often while a program runs
FLUSH_INTERVAL_S = 0.5


class CsvLog:
    """Append-only CSV record file: header first, rows flushed at least every ``FLUSH_INTERVAL_S``.

    Parameters
    ----------
    path : str or Path
        File to (over)write.
    columns : sequence of str
        Header row.
    """

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        # kept open for the life of the object, closed by close()/__exit__
        self._f = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(self.columns)
        self._f.flush()
        self._last_flush = time.monotonic()
        self._pending = False
        self._lock = threading.Lock()

    def row(self, values: Sequence[Any]) -> None:
        """Write one record (same order as ``columns``); flushes if the last flush is old enough."""
        if len(values) != len(self.columns):
            raise ValueError(f"row has {len(values)} values for {len(self.columns)} columns")
        with self._lock:
            self._w.writerow(values)
            self._pending = True
        self.tick()

    def tick(self) -> None:
        """Flush pending rows if ``FLUSH_INTERVAL_S`` has passed; call from every loop iteration."""
        now = time.monotonic()
        if self._pending and now - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
            self._pending = False
            self._last_flush = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                self._f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_on_signals() -> threading.Event:
    """Return an event set on SIGINT or SIGTERM, so that loops finish their file and exit cleanly.

    Must be called from the main thread. Programs wait on the event (``stop.wait(timeout)``) instead
    of sleeping, so a signal ends them within their longest blocking timeout.
    """
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def run_program(prog: str, body: Callable[[threading.Event], Any]) -> int:
    """Run a program's ``body(stop)`` with SIGINT/SIGTERM setting ``stop``; bad input exits 2 and an OS
    error 1, each with one line on stderr naming the program (never a traceback)."""
    stop = stop_on_signals()
    try:
        body(stop)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


def read_records(path: str | os.PathLike[str],
                 columns: Mapping[str, Callable[[str], Any]]) -> list[dict[str, Any]]:
    """Read a record file written by :class:`CsvLog`, tolerating an interrupted writer.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    columns : dict of str to callable
        Columns that must be in the header, each with the converter applied to its values
        (e.g. ``int``, ``float``, ``str``). Other columns are ignored.

    Returns
    -------
    list of dict
        One dict per complete row, holding the converted ``columns``. An empty file gives ``[]``.
        A last line without its newline (the writer was killed mid-row), rows with the wrong number
        of fields and rows whose values do not convert are dropped (logged at debug level).

    Raises
    ------
    ConfigError
        If the file is missing or its header lacks a required column.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read record file: {e.strerror}", file=str(p)) from None
    if not text.strip():
        return []
    lines = text.split("\n")
    # A complete file ends with "\n", so the last element is "". Anything else is a partial row.
    if lines[-1] != "":
        log.debug("%s: dropping partial last line %r", p, lines[-1][:80])
    lines = lines[:-1]
    if not lines:
        return []
    reader = csv.reader(lines)
    header = next(reader)
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(f"header {header} lacks column(s) {missing}", file=str(p), line=1)
    index = {c: header.index(c) for c in columns}
    out = []
    for lineno, fields in enumerate(reader, start=2):
        if len(fields) != len(header):
            log.debug("%s:%d: %d fields, expected %d; dropped", p, lineno, len(fields), len(header))
            continue
        try:
            out.append({c: conv(fields[index[c]]) for c, conv in columns.items()})
        except ValueError:
            log.debug("%s:%d: bad value; dropped", p, lineno)
    return out


def deadline_after(duration_s: float) -> float:
    """``time.monotonic()`` value ``duration_s`` from now (validated: finite and > 0)."""
    if not (duration_s > 0 and duration_s < float("inf")):
        raise ConfigError(f"duration must be > 0 s and finite, got {duration_s}", key="duration")
    return time.monotonic() + duration_s


def setup_cli_logging(verbose: bool = False) -> None:
    """Log to stderr for the command-line entry points (INFO, or DEBUG with ``verbose``)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
