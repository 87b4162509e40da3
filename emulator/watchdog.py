"""Stop a run whose delays or routes can no longer be guaranteed, instead of letting it go on silently.

A run depends on processes it started and cannot replace in the middle: the delay daemon's shards (each
holds the packets of its namespaces and applies their links' delays) and the namespace holder (its bind
mounts keep the nodes' namespaces alive). If one dies, whether killed from outside or crashed, packets
are no longer delayed as the timeline says, or nodes vanish; a step may only notice it much later (the
next change on one of the shard's links) or never. :class:`Watchdog` checks them every ``interval_s``
(0.2 s: a dead part is noticed well within the 2 s a run has to stop) and calls ``on_fault`` once with
one line saying what died; the runner then stops the clock, tears down and marks the run incomplete.

A check is a callable returning None while all is well, else the line. The checks read ``/proc`` or a
child's exit status (``Popen.poll``): microseconds each, whatever the constellation's size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Check = Callable[[], str | None]


def shards_alive(shaper: Any) -> Check | None:
    """A check that every delay daemon shard running now is still running, or None for a shaper
    without processes (netem: the kernel does the work)."""
    first = list(getattr(shaper, "pids", None) or [])
    if not first:
        return None

    def check() -> str | None:
        live = set(shaper.pids)
        dead = [p for p in first if p not in live]
        if dead:
            return (f"delay daemon shard {first.index(dead[0])} (pid {dead[0]}) has ended: the delays of its "
                    f"namespaces' links are no longer applied")
        return None

    return check


def holder_alive(holder: Any) -> Check | None:
    """A check that the namespace holder (:class:`emulator.kernel.holder.Holder`) still runs."""
    if holder is None or holder.pid is None:
        return None

    def check() -> str | None:
        rc = holder.poll()
        if rc is not None:
            return (f"the namespace holder (pid {holder.pid}) has ended (status {rc}): the nodes' namespaces "
                    f"went with it")
        return None

    return check


class Watchdog:
    """A thread running ``checks`` every ``interval_s`` until :meth:`stop`; the first that returns a line
    ends the watch and is handed to ``on_fault`` (once, from the watchdog's thread)."""

    def __init__(self, checks: Sequence[Check | None], on_fault: Callable[[str], None],
                 interval_s: float = 0.2) -> None:
        self.checks = [c for c in checks if c is not None]
        self.on_fault, self.interval_s = on_fault, interval_s
        self.fault: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="satnetem-watchdog", daemon=True)

    def start(self) -> None:
        if self.checks:
            self._thread.start()

    def stop(self) -> None:
        """End the watch (before the teardown: the parts it watches are about to end on purpose)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def check_now(self) -> str | None:
        """Run the checks once, here: the first line, or None. After :meth:`stop`, for a caller whose
        own operation failed first (a step that wrote to a dead shard): the cause, in the same words."""
        for check in self.checks:
            try:
                line = check()
            except Exception as e:  # noqa: BLE001 - a check that cannot look is itself a fault
                line = f"watchdog check failed: {e}"
            if line:
                return line
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            line = self.check_now()
            if line and not self._stop.is_set():
                self.fault = line
                log.debug("watchdog: %s", line)
                self.on_fault(line)
                return
