"""Compute nodes of a scenario: its ``[[compute]]`` entries, by name or by rule, as concrete nodes.

An entry with ``name`` and ``satellite`` is one node, as it always was. An entry with a rule places a node
on each satellite the rule chooses:

* ``satellites = ["sat-0-0", "sat-3-7"]``: those satellites;
* ``shell = "name"`` (or its index from 0, in the order the plan lists shells): every satellite of that
  shell;
* ``every_nth = N``: slots 0, N, 2N, ... of every plane (of ``shell`` if given, else of every shell);
  satellites off the grid (a TLE set's transient ones) have no slot and are never chosen.

A rule's node on satellite ``sat-<rest>`` is named ``<prefix>-<rest>`` (``prefix`` defaults to ``dc``:
``dc-3-7`` on ``sat-3-7``, ``dc-1-3-7`` on ``sat-1-3-7`` of a constellation with several shells). The
expansion happens when the plan is built, so the timeline, the routing and the emulator see ordinary
compute nodes, one access link each, in the order of the entries and, within a rule, of the satellites.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    from .constellation import Constellation
    from .scenario import ComputeSpec, Scenario

#: ComputeSpec fields that choose satellites and name nodes; any other field (capacity, ...) is the
#: node's own and is copied into its timeline node info.
RULE_KEYS = ("name", "satellite", "satellites", "shell", "every_nth", "prefix")


@dataclass(frozen=True)
class ComputeNode:
    """One concrete compute node: its name, its satellite, and the ``[[compute]]`` entry it came from."""

    name: str
    satellite: str
    entry: int

    def info(self, spec: ComputeSpec) -> dict[str, Any]:
        """The timeline node's info: ``satellite``, ``entry`` and the entry's other fields that are set."""
        extra = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
                 if f.name not in RULE_KEYS and getattr(spec, f.name) is not None}
        return {"satellite": self.satellite, "entry": self.entry} | extra


def _rule_sats(spec: ComputeSpec, i: int, const: Constellation, source: str) -> list[int]:
    """Satellite indices an entry's rule chooses, in constellation order (``satellites``: as listed)."""
    index = {n: k for k, n in enumerate(const.names)}
    key = f"compute[{i}]"
    if spec.satellites:
        out = []
        for name in spec.satellites:
            if name not in index:
                raise ConfigError(f"compute rule {i}: satellite {name!r} does not exist (satellites are named "
                                  f"like {', '.join(const.names[:3])}, ...)", file=source, key=f"{key}.satellites")
            out.append(index[name])
        return out
    chosen = np.asarray(const.shell) >= 0
    if spec.shell is not None:
        names = [s.name for s in const.shells]
        if isinstance(spec.shell, int):
            if spec.shell >= len(names):
                raise ConfigError(f"compute rule {i}: shell {spec.shell} does not exist; shells are 0.."
                                  f"{len(names) - 1} ({', '.join(names)})", file=source, key=f"{key}.shell")
            k = spec.shell
        else:
            if names.count(spec.shell) != 1:
                why = "is the name of several shells: give its index" if spec.shell in names else "does not exist"
                raise ConfigError(f"compute rule {i}: shell {spec.shell!r} {why}; shells: "
                                  f"{', '.join(f'{j} {n}' for j, n in enumerate(names))}", file=source,
                                  key=f"{key}.shell")
            k = names.index(spec.shell)
        chosen &= np.asarray(const.shell) == k
    if spec.every_nth is not None:
        chosen &= np.asarray(const.slot) % spec.every_nth == 0
    out = np.flatnonzero(chosen).tolist()
    if not out:
        raise ConfigError(f"compute rule {i} chooses no satellite", file=source, key=f"{key}.every_nth"
                          if spec.every_nth is not None else f"{key}.shell")
    return out


def expand_compute(sc: Scenario, const: Constellation) -> list[ComputeNode]:
    """Every compute node of the scenario on ``const``, entries in order.

    Raises
    ------
    ConfigError
        A satellite or shell that does not exist, a rule that chooses nothing, a generated name that
        breaks the node-name rule or is another node's (naming ``compute[i]`` and the key).
    """
    from .scenario import NAME_RE, NAME_RULE

    out: list[ComputeNode] = []
    seen: dict[str, int] = {}
    index = {n: k for k, n in enumerate(const.names)}
    for i, spec in enumerate(sc.compute):
        if spec.satellite is not None:
            if spec.satellite not in index:
                raise ConfigError(f"compute node {spec.name!r} names satellite {spec.satellite!r}, which does not "
                                  f"exist (satellites are named like {', '.join(const.names[:3])}, ...)",
                                  file=sc.source, key=f"compute[{i}].satellite")
            nodes = [ComputeNode(spec.name, spec.satellite, i)]
        else:
            nodes = []
            for k in _rule_sats(spec, i, const, sc.source):
                sat = const.names[k]
                name = f"{spec.prefix}-{sat[4:] if sat.startswith('sat-') else sat}"
                if not NAME_RE.match(name):
                    raise ConfigError(f"compute rule {i}: node name {name!r} (for {sat}) is not allowed: use "
                                      f"{NAME_RULE} (a shorter prefix?)", file=sc.source, key=f"compute[{i}].prefix")
                nodes.append(ComputeNode(name, sat, i))
        for n in nodes:
            if n.name in seen:
                raise ConfigError(f"compute node name {n.name!r} comes from entries {seen[n.name]} and {i}: give "
                                  f"one of them another prefix", file=sc.source,
                                  key=f"compute[{i}].{'name' if spec.satellite is not None else 'prefix'}")
            seen[n.name] = i
        out += nodes
    return out
