"""The netem backend: delay and loss with sch_netem, rate with htb, as raw rtnetlink requests.

Per port (egress of one interface)::

    htb 1: (root, default class 1:1) -- class 1:1 (rate = ceil = link rate) -- netem 10: (delay, loss)

The first ``set`` on a port creates the tree; later calls change in place only what changed: the class when
the rate or queue changed, the netem qdisc when the delay, loss or its queue limit changed. Every request of
one ``set`` for one namespace goes in one batch (:class:`emulator.rtnl.Batch`, acknowledged), as the routes
and the userspace backend's tbf do; the encodings are :func:`~emulator.shaping.base.htb_class_body`
(the same token bucket as the userspace backend's tbf) and :func:`~emulator.shaping.base.netem_qdisc_body`.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from emulator import rtnl
from emulator.shaping.base import (
    LinkShape,
    Port,
    Shaper,
    htb_class_body,
    htb_qdisc_body,
    netem_limit_packets,
    netem_qdisc_body,
)
from topologies.errors import ApplyError

log = logging.getLogger(__name__)


class NetemShaper(Shaper):
    """Kernel-only shaping; needs sch_netem and sch_htb."""

    name = "netem"

    def __init__(self) -> None:
        self._shaped: dict[tuple[str, int], LinkShape] = {}
        self._rt = rtnl.PrivateSockets()

    def prepare_node(self, node: str, ns_path: str, ipr: Any) -> None:
        """Nothing to prepare: netem lives entirely on the ports' qdiscs."""

    def _rtnl(self, path: str, node: str) -> rtnl.Rtnl:
        return self._rt.get(path, node)

    def set(self, items: Sequence[tuple[Port, LinkShape]], ipr_of: Callable[[str], Any]) -> None:
        batches: dict[str, rtnl.Batch] = {}
        nodes: dict[str, str] = {}
        done: list[tuple[Port, LinkShape]] = []
        for port, shape in items:
            old = self._shaped.get(port.key)
            if old == shape:
                continue
            b = batches.setdefault(port.ns_path, rtnl.Batch())
            nodes[port.ns_path] = port.node
            where = f"on {port.ifname}"
            if old is None:
                # a root left by an earlier run (EEXIST) is kept; its class and leaf are replaced in place
                b.add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, htb_qdisc_body(port.ifindex),
                      f"tc add htb root {where}", ignore=(errno.EEXIST,))
            if old is None or (old.rate_mbps, old.queue_packets) != (shape.rate_mbps, shape.queue_packets):
                b.add(rtnl.RTM_NEWTCLASS, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE if old is None else 0,
                      htb_class_body(port.ifindex, shape), f"tc htb class {shape.rate_mbps:g} Mbit/s {where}")
            if (old is None or (old.delay_ms, old.loss_pct) != (shape.delay_ms, shape.loss_pct)
                    or netem_limit_packets(old) != netem_limit_packets(shape)):
                b.add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE if old is None else 0,
                      netem_qdisc_body(port.ifindex, shape),
                      f"tc netem {shape.delay_ms:g} ms, {shape.loss_pct:g} % {where}")
            done.append((port, shape))
        for path, b in batches.items():
            failures = self._rtnl(path, nodes[path]).run(b)
            if failures:
                r, e = failures[0]
                raise ApplyError(f"{r.what}: {os.strerror(e)}", node=nodes[path], operation="tc netem")
        for port, shape in done:
            self._shaped[port.key] = shape

    def forget(self, port: Port) -> None:
        self._shaped.pop(port.key, None)

    def close(self) -> None:
        # The qdiscs live on interfaces of the emulation's namespaces and die with them.
        self._shaped.clear()
        self._rt.close()
