"""Which measurement samples a run can stand behind: the intervals in which the machine fell behind.

A probe sample measures the emulated network only while the emulator keeps up with it. Three things say
it did not, each against a bound from the scenario's ``[emulation]`` section:

- a step applied late (``steps.csv``) beyond ``valid_step_late_ms`` (default 100 ms, a tenth of the usual
  1 s step): the whole step is invalid, from its due time until the next step is due or, if later, until
  it was applied. Until it was applied the network still had the previous step's links, delays and
  routes; after, the thread that fell behind also ends the step's handover gaps and computes the next
  step's routes (a CPU hog here left 0.4 s of a step late and the next step 1.9 s late);
- the userspace delay daemon releasing packets late (``valid_release_late_ms``, default 1 ms, the floor of
  the delay-error bound the summary judges runs by): the p99 of its release lateness over an interval of
  the host monitor, from the difference of two reads of its cumulative histogram (which ends at 10 ms);
- the CPU saturated: the share of an interval in which some runnable task waited for a CPU (the kernel's
  pressure stall information, ``/proc/pressure/cpu`` "some", Linux >= 4.20) above ``valid_cpu_wait_pct``
  (default 50 %: tasks waited for a CPU most of the time). A busy CPU alone (``/proc/stat``) is recorded
  but not judged: a loaded run keeps the CPUs busy without anything waiting.

:class:`HostMonitor` samples the last two every ``interval_s`` of a run into ``monitor.csv``;
:func:`invalid_intervals` turns the step records and monitor rows into intervals of timeline seconds and
:func:`mark_valid` marks each sample: invalid when the time it spent in flight (send time to send time +
measured delay; a lost sample: its send time) overlaps one of them.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .clock import wall_offset_s
from .kernel.memory import meminfo_kb

log = logging.getLogger(__name__)

#: ``wall_offset_s``: the wall clock less the monotonic one then (:func:`emulator.clock.wall_offset_s`), to read
#: the samples' wall-clock stamps on the run's clock across a step of the wall clock (:func:`emulator.report.load_run`)
MONITOR_COLUMNS = ("t_s", "interval_s", "cpu_busy_pct", "cpu_wait_pct", "release_p99_us", "released",
                   "wall_offset_s")
#: the reasons an interval is invalid, in the order the summary lists them
REASONS = ("step-late", "release-late", "cpu")
PSI_CPU = Path("/proc/pressure/cpu")
#: the delay daemon's lateness histogram ends here: a p99 beyond it is known only to exceed it (inf), so
#: a release bound at or above it judges only the intervals whose p99 falls inside the histogram
RELEASE_HIST_MS = 10.0


@dataclass(frozen=True)
class Bounds:
    """Validity bounds (the scenario's ``[emulation] valid_*`` keys); ``cpu_wait_pct`` 100: not judged."""

    step_late_ms: float = 100.0
    release_late_ms: float = 1.0
    cpu_wait_pct: float = 50.0

    @classmethod
    def of(cls, emulation: Any) -> Bounds:
        """The bounds a scenario's ``[emulation]`` section sets (``valid_*`` keys)."""
        return cls(emulation.valid_step_late_ms, emulation.valid_release_late_ms, emulation.valid_cpu_wait_pct)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Bounds:
        d = d or {}
        return cls(**{k: float(d[k]) for k in ("step_late_ms", "release_late_ms", "cpu_wait_pct") if k in d})

    def as_dict(self) -> dict[str, float]:
        return {"step_late_ms": self.step_late_ms, "release_late_ms": self.release_late_ms,
                "cpu_wait_pct": self.cpu_wait_pct}


@dataclass(frozen=True)
class Interval:
    """``[start_s, end_s]`` in timeline seconds after the run's start, and why it is invalid."""

    start_s: float
    end_s: float
    reason: str


# ----------------------------------------------------------------------------------------- marking (pure)

def invalid_intervals(due_s: np.ndarray, late_ms: np.ndarray, monitor: dict[str, np.ndarray] | None,
                      bounds: Bounds, step_s: float, speed: float = 1.0) -> list[Interval]:
    """The invalid intervals of a run.

    Parameters
    ----------
    due_s, late_ms : (n_steps,) arrays
        Each applied step's due time (wall seconds after the run's start) and how late it was fully
        applied (ms), as ``steps.csv`` has them.
    monitor : dict of (n_rows,) arrays or None
        ``monitor.csv``'s columns (:data:`MONITOR_COLUMNS`): each row covers the ``interval_s`` wall
        seconds up to ``t_s``; NaN where a figure was not measured (no PSI, nothing released).
    bounds : Bounds
    step_s : float
        The timeline's step (timeline seconds).
    speed : float
        Timeline seconds per wall second.

    Returns
    -------
    list of Interval, in timeline seconds, sorted by start.
    """
    out: list[Interval] = []
    due_s, late_ms = np.asarray(due_s, float), np.asarray(late_ms, float)
    for d, late in zip(due_s[late_ms > bounds.step_late_ms], late_ms[late_ms > bounds.step_late_ms]):
        out.append(Interval(d * speed, max(d * speed + step_s, (d + late / 1e3) * speed), "step-late"))
    if monitor is not None and len(monitor.get("t_s", ())):
        end = np.asarray(monitor["t_s"], float)
        start = end - np.asarray(monitor["interval_s"], float)
        p99 = np.asarray(monitor["release_p99_us"], float)
        if bounds.release_late_ms >= RELEASE_HIST_MS:  # inf says "beyond 10 ms", not beyond a larger bound
            p99 = np.where(np.isinf(p99), np.nan, p99)
        with np.errstate(invalid="ignore"):  # NaN (not measured) compares false: not judged
            rel = p99 > bounds.release_late_ms * 1e3
            cpu = (np.asarray(monitor["cpu_wait_pct"], float) > bounds.cpu_wait_pct) & (bounds.cpu_wait_pct < 100)
        for mask, why in ((rel, "release-late"), (cpu, "cpu")):
            out += [Interval(a * speed, b * speed, why) for a, b in zip(start[mask], end[mask])]
    return sorted(out, key=lambda i: (i.start_s, i.end_s))


def merged(intervals: list[Interval]) -> np.ndarray:
    """The union of ``intervals`` as disjoint ``(n, 2)`` [start, end] rows, sorted."""
    rows: list[list[float]] = []
    for iv in sorted(intervals, key=lambda i: i.start_s):
        if rows and iv.start_s <= rows[-1][1]:
            rows[-1][1] = max(rows[-1][1], iv.end_s)
        else:
            rows.append([iv.start_s, iv.end_s])
    return np.array(rows, float).reshape(-1, 2)


def mark_valid(t_s: np.ndarray, measured_ms: np.ndarray, intervals: list[Interval],
               speed: float = 1.0) -> np.ndarray:
    """True for each sample whose time in flight meets no invalid interval.

    Parameters
    ----------
    t_s : (n,) array
        Send times, timeline seconds after the run's start.
    measured_ms : (n,) array
        The delay it measured (RTT or one-way; wall ms), NaN if lost: then its send time alone counts.
    intervals : list of Interval
    speed : float
        Timeline seconds per wall second (a measured ms lasts ``speed`` timeline ms).
    """
    t = np.asarray(t_s, float)
    dur = np.nan_to_num(np.asarray(measured_ms, float), nan=0.0) / 1e3 * speed
    u = merged(intervals)
    if not len(u) or not len(t):
        return np.ones(len(t), bool)
    # the last interval starting at or before the sample's end: it is the only one that can overlap,
    # because the merged intervals are disjoint and sorted
    i = np.searchsorted(u[:, 0], t + dur, side="right") - 1
    hit = (i >= 0) & (u[np.maximum(i, 0), 1] >= t)
    return ~hit


def invalid_seconds(intervals: list[Interval]) -> dict[str, float]:
    """Seconds (timeline) covered by each reason, and by any."""
    out = {r: float(np.diff(merged([i for i in intervals if i.reason == r]), axis=1).sum()) for r in REASONS}
    out["any"] = float(np.diff(merged(intervals), axis=1).sum())
    return out


# ------------------------------------------------------------------------------------------- the files

def read_steps(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``due_s`` and ``late_ms`` of every complete row of ``steps.csv`` (empty if there is none)."""
    due, late = [], []
    path = folder / "steps.csv"
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    d, la = float(row["due_s"]), float(row["late_ms"])
                except (KeyError, TypeError, ValueError):
                    break  # a line cut short by an interrupted run
                due.append(d)
                late.append(la)
    return np.array(due, float), np.array(late, float)


def read_monitor(folder: Path) -> dict[str, np.ndarray] | None:
    """``monitor.csv``'s columns as float arrays (empty cells NaN; a column an older version did not write: all
    NaN), or None without the file."""
    path = folder / "monitor.csv"
    if not path.is_file():
        return None
    cols: dict[str, list[float]] = {c: [] for c in MONITOR_COLUMNS}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        have = [c for c in MONITOR_COLUMNS if c in (reader.fieldnames or ())]
        for row in reader:
            try:  # a missing field (None) is a line cut short by an interrupted run; an empty one: not measured
                vals = {c: math.nan for c in MONITOR_COLUMNS}
                vals.update({c: float(row[c]) if row[c] != "" else math.nan for c in have})
            except (KeyError, TypeError, ValueError):
                break
            for c, v in vals.items():
                cols[c].append(v)
    return {c: np.array(v, float) for c, v in cols.items()}


# ---------------------------------------------------------------------------------------- the monitor

def read_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; idle and iowait are not busy, steal is (the
    hypervisor gave the time to someone else)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    total = sum(v)
    return total - v[3] - v[4], total


def read_cpu_wait_us() -> int | None:
    """Cumulative us in which some runnable task waited for a CPU (PSI), or None without PSI."""
    try:
        with open(PSI_CPU) as f:
            line = f.readline()
    except OSError:
        return None
    for item in line.split():
        if item.startswith("total="):
            return int(item[6:])
    return None


def hist_p99_us(before: list[int] | None, after: list[int] | None) -> tuple[float, int]:
    """The p99 release lateness (us) of the packets released between two reads of the delay daemon's
    cumulative histogram, and how many; NaN if none, inf when beyond the histogram (10 ms)."""
    if not after:
        return math.nan, 0
    from .shaping.delayd import Stats

    diff = [a - b for a, b in zip(after, before)] if before else list(after)
    if min(diff) < 0:  # someone reset the histogram between the reads: it holds this interval alone
        diff = list(after)
    n = sum(diff)
    if n <= 0:
        return math.nan, 0
    q = Stats(late_hist=diff).late_quantile_us(0.99)
    return (math.inf if q is None else q), n


class HostMonitor:
    """A thread writing one ``monitor.csv`` row every ``interval_s``: CPU busy share, CPU wait share
    (PSI), and the delay daemon's release lateness p99 over the interval (when ``shaper`` keeps a
    lateness histogram). ``t0`` (``time.monotonic()``) is the run's start; rows give seconds after it."""

    def __init__(self, path: Path, t0: float, shaper: Any = None, interval_s: float = 0.5) -> None:
        self.path, self.t0, self.shaper, self.interval_s = path, t0, shaper, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="satnetem-monitor", daemon=True)
        self.has_psi = read_cpu_wait_us() is not None
        # /proc/meminfo at the lowest MemAvailable seen (kB): the run's memory at its steady state
        self.mem_low: dict[str, int] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _hist(self) -> list[int] | None:
        if self.shaper is None:
            return None
        try:
            return self.shaper.stats().get("late_hist")
        except Exception as e:  # noqa: BLE001 - a dead daemon: the run reports it; stop asking
            # info, not warning: a dead daemon stops the run (emulator.watchdog), which says so in one line
            log.info("monitor: delay daemon statistics unavailable (%s); release lateness not judged", e)
            self.shaper = None
            return None

    def _loop(self) -> None:
        try:
            self._write()
        except OSError as e:  # a full disk: the run's watchdog stops it and says so; the rows before stay
            log.info("monitor: %s; stopped writing %s", e, self.path.name)

    def _write(self) -> None:
        with open(self.path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(MONITOR_COLUMNS)
            fh.flush()
            t_prev, cpu_prev, wait_prev, hist_prev = time.monotonic(), read_cpu_times(), read_cpu_wait_us(), \
                self._hist()
            while not self._stop.wait(self.interval_s):
                now = time.monotonic()
                cpu, wait, hist = read_cpu_times(), read_cpu_wait_us(), self._hist()
                dt = now - t_prev
                d_busy, d_total = cpu[0] - cpu_prev[0], cpu[1] - cpu_prev[1]
                busy = 100.0 * d_busy / d_total if d_total > 0 else math.nan
                wait_pct = (100.0 * (wait - wait_prev) / 1e6 / dt if wait is not None and wait_prev is not None
                            and dt > 0 else math.nan)
                p99, n = hist_p99_us(hist_prev, hist)
                mem = meminfo_kb("MemAvailable", "Slab")
                if "MemAvailable" in mem and mem["MemAvailable"] < self.mem_low.get("MemAvailable", 1 << 62):
                    self.mem_low = mem
                w.writerow([f"{now - self.t0:.3f}", f"{dt:.3f}", _cell(busy, 1), _cell(min(wait_pct, 100.0), 1),
                            _cell(p99, 1), n, f"{wall_offset_s():.6f}"])
                fh.flush()
                t_prev, cpu_prev, wait_prev, hist_prev = now, cpu, wait, hist if hist is not None else hist_prev


def _cell(x: float, nd: int) -> str:
    return "" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{nd}f}")


# --------------------------------------------------------------------------------------- the summary

def summarise(intervals: list[Interval], bounds: Bounds, checked: list[str], played_s: float,
              valid: np.ndarray) -> dict[str, Any]:
    """The run's ``validity`` entry: bounds, what was judged, seconds invalid per reason, the merged
    intervals (the first 200) and the share of valid probe samples (``valid``: every flow's, concatenated)."""
    u = merged(intervals)
    return {"bounds": bounds.as_dict(), "checked": checked, "played_s": played_s,
            "invalid_s": {k: round(v, 3) for k, v in invalid_seconds(intervals).items()},
            "intervals": [[round(a, 3), round(b, 3)] for a, b in u[:200].tolist()],
            "samples": int(len(valid)), "valid_samples": int(np.count_nonzero(valid)),
            "valid_pct": round(100.0 * np.count_nonzero(valid) / len(valid), 2) if len(valid) else None}
