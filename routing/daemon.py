"""Daemon-driven routing: protocols whose routes come from routing daemons running in the nodes.

A centralised protocol (:class:`routing.base.RoutingProtocol`) computes every route table itself and
the emulator installs it. A daemon-driven protocol instead starts one daemon per router namespace
and keeps the daemons' view of the links equal to the timeline; the daemons find their routes on
their own, as real routers would (and take as long as real routers would).

This module imports nothing from :mod:`emulator`: the emulation passes itself in to
:meth:`DaemonProtocol.start`, :meth:`~DaemonProtocol.update` and :meth:`~DaemonProtocol.stop`.
"""

from __future__ import annotations

from typing import Any

from topologies.errors import ConfigError
from topologies.timeline import Diff, Snapshot, Timeline

from .base import RouteTable, RoutingProtocol


class DaemonProtocol(RoutingProtocol):
    """Base of routing protocols run by daemons inside the router namespaces.

    The emulation calls, in this order:

    * :meth:`start` once, from ``build()``, after every link, address and host default route of
      step 0 is in place (instead of installing static routes);
    * :meth:`update` from every ``apply_step()``, after the step's link changes (links up, handovers,
      shaping, links down) are applied;
    * :meth:`stop` once, from ``stop()``, before the namespaces go away.

    ``emu`` is the :class:`emulator.network.Emulation`; subclasses use its ``nodes`` (``ns_path``),
    ``addr`` (addresses and interface names), ``link_a``, ``applied`` (the snapshot the kernel has),
    ``is_router`` and ``local`` (the nodes built here: all of them, or on one host of a clustered run that
    host's, whose routers alone get daemons from this instance; every host runs its own instance).
    """

    kind = "daemon"

    def compute(self, timeline: Timeline, step: int, snapshot: Snapshot | None = None) -> RouteTable:
        """Not available: the daemons compute the routes. Raises ConfigError."""
        raise ConfigError(f"routing protocol {self.name!r} is daemon-driven: its routes are computed by "
                          "the daemons in the nodes, not by compute()", key="routing.protocol")

    def start(self, emu: Any) -> None:
        """Start the daemons of every router of the built emulation ``emu``."""
        raise NotImplementedError

    def update(self, emu: Any, step: int, applied: Snapshot, diff: Diff) -> None:
        """Tell the daemons what changed at ``step``.

        Parameters
        ----------
        emu : emulator.network.Emulation
        step : int
            The step just applied.
        applied : Snapshot
            What the kernel now has (links, antenna peers, delay/rate/loss).
        diff : Diff
            The change from the previously applied snapshot to ``applied``.
        """
        raise NotImplementedError

    def stop(self, emu: Any) -> None:
        """Stop every daemon and remove their files; idempotent."""
        raise NotImplementedError

    def health(self) -> str | None:
        """None while every daemon runs; else one line naming a daemon that ended (the emulator's watchdog
        asks every 0.2 s while the clock plays, and stops the run on a line: the routes of a dead daemon
        are no longer kept). The default asks the daemons a subclass keeps in ``self.daemons`` for
        ``ended()`` (:class:`emulator.daemons.BirdDaemons` has it); a subclass holding its daemons another
        way overrides this."""
        ended = getattr(getattr(self, "daemons", None), "ended", None)
        return ended() if callable(ended) else None


def is_daemon_driven(protocol: object) -> bool:
    """True if ``protocol`` is run by daemons (has ``kind == "daemon"``)."""
    return getattr(protocol, "kind", "central") == "daemon"
