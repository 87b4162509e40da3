"""routing: from a snapshot to forwarding decisions.

Importing the package registers the built-in centralised protocols (shortest-delay, min-hop, ecmp,
predictive); daemon-driven built-ins and installed plugins are loaded when first looked up
(:func:`get_protocol`, :func:`available_protocols`).
"""

from . import ecmp, min_hop, predictive, shortest_delay  # noqa: F401  (they register on import)
from .base import RouteTable, RoutingProtocol, available_protocols, get_protocol, register

__all__ = ["RouteTable", "RoutingProtocol", "available_protocols", "get_protocol", "register"]
