"""One emulation over several hosts (issue 13): the foundations, each standing and tested on its own.

* :mod:`~emulator.cluster.placement` (pure): which host runs each node (orbital planes kept whole, or a
  METIS partition) and how many link slots then cross hosts; ``satnetem plan --hosts H`` prints it.
* :mod:`~emulator.cluster.vxlan`: a cross-host link end as a VXLAN device in its node's namespace over the
  host's underlay, through rtnetlink.
* :mod:`~emulator.cluster.underlay`: the underlay's one-way delay between hosts (ping) and its subtraction
  from cross-host links' delays.
* :mod:`~emulator.cluster.clocks` (pure): a host's clock offset from round trips.
* :mod:`~emulator.cluster.lab` and :mod:`~emulator.cluster.raylab`: fake hosts on one machine (namespaces
  on a bridge, 1 ms of underlay delay by the project's shaper) and a Ray node in each, for tests and benches.

* :mod:`~emulator.cluster.part` (pure) and :mod:`~emulator.cluster.agent`: one Ray actor per host builds its
  part of the emulation (:class:`emulator.network.Emulation` given a ``HostPart``: its nodes' namespaces,
  veths with both ends on it, a VXLAN end per link to another host, shaping less the measured underlay
  delay, routes) and plays the timeline's steps, each host step k at start + k x step_s by its own clock
  (the driver gives the start once and polls; a dead agent ends the run naming its host).

* :mod:`~emulator.cluster.run`: ``satnetem run --cluster ADDRESS`` (or ``[cluster]`` in the scenario) plays
  a scenario over the agents and writes the single-host results folder (what differs: its docstring).

A handover whose link comes to cross hosts, or stops crossing them, changes the spare pair's form between a
veth and two VXLAN ends, each host for its own ends (:meth:`emulator.network.Emulation._moves_across`).
"""
