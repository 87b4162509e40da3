"""The netem backend: delay and loss with sch_netem, rate with htb, in rtnetlink batches.

Per port (egress of one interface)::

    htb 1: (root, default class 1:1) -- class 1:1 (rate = ceil = link rate) -- netem 10: (delay, loss)

The messages are the ones :mod:`emulator.shaping.base` encodes for both backends. A ``set`` sends, per
namespace, one :class:`emulator.rtnl.Batch` holding only what changed: for a new port the htb root (kept
if an earlier run left one), the class and the netem qdisc (``replace``: created, or changed in place if
one is there); for a known port the class when the rate changed and the netem qdisc when its delay, loss
or limit did (both changed in place: a live link never loses its qdiscs).
"""

from __future__ import annotations

import errno
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from emulator import rtnl
from emulator.shaping.base import (
    LinkShape,
    Port,
    Shaper,
    htb_class_body,
    htb_root_body,
    netem_qdisc_body,
)
from topologies.errors import ApplyError

log = logging.getLogger(__name__)
#: rtnetlink handles kept per namespace, least recently used released first (their sockets live in
#: :data:`emulator.rtnl.POOL`, which keeps the process under its open-file limit).
_RT_CACHE = 256


class NetemShaper(Shaper):
    """Kernel-only shaping; needs sch_netem and sch_htb."""

    name = "netem"

    def __init__(self) -> None:
        self._shaped: dict[tuple[str, int], LinkShape] = {}
        self._rt: OrderedDict[str, rtnl.Rtnl] = OrderedDict()
        self._messages = 0  # netlink requests sent, for stats()

    def prepare_node(self, node: str, ns_path: str, ipr: Any) -> None:
        """Nothing to prepare: netem lives entirely on the ports' qdiscs."""

    def _rtnl(self, path: str, node: str) -> rtnl.Rtnl:
        rt = self._rt.get(path)
        if rt is None:
            rt = self._rt[path] = rtnl.Rtnl(path, node)
            while len(self._rt) > _RT_CACHE:
                self._rt.popitem(last=False)[1].close()
        else:
            self._rt.move_to_end(path)
        return rt

    def set(self, items: Sequence[tuple[Port, LinkShape]], ipr_of: Callable[[str], Any]) -> None:
        """Shape many ports with one rtnetlink batch per namespace, sending only what changed.

        Raises
        ------
        ApplyError
            A request failed; names the node, the interface and the operation (the first failure of
            the namespace, with the count of the others).
        """
        batches: dict[str, tuple[str, rtnl.Batch]] = {}
        sent: dict[int, tuple[Port, str]] = {}  # id(request) -> (port, operation), for error messages
        done: list[tuple[Port, LinkShape]] = []
        for port, shape in items:
            old = self._shaped.get(port.key)
            if old == shape:
                continue
            b = batches.setdefault(port.ns_path, (port.node, rtnl.Batch()))[1]

            def add(msg_type: int, flags: int, body: bytes, op: str, ignore: tuple[int, ...] = (),
                    port: Port = port, b: rtnl.Batch = b) -> None:
                b.add(msg_type, flags, body, op, ignore)
                sent[id(b.requests[-1])] = (port, op)

            if old is None:
                # sch_htb has no "change" for its root, so a root left by an earlier run (EEXIST) is kept and
                # its class replaced below.
                add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, htb_root_body(port.ifindex),
                    "tc add htb root", ignore=(errno.EEXIST,))
            if old is None or old.rate_mbps != shape.rate_mbps:
                add(rtnl.RTM_NEWTCLASS, rtnl.NLM_F_CREATE, htb_class_body(port.ifindex, shape),
                    f"tc {'replace' if old is None else 'change'} htb class {shape.rate_mbps:g} Mbit/s")
            new_netem = netem_qdisc_body(port.ifindex, shape)
            if old is None:
                add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE, new_netem, "tc replace netem")
            elif netem_qdisc_body(port.ifindex, old) != new_netem:  # delay, loss or (with the rate) limit
                add(rtnl.RTM_NEWQDISC, 0, new_netem, "tc change netem")
            done.append((port, shape))
        for path, (node, b) in batches.items():
            failures = self._rtnl(path, node).run(b)
            self._messages += len(b)
            if failures:
                req, err = failures[0]
                port, op = sent[id(req)]
                bad = {sent[id(r)][0].key for r, _e in failures}
                for key in bad:  # their state is unknown now: the next set adds them again
                    self._shaped.pop(key, None)
                for p, s in done:
                    if p.ns_path == path and p.key not in bad:
                        self._shaped[p.key] = s
                more = f" (and {len(failures) - 1} more failed requests)" if len(failures) > 1 else ""
                raise ApplyError(f"{op} on {port.ifname} failed: {os.strerror(err)} "
                                 f"[{errno.errorcode.get(err, err)}]{more}",
                                 node=port.node, link=port.ifname, operation=op)
            for p, s in done:
                if p.ns_path == path:
                    self._shaped[p.key] = s

    def forget(self, port: Port) -> None:
        self._shaped.pop(port.key, None)

    def release_node(self, node: str, ns_path: str) -> None:
        """Forget the namespace's ports and give up its rtnetlink handle (its qdiscs die with it)."""
        self._shaped = {k: v for k, v in self._shaped.items() if k[0] != ns_path}
        rt = self._rt.pop(ns_path, None)
        if rt is not None:
            rt.close()

    def stats(self, reset_late_max: bool = False) -> dict[str, Any]:
        """Ports shaped now and rtnetlink requests sent since the start (the kernel's qdiscs keep the
        packet counters)."""
        return {"backend": self.name, "ports": len(self._shaped), "requests": self._messages}

    def close(self) -> None:
        # The qdiscs live on interfaces of the emulation's namespaces and die with them.
        self._shaped.clear()
        for rt in self._rt.values():
            rt.close()
        self._rt.clear()
