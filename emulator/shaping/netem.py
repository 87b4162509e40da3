"""The netem backend: delay and loss with sch_netem, rate with htb, all through pyroute2.

Per port (egress of one interface)::

    htb 1: (root, default class 1:1) -- class 1:1 (rate = ceil = link rate) -- netem 10: (delay, loss)

The first ``set`` on a port creates the tree (``replace``: creates, or changes a same-kind qdisc in
place); later calls change the class and the netem qdisc in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from emulator.shaping.base import (
    LEAF_HANDLE,
    LinkShape,
    Port,
    Shaper,
    apply_htb,
    netem_kwargs,
)
from topologies.errors import ApplyError

log = logging.getLogger(__name__)


class NetemShaper(Shaper):
    """Kernel-only shaping; needs sch_netem and sch_htb."""

    name = "netem"

    def __init__(self) -> None:
        self._shaped: dict[tuple[str, int], LinkShape] = {}

    def prepare_node(self, node: str, ns_path: str, ipr: Any) -> None:
        """Nothing to prepare: netem lives entirely on the ports' qdiscs."""

    def set(self, items: Sequence[tuple[Port, LinkShape]], ipr_of: Callable[[str], Any]) -> None:
        for port, shape in items:
            first = port.key not in self._shaped
            if not first and self._shaped[port.key] == shape:
                continue
            ipr = ipr_of(port.node)
            op = "add" if first else "change"
            try:
                apply_htb(ipr, port.ifindex, shape, first)
                ipr.tc("replace" if first else "change", "netem", port.ifindex, LEAF_HANDLE,
                       **netem_kwargs(shape))
            except (NetlinkError, OSError) as e:
                raise ApplyError(f"netem {op} failed: {e}", node=port.node, link=port.ifname,
                                 operation=f"tc {op} netem") from e
            self._shaped[port.key] = shape

    def forget(self, port: Port) -> None:
        self._shaped.pop(port.key, None)

    def close(self) -> None:
        # The qdiscs live on interfaces of the emulation's namespaces and die with them.
        self._shaped.clear()
