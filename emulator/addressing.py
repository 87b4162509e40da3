"""The addressing plan: IPv4 addresses, prefixes and interface names, derived from a timeline.

Pure and deterministic: the same node and link tables always give the same plan, so a run can be
replayed and a user can work out any address by hand. All addresses live inside 10.0.0.0/8; they
exist only inside the emulation's own network namespaces.

Default plan (:class:`AddressPlan`)
-----------------------------------
* **Router loopbacks** (satellites, gateways, user terminals and PoPs): one /32 each from ``10.64.0.0/10``,
  the r-th router (in node-table order) gets ``10.64.0.0 + r + 1``; a router with hosts behind it has its
  loopback in its site block instead (below). It is the address to ping a router at and the source of
  packets a router originates.
* **Link slots** (ISLs, gateway antennas and fibre links): one /31 each from ``10.0.0.0/10``; slot ``l`` gets
  ``10.0.0.0 + 2 l`` at its near end (``link_a``: satellite or gateway) and ``+ 1`` at its far end.
* **Gateway antennas and cross-shell laser slots** (the slots whose far end changes) have two veth
  pairs each (make-before-break handovers, see :mod:`emulator.network`): the first uses the slot's
  /31 above, the second (the *spare*) a /31 from the same pool after all slots: the j-th such slot
  (in link-table order) gets ``10.0.0.0 + 2 (n_links + j)``. Each pair keeps its /31 wherever its
  far end sits.
* **Access links** (a host to its gateway, a compute node to its satellite): each gets a host subnet
  from ``10.128.0.0/9`` (/24 by default); the router end is ``.1``, the host ``.2``. The subnet is the
  host's destination prefix. The hosts behind one router form its *site*: their subnets (in link-table
  order) are the first of an aligned block of ``2^ceil(log2(k + 1))`` subnets for ``k`` hosts, the next
  subnet's ``.1`` is the router's loopback, and blocks follow each other in router order from the pool's
  start (one host behind the first site's router: ``10.128.0.0/24`` and loopback ``10.128.1.1``, block
  ``10.128.0.0/23``). ``site_prefix``/``site_len`` hold each router's block: routers elsewhere reach the
  router and all its hosts by one route to it (a gateway's hosts move with it at every handover: one
  route change instead of one per host and one for the router).

Capacity of the default plan: 2,097,152 /31s (link slots plus one spare per antenna), 4,194,302
routers, 32,768 access links. A scenario that needs more raises
:class:`~topologies.errors.ConfigError` before anything is built.

Interface names (at most 15 characters, unique in each namespace)
------------------------------------------------------------------
* ISL ends: ``fore``/``aft`` for an intra-plane ISL (near/far end), ``right``/``left`` for an
  inter-plane one; if a satellite would get one of those names twice (not a +Grid), all of its ISL
  ends are named ``isl<slot>`` instead.
* Gateway antenna: ``ant<k>`` at the gateway (its k-th antenna), ``g<slot>`` at the satellite, a
  name no other interface uses, so moving it into another satellite never collides; the spare pair
  is ``ant<k>b`` / ``g<slot>b``. A cross-shell laser slot: ``x<slot>`` at its owner, ``y<slot>``
  at the partner, spares ``x<slot>b`` / ``y<slot>b``. Which of the two carries the antenna at a step alternates with
  handovers (:class:`LinkEnds` tracks it).
* Fibre link (gateway to PoP, PoP to PoP): ``f<slot>`` at the near end, ``fp<slot>`` at the PoP.
* Access link: ``eth0`` at the host or compute node, ``h<slot>`` at the gateway, PoP or satellite.
* Interface indices are fixed too: ``2 + 2 l`` for the near end of slot ``l`` and ``3 + 2 l`` for the
  far end (``lo`` is 1 in every namespace); the j-th antenna's spare pair gets ``2 + 2 (n_links + j)``
  and ``+ 1``. They are unique across the whole emulation so a moved interface keeps its index.

Node names must match ``^[a-z][a-z0-9-]{0,30}$``: they become process arguments, file names and
Mininet names, so anything else (upper case, spaces, shell metacharacters) is refused up front.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import numpy as np

from topologies.errors import ConfigError
from topologies.timeline import LINK_CLASSES, LINK_ROLES, ROUTER_KINDS, Timeline

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
HOST_KINDS = ("host", "compute")

_ISL = LINK_CLASSES.index("isl")
_GSL = LINK_CLASSES.index("gsl")
_ACCESS = LINK_CLASSES.index("access")
_FIBRE = LINK_CLASSES.index("fibre")
_INTRA = LINK_ROLES.index("intra")
_INTER = LINK_ROLES.index("inter")
_XSHELL = LINK_ROLES.index("cross-shell")


def check_node_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is a safe node name (see the module docstring)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"node name {name!r} is not allowed: node names must match {NAME_RE.pattern} "
                          "(lower-case letter first, then lower-case letters, digits or '-', at most "
                          "31 characters)", key="nodes.name")


def ip_str(addr: int) -> str:
    """Dotted-quad text of an IPv4 address held as an integer."""
    return str(ipaddress.IPv4Address(int(addr)))


@dataclass(frozen=True)
class AddressPlan:
    """Where each kind of address comes from (CIDR prefixes inside 10.0.0.0/8).

    Parameters
    ----------
    link_pool : str
        One /31 per link slot (ISL or gateway antenna).
    loopback_pool : str
        One /32 per router (satellite or gateway).
    host_pool : str
        One subnet of length ``host_prefix_len`` per access link.
    host_prefix_len : int
        Prefix length of a host subnet, 16..30.
    """

    link_pool: str = "10.0.0.0/10"
    loopback_pool: str = "10.64.0.0/10"
    host_pool: str = "10.128.0.0/9"
    host_prefix_len: int = 24

    def __post_init__(self) -> None:
        ten = ipaddress.IPv4Network("10.0.0.0/8")
        nets = []
        for key in ("link_pool", "loopback_pool", "host_pool"):
            value = getattr(self, key)
            try:
                net = ipaddress.IPv4Network(value)
            except ValueError as e:
                raise ConfigError(f"{key} {value!r} is not an IPv4 prefix: {e}", key=key) from None
            if not net.subnet_of(ten):
                raise ConfigError(f"{key} {value} is outside 10.0.0.0/8", key=key)
            nets.append((key, net))
        for i, (ka, a) in enumerate(nets):
            for kb, b in nets[i + 1:]:
                if a.overlaps(b):
                    raise ConfigError(f"{ka} {a} overlaps {kb} {b}", key=kb)
        host = ipaddress.IPv4Network(self.host_pool)
        if not host.prefixlen <= self.host_prefix_len <= 30 or self.host_prefix_len < 16:
            raise ConfigError(f"host_prefix_len {self.host_prefix_len} must be in "
                              f"{max(16, host.prefixlen)}..30", key="host_prefix_len")

    @property
    def max_links(self) -> int:
        return ipaddress.IPv4Network(self.link_pool).num_addresses // 2

    @property
    def max_routers(self) -> int:
        return ipaddress.IPv4Network(self.loopback_pool).num_addresses - 2

    @property
    def max_access(self) -> int:
        return ipaddress.IPv4Network(self.host_pool).num_addresses >> (32 - self.host_prefix_len)

    def assign(self, timeline: Timeline) -> Addressing:
        """Validate the timeline's node and link tables and address them.

        Raises
        ------
        ConfigError
            A node name is unsafe, a node kind unknown, the link table inconsistent with the node
            kinds, or the scenario needs more addresses than this plan has.
        """
        return _assign(self, timeline)


@dataclass(frozen=True)
class Addressing:
    """Addresses and interface names of one timeline under one plan.

    Addresses are integers (``ip_str`` for text). Shapes: per node ``(n_nodes,)``, per link
    ``(n_links,)``. ``loopback`` is 0 for hosts; ``prefix``/``prefix_len`` is a node's destination
    prefix (its loopback /32 for a router, its subnet for a host); ``gateway_addr`` is the default
    gateway of a host (0 for routers). ``addr_a``/``addr_b``, ``ifname_a``/``ifname_b``,
    ``ifindex_a``/``ifindex_b`` describe the near and far end of each link slot (its first veth pair);
    ``site_prefix``/``site_len`` a router's site block (its loopback and its hosts' subnets; length 0 for a
    router without hosts, and for hosts), ``site_router`` the router a host is behind (-1 for routers);
    the ``spare_*`` arrays the second pair of each slot whose far end changes, a gateway antenna or a
    cross-shell laser slot (0 or "" for other slots, ``has_spare`` False).
    """

    plan: AddressPlan
    is_router: np.ndarray
    loopback: np.ndarray
    prefix: np.ndarray
    prefix_len: np.ndarray
    gateway_addr: np.ndarray
    access_link: np.ndarray
    addr_a: np.ndarray
    addr_b: np.ndarray
    link_prefix_len: np.ndarray
    ifname_a: tuple[str, ...]
    ifname_b: tuple[str, ...]
    ifindex_a: np.ndarray
    ifindex_b: np.ndarray
    has_spare: np.ndarray
    spare_addr_a: np.ndarray
    spare_addr_b: np.ndarray
    spare_ifname_a: tuple[str, ...]
    spare_ifname_b: tuple[str, ...]
    spare_ifindex_a: np.ndarray
    spare_ifindex_b: np.ndarray
    site_prefix: np.ndarray
    site_len: np.ndarray
    site_router: np.ndarray

    def pair_end(self, link: int, pair: int, side: int) -> tuple[str, int, int]:
        """(interface name, index, address) of one end (``side`` 0 near, 1 far) of veth pair ``pair``
        (0 first, 1 spare) of ``link``."""
        if pair and not self.has_spare[link]:
            raise IndexError(f"link slot {link} has no spare veth pair")
        names, index, addr = ((self.ifname_a, self.ifindex_a, self.addr_a),
                              (self.ifname_b, self.ifindex_b, self.addr_b),
                              (self.spare_ifname_a, self.spare_ifindex_a, self.spare_addr_a),
                              (self.spare_ifname_b, self.spare_ifindex_b, self.spare_addr_b))[2 * pair + side]
        return names[link], int(index[link]), int(addr[link])

    def covered_by(self, destinations: np.ndarray) -> np.ndarray:
        """For each of ``destinations`` (node indices): the router whose site block holds it and is itself
        one of ``destinations`` (so that a route to the block reaches it), else -1."""
        d = np.asarray(destinations, np.int64)
        router = np.full(len(d), -1, np.int64)
        host = ~self.is_router[d]
        r = self.site_router[d[host]]
        router[host] = np.where(np.isin(r, d), r, -1)
        return router

    def address_of(self, node: int) -> str:
        """The address to reach ``node`` at: a router's loopback, a host's own address."""
        if self.is_router[node]:
            return ip_str(self.loopback[node])
        return ip_str(self.addr_a[self.access_link[node]])


def _assign(plan: AddressPlan, tl: Timeline) -> Addressing:
    n_nodes = len(tl.nodes)
    kinds = np.empty(n_nodes, dtype=object)
    seen: set[str] = set()
    for i, node in enumerate(tl.nodes):
        check_node_name(node.name)
        if node.name in seen:
            raise ConfigError(f"node name {node.name!r} is used twice", key="nodes.name")
        seen.add(node.name)
        if node.kind not in ROUTER_KINDS + HOST_KINDS:
            raise ConfigError(f"node {node.name!r} has unknown kind {node.kind!r}; known: "
                              f"{', '.join(ROUTER_KINDS + HOST_KINDS)}", key="nodes.kind")
        kinds[i] = node.kind
    is_router = np.isin(kinds, ROUTER_KINDS)
    routers = np.flatnonzero(is_router)
    n_links = tl.n_links
    cls = tl.link_class
    access = np.flatnonzero(cls == _ACCESS)
    if len(routers) > plan.max_routers:
        raise ConfigError(f"{len(routers)} routers need more loopback addresses than {plan.loopback_pool} "
                          f"holds ({plan.max_routers}): more nodes than names allow", key="loopback_pool")
    moving = (cls == _GSL) | ((cls == _ISL) & (tl.link_role == _XSHELL))  # far end changes: a spare pair
    n_spare = int(moving.sum())
    if n_links + n_spare > plan.max_links:
        raise ConfigError(f"{n_links} link slots and {n_spare} spare pairs need more /31 prefixes "
                          f"than {plan.link_pool} holds ({plan.max_links}): more links than names allow",
                          key="link_pool")
    if len(access) > plan.max_access:
        raise ConfigError(f"{len(access)} access links need more /{plan.host_prefix_len} subnets than "
                          f"{plan.host_pool} holds ({plan.max_access}): more hosts than names allow",
                          key="host_pool")

    # --- consistency of the link table with the node kinds --------------------------------------
    a = tl.link_a.astype(np.int64)
    peer = tl.peer
    if n_links and (a.min() < 0 or a.max() >= n_nodes or peer.max(initial=-1) >= n_nodes):
        raise ConfigError("link table refers to a node index outside the node table", key="link_a")
    kind_a = kinds[a] if n_links else np.empty(0, object)
    all_isl = np.flatnonzero(cls == _ISL)
    xshell = all_isl[tl.link_role[all_isl] == _XSHELL]
    isl = all_isl[tl.link_role[all_isl] != _XSHELL]
    gsl = np.flatnonzero(cls == _GSL)
    fibre = np.flatnonzero(cls == _FIBRE)
    for idx, want_a, label in ((all_isl, ("sat",), "isl"), (gsl, ("gateway", "terminal"), "gsl"),
                               (fibre, ("gateway", "pop"), "fibre"), (access, HOST_KINDS, "access")):
        bad = idx[~np.isin(kind_a[idx], want_a)]
        if len(bad):
            raise ConfigError(f"{label} link slot {int(bad[0])} starts at node "
                              f"{tl.nodes[int(a[bad[0]])].name!r} of kind {kind_a[bad[0]]!r}, "
                              f"expected {' or '.join(want_a)}", key="link_a")
    fixed = np.concatenate([isl, fibre, access])
    if len(fixed) and ((peer[fixed] != peer[fixed, :1]).any() or (peer[fixed, 0] < 0).any()):
        raise ConfigError("an ISL, fibre or access link slot changes or lacks its peer; only gateway antennas "
                          "and cross-shell laser slots hand over", key="peer")
    if len(fibre) and not np.isin(kinds[peer[fibre, 0]], ("pop",)).all():
        raise ConfigError("a fibre link ends at a node that is not a PoP", key="peer")
    for idx, what in ((gsl, "a gateway antenna"), (xshell, "a cross-shell laser slot")):
        if len(idx):
            gp = peer[idx]
            wrong = (gp >= 0) & ~np.isin(kinds[np.maximum(gp, 0)], ("sat",))
            if wrong.any():
                raise ConfigError(f"{what} points at a node that is not a satellite", key="peer")
    if len(xshell) and (peer[xshell] == a[xshell, None]).any():
        raise ConfigError("a cross-shell laser slot points at its own satellite", key="peer")
    if len(isl) and not np.isin(kinds[peer[isl, 0]], ("sat",)).all():
        raise ConfigError("an ISL ends at a node that is not a satellite", key="peer")

    # --- loopbacks and link /31s ----------------------------------------------------------------
    loop_base = int(ipaddress.IPv4Network(plan.loopback_pool).network_address)
    loopback = np.zeros(n_nodes, np.int64)
    loopback[routers] = loop_base + 1 + np.arange(len(routers))
    link_base = int(ipaddress.IPv4Network(plan.link_pool).network_address)
    addr_a = link_base + 2 * np.arange(n_links, dtype=np.int64)
    addr_b = addr_a + 1
    link_plen = np.full(n_links, 31, np.int64)
    prefix_len = np.where(is_router, 32, 0).astype(np.int64)
    gateway_addr = np.zeros(n_nodes, np.int64)
    access_link = np.full(n_nodes, -1, np.int64)

    # --- host subnets, by site (see the module docstring) -------------------------------------------
    host_base = int(ipaddress.IPv4Network(plan.host_pool).network_address)
    sub_bits = 32 - plan.host_prefix_len
    site_router = np.full(n_nodes, -1, np.int64)
    site_router[a[access]] = peer[access, 0]
    site_prefix = np.zeros(n_nodes, np.int64)
    site_len = np.zeros(n_nodes, np.int64)
    index = np.empty(len(access), np.int64)  # subnet number of each access link in the pool
    by_router: dict[int, list[int]] = {}
    for k, l in enumerate(access.tolist()):
        by_router.setdefault(int(peer[l, 0]), []).append(k)
    cursor = 0
    for r in sorted(by_router):
        js = by_router[r]
        size = 1 << (len(js)).bit_length()  # the smallest power of two above k: k subnets and the loopback's
        cursor = -(-cursor // size) * size  # aligned
        index[js] = cursor + np.arange(len(js))
        loopback[r] = host_base + ((cursor + len(js)) << sub_bits) + 1
        site_prefix[r] = host_base + (cursor << sub_bits)
        site_len[r] = plan.host_prefix_len - (size.bit_length() - 1)
        cursor += size
    if cursor > plan.max_access:
        raise ConfigError(f"{len(access)} hosts in {len(by_router)} sites need {cursor} /{plan.host_prefix_len} "
                          f"subnets (a block per site, its router's loopback included), more than {plan.host_pool} "
                          f"holds ({plan.max_access})", key="host_pool")
    prefix = loopback.copy()
    subnet = host_base + (index << sub_bits)
    addr_b[access] = subnet + 1  # router end
    addr_a[access] = subnet + 2  # host end
    link_plen[access] = plan.host_prefix_len
    hosts = a[access]
    counts = np.bincount(hosts, minlength=n_nodes)
    host_nodes = np.flatnonzero(~is_router)
    bad = host_nodes[counts[host_nodes] != 1]
    if len(bad):
        raise ConfigError(f"{kinds[bad[0]]} node {tl.nodes[int(bad[0])].name!r} has "
                          f"{int(counts[bad[0]])} access links, expected exactly one", key="link_a")
    prefix[hosts] = subnet
    prefix_len[hosts] = plan.host_prefix_len
    gateway_addr[hosts] = subnet + 1
    access_link[hosts] = access

    # --- interface names ---------------------------------------------------------------------------
    names_a = [""] * n_links
    names_b = [""] * n_links
    role = tl.link_role
    per_node: dict[int, list[tuple[int, int, str]]] = {}
    for l in isl.tolist():
        r = int(role[l])
        na, nb = ("fore", "aft") if r == _INTRA else ("right", "left") if r == _INTER else ("", "")
        per_node.setdefault(int(a[l]), []).append((l, 0, na))
        per_node.setdefault(int(peer[l, 0]), []).append((l, 1, nb))
    for ends in per_node.values():
        names = [n for _, _, n in ends]
        clash = "" in names or len(set(names)) != len(names)
        for l, side, n in ends:
            (names_a if side == 0 else names_b)[l] = f"isl{l}" if clash else n
    antenna_no: dict[int, int] = {}
    for l in gsl.tolist():
        k = antenna_no.get(int(a[l]), 0)
        antenna_no[int(a[l])] = k + 1
        names_a[l] = f"ant{k}"
        names_b[l] = f"g{l}"
    for l in xshell.tolist():
        names_a[l] = f"x{l}"
        names_b[l] = f"y{l}"
    for l in fibre.tolist():
        names_a[l] = f"f{l}"
        names_b[l] = f"fp{l}"
    for l in access.tolist():
        names_a[l] = "eth0"
        names_b[l] = f"h{l}"
    ifindex_a = 2 + 2 * np.arange(n_links, dtype=np.int64)

    # --- spare pairs of the slots whose far end changes (gateway antennas, cross-shell lasers) -------
    has_spare = moving
    j = np.cumsum(has_spare) - 1  # j-th such slot
    spare_a = np.where(has_spare, link_base + 2 * (n_links + j), 0).astype(np.int64)
    spare_b = np.where(has_spare, spare_a + 1, 0)
    spare_ifa = np.where(has_spare, 2 + 2 * (n_links + j), 0).astype(np.int64)
    spare_ifb = np.where(has_spare, spare_ifa + 1, 0)
    spare_na = tuple(f"{names_a[l]}b" if has_spare[l] else "" for l in range(n_links))
    spare_nb = tuple(f"{names_b[l]}b" if has_spare[l] else "" for l in range(n_links))
    return Addressing(plan, is_router, loopback, prefix, prefix_len, gateway_addr, access_link,
                      addr_a, addr_b, link_plen, tuple(names_a), tuple(names_b), ifindex_a, ifindex_a + 1,
                      has_spare, spare_a, spare_b, spare_na, spare_nb, spare_ifa, spare_ifb, site_prefix, site_len,
                      site_router)


@dataclass
class LinkEnds:
    """The veth pair that carries each link slot now (a gateway antenna alternates between its two
    pairs at handovers): near/far addresses, names and indices per slot, changed by :meth:`use`.
    Shapes as in :class:`Addressing`."""

    addressing: Addressing
    pair: np.ndarray = field(init=False)
    addr_a: np.ndarray = field(init=False)
    addr_b: np.ndarray = field(init=False)
    ifindex_a: np.ndarray = field(init=False)
    ifindex_b: np.ndarray = field(init=False)
    ifname_a: list[str] = field(init=False)
    ifname_b: list[str] = field(init=False)

    def __post_init__(self) -> None:
        a = self.addressing
        self.pair = np.zeros(len(a.addr_a), np.int8)
        self.addr_a, self.addr_b = a.addr_a.copy(), a.addr_b.copy()
        self.ifindex_a, self.ifindex_b = a.ifindex_a.copy(), a.ifindex_b.copy()
        self.ifname_a, self.ifname_b = list(a.ifname_a), list(a.ifname_b)

    def use(self, link: int, pair: int) -> None:
        """Make veth pair ``pair`` (0 or 1) the one that carries ``link``."""
        a = self.addressing
        self.ifname_a[link], self.ifindex_a[link], self.addr_a[link] = a.pair_end(link, pair, 0)
        self.ifname_b[link], self.ifindex_b[link], self.addr_b[link] = a.pair_end(link, pair, 1)
        self.pair[link] = pair
