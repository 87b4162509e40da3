"""nfnetlink messages for the delay daemon: the nfnetlink_queue configuration (bind, copy mode, length,
flags) and the few nf_tables transactions that send the packets of held interfaces (leaving or arriving)
to that queue, built here and handed to the compiled daemon (``delayd.c``) as opaque batches, which it
sends inside each namespace. Verdict and packet layouts are kept for the tests that check the kernel's
side of the protocol.

No libnftnl: messages are packed with :mod:`struct` from the kernel's UAPI layouts
(linux/netfilter/nfnetlink.h, nfnetlink_queue.h, nf_tables.h). Pure functions build and parse bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator

NETLINK_NETFILTER = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000

NFNL_SUBSYS_QUEUE = 3
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11

# nfnetlink_queue
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_GSO = 0x4
NF_DROP = 0
NF_ACCEPT = 1

# nf_tables
NFPROTO_INET = 1
NFT_MSG_NEWTABLE = 0
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_META_DREG = 1
NFTA_META_KEY = 2
NFTA_META_SREG = 3
NFT_META_IIF = 4
NFT_META_OIF = 5
NFT_META_MARK = 3
NFT_META_IIFGROUP = 21
NFT_META_OIFGROUP = 22
NFT_META_TIME_NS = 30
NFT_REG_1 = 1
NFTA_CMP_SREG = 1
NFTA_CMP_OP = 2
NFTA_CMP_DATA = 3
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
NFTA_DATA_VALUE = 1
NFTA_TARGET_NAME = 1
NFTA_TARGET_REV = 2
NFTA_TARGET_INFO = 3
NF_INET_PRE_ROUTING = 0
NF_INET_POST_ROUTING = 4
NF_IP_PRI_MANGLE = -150
LOOPBACK_IFINDEX = 1  # lo is the first device of every network namespace
#: Interface groups (IFLA_GROUP, kept when an interface moves to another namespace) that the catch-all rules
#: (``ingress_all``) read: what leaves an interface of HOLD_EGRESS_GROUP is queued, what arrives on one of
#: PASS_INGRESS_GROUP is not (its sender's egress held it). Both ends of such a veth pair are grouped so.
HOLD_EGRESS_GROUP = 0x5A7E0001
PASS_INGRESS_GROUP = 0x5A7E0002
# The two base chains of the daemon's table: (name, hook, meta key matched by the hold rules).
EGRESS_CHAIN = "postrouting"
INGRESS_CHAIN = "prerouting"

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, packed by the caller)
_NLATTR = struct.Struct("=HH")
_VERDICT_MSG_LEN = 16 + 4 + 4 + 8  # nlmsghdr + nfgenmsg + nlattr + nfqnl_msg_verdict_hdr
_VERDICT_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
_PACKET_HDR = struct.Struct(">IHB")
_BE32 = struct.Struct(">I")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return _NLATTR.pack(length, atype) + payload + b"\0" * (_align4(length) - length)


def nested(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def attr_str(atype: int, text: str) -> bytes:
    return attr(atype, text.encode() + b"\0")


def attr_be32(atype: int, value: int) -> bytes:
    return attr(atype, struct.pack(">I", value & 0xFFFFFFFF))


def nfmsg(subsys: int, msg: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    """One nfnetlink message: nlmsghdr + nfgenmsg(family, v0, res_id big endian) + attributes."""
    payload = _NFGENMSG.pack(family, 0, socket.htons(res_id)) + body
    return _NLMSGHDR.pack(16 + len(payload), (subsys << 8) | msg, flags, seq, 0) + payload


# --------------------------------------------------------------------------- nfnetlink_queue


def queue_config(queue_num: int, seq: int, *, bind: bool | None = None, maxlen: int | None = None,
                 flags: int | None = None, copy_bytes: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG: optionally bind/unbind, or set the copy mode (META, no payload, or with
    ``copy_bytes`` > 0 PACKET: the first ``copy_bytes`` bytes of each packet), queue length, flags."""
    body = b""
    if bind is not None:
        cmd = NFQNL_CFG_CMD_BIND if bind else NFQNL_CFG_CMD_UNBIND
        body += attr(NFQA_CFG_CMD, struct.pack(">BBH", cmd, 0, 0))
    else:
        mode = NFQNL_COPY_PACKET if copy_bytes > 0 else NFQNL_COPY_META
        body += attr(NFQA_CFG_PARAMS, struct.pack(">IB", copy_bytes, mode))
        if maxlen is not None:
            body += attr_be32(NFQA_CFG_QUEUE_MAXLEN, maxlen)
        if flags is not None:
            body += attr_be32(NFQA_CFG_FLAGS, flags) + attr_be32(NFQA_CFG_MASK, flags)
    return nfmsg(NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC,
                 queue_num, body)


def verdict(queue_num: int, packet_id: int, accept: bool, mark: int | None = None) -> bytes:
    """NFQNL_MSG_VERDICT for one packet, no ack requested (errors still come back as NLMSG_ERROR);
    ``mark``: also set the packet's ``skb->mark`` to this value."""
    msg = _pack_verdict(queue_num, packet_id, NF_ACCEPT if accept else NF_DROP)
    if mark is None:
        return msg
    return _NLMSGHDR.pack(_VERDICT_MSG_LEN + 8, _VERDICT_TYPE, NLM_F_REQUEST, 0, 0) + msg[16:] + attr_be32(
        NFQA_MARK, mark)


_VERDICT_HEAD = struct.Struct("=IHHIIBB")  # nlmsghdr + family, version
_VERDICT_TAIL = struct.Struct(">HHHII")  # res_id, nla_len, nla_type (we byteswap them), verdict, id


def _pack_verdict(queue_num: int, packet_id: int, code: int) -> bytes:
    head = _VERDICT_HEAD.pack(_VERDICT_MSG_LEN, _VERDICT_TYPE, NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0)
    # res_id is big endian; the nlattr header is host order, hence packed separately.
    return (head + struct.pack(">H", queue_num) + _NLATTR.pack(12, NFQA_VERDICT_HDR)
            + struct.pack(">II", code, packet_id))


def hold_key(ifindex: int, ingress: bool) -> int:
    """The daemon's key of a held interface: ``ifindex * 2 + 1`` for arrivals on it (held at prerouting),
    ``ifindex * 2`` for departures through it (held at postrouting). One int, so lookups stay cheap."""
    return (ifindex << 1) | (1 if ingress else 0)


def parse_messages(buf: bytes | memoryview, n: int) -> Iterator[tuple[int, int, int]]:
    """Walk the netlink messages in ``buf[:n]``.

    Yields ``(kind, a, b)``: for a queued packet ``(NFQNL_MSG_PACKET, packet_id, key)`` where ``key`` is
    :func:`hold_key` of the input interface for a packet queued at prerouting and of the output interface
    otherwise (ifindex 0 if the kernel sent none); for an error/ack ``(NLMSG_ERROR, -errno or 0, seq)``.
    Other messages are skipped. :func:`parse_messages_marked` also gives each packet's mark.
    """
    for kind, a, b, _mark in parse_messages_marked(buf, n):
        yield kind, a, b


def parse_messages_marked(buf: bytes | memoryview, n: int) -> Iterator[tuple[int, int, int, int]]:
    """As :func:`parse_messages`, with a fourth element: the packet's ``skb->mark`` (0 when the kernel
    sent none: it sends NFQA_MARK only for a non-zero mark; 0 for errors)."""
    off = 0
    unpack_hdr = _NLMSGHDR.unpack_from
    unpack_attr = _NLATTR.unpack_from
    while off + 16 <= n:
        length, mtype, _flags, seq, _pid = unpack_hdr(buf, off)
        if length < 16 or off + length > n:
            break
        if mtype == _PACKET_TYPE:
            pos = off + 20  # skip nlmsghdr + nfgenmsg
            end = off + length
            packet_id = -1
            hook = -1
            indev = outdev = mark = 0
            while pos + 4 <= end:
                alen, atype = unpack_attr(buf, pos)
                if alen < 4:
                    break
                atype &= 0x3FFF
                if atype == NFQA_PACKET_HDR:  # nfqnl_msg_packet_hdr: be32 id, be16 hw_protocol, u8 hook
                    packet_id, _proto, hook = _PACKET_HDR.unpack_from(buf, pos + 4)
                elif atype == NFQA_IFINDEX_INDEV:
                    indev = _BE32.unpack_from(buf, pos + 4)[0]
                elif atype == NFQA_IFINDEX_OUTDEV:
                    outdev = _BE32.unpack_from(buf, pos + 4)[0]
                elif atype == NFQA_MARK:
                    mark = _BE32.unpack_from(buf, pos + 4)[0]
                pos += _align4(alen)
            if packet_id >= 0:
                if hook == NF_INET_PRE_ROUTING:
                    yield (NFQNL_MSG_PACKET, packet_id, (indev << 1) | 1, mark)
                else:
                    yield (NFQNL_MSG_PACKET, packet_id, outdev << 1, mark)
        elif mtype == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, off + 16)[0]
            err_seq = struct.unpack_from("=I", buf, off + 16 + 4 + 8)[0] if length >= 36 else seq
            yield (NLMSG_ERROR, err, err_seq, 0)
        off += _align4(length)


# --------------------------------------------------------------------------- nf_tables ruleset


def _expr(name: str, *data: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, attr_str(NFTA_EXPR_NAME, name), nested(NFTA_EXPR_DATA, *data))


def _batch(seq: int, msgs: list[bytes]) -> bytes:
    begin = nfmsg(0, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
    end = nfmsg(0, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + len(msgs) + 1, socket.AF_UNSPEC,
                NFNL_SUBSYS_NFTABLES, b"")
    return begin + b"".join(msgs) + end


def nft_table_batch(table: str, seq: int, install: bool = True,
                    ingress_all_queue: int | None = None) -> tuple[bytes, set[int]]:
    """One nf_tables transaction that (re)creates, or with ``install=False`` deletes, the daemon's table::

        table inet <table> {
            chain prerouting  { type filter hook prerouting  priority mangle; policy accept; }
            chain postrouting { type filter hook postrouting priority mangle; policy accept; }
        }

    The chains start empty -- nothing is queued until :func:`nft_hold_rules_batch` names interfaces --
    unless ``ingress_all_queue`` is a queue number: the chains then get the catch-all rules of
    :func:`nft_hold_rules_batch` (``ingress_all``) in the same transaction.
    Adding the table, deleting it and adding it again in one batch makes installation idempotent (a
    table left by a killed daemon is replaced). Every message asks for an ack.

    Returns
    -------
    (data, seqs) : tuple[bytes, set[int]]
        The batch and the sequence numbers whose acks to wait for.
    """
    fl = NLM_F_REQUEST | NLM_F_ACK
    msgs = [nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE, fl | NLM_F_CREATE, seq + 1, NFPROTO_INET, 0,
                  attr_str(NFTA_TABLE_NAME, table)),
            nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE, fl, seq + 2, NFPROTO_INET, 0,
                  attr_str(NFTA_TABLE_NAME, table))]
    if install:
        msgs.append(nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE, fl | NLM_F_CREATE, seq + 3, NFPROTO_INET,
                          0, attr_str(NFTA_TABLE_NAME, table)))
        for chain, hooknum in ((INGRESS_CHAIN, NF_INET_PRE_ROUTING), (EGRESS_CHAIN, NF_INET_POST_ROUTING)):
            hook = nested(NFTA_CHAIN_HOOK, attr_be32(NFTA_HOOK_HOOKNUM, hooknum),
                          attr_be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_MANGLE))
            msgs.append(nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN, fl | NLM_F_CREATE, seq + 1 + len(msgs),
                              NFPROTO_INET, 0, attr_str(NFTA_CHAIN_TABLE, table) + attr_str(NFTA_CHAIN_NAME, chain)
                              + hook + attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                              + attr_str(NFTA_CHAIN_TYPE, "filter")))
        if ingress_all_queue is not None:
            msgs += _catch_all_rules(table, ingress_all_queue, seq + 1 + len(msgs))
    return _batch(seq, msgs), set(range(seq + 1, seq + 1 + len(msgs)))


def nft_hold_rules_batch(table: str, queue_num: int, seq: int, egress: Iterable[int],
                         ingress: Iterable[int], ingress_all: bool = False) -> tuple[bytes, set[int]]:
    """One nf_tables transaction that replaces every rule of the daemon's two chains::

        chain postrouting { meta oif <i> xt target NFQUEUE --queue-num <queue_num>   (for i in egress) }
        chain prerouting  { meta iif <i> xt target NFQUEUE --queue-num <queue_num>   (for i in ingress) }

    Only rules change, never chains: removing a base chain unregisters its hook, and the kernel then
    drops every packet queued in that namespace (nfqnl_nf_hook_drop). The transaction is atomic, so no
    packet sees a half-updated chain.

    Parameters
    ----------
    egress, ingress : iterable of int
        ifindexes whose departing (resp. arriving) packets are queued.
    ingress_all : bool
        Also queue every packet arriving on any interface but ``lo`` and those of
        :data:`PASS_INGRESS_GROUP` (``meta iif != 1 meta iifgroup != G``), and every packet leaving on an
        interface of :data:`HOLD_EGRESS_GROUP`: two rules that never change when ports come, go or move
        (each nf_tables transaction waits for an RCU grace period after the previous one, 10-20 ms; a
        handover would otherwise cost two).

    Returns
    -------
    (data, seqs) : tuple[bytes, set[int]]
        The batch and the sequence numbers whose acks to wait for.
    """
    fl = NLM_F_REQUEST | NLM_F_ACK
    # A DELRULE naming only table and chain deletes every rule of the chain.
    msgs = [nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_DELRULE, fl, seq + 1 + i, NFPROTO_INET, 0,
                  attr_str(NFTA_RULE_TABLE, table) + attr_str(NFTA_RULE_CHAIN, chain))
            for i, chain in enumerate((INGRESS_CHAIN, EGRESS_CHAIN))]
    for chain, meta_key, ifindexes in ((EGRESS_CHAIN, NFT_META_OIF, egress),
                                       (INGRESS_CHAIN, NFT_META_IIF, ingress)):
        for ifindex in sorted(set(ifindexes)):
            msgs.append(_queue_rule(table, queue_num, seq + 1 + len(msgs), chain, meta_key, NFT_CMP_EQ,
                                    ifindex))
    if ingress_all:
        msgs += _catch_all_rules(table, queue_num, seq + 1 + len(msgs))
    return _batch(seq, msgs), set(range(seq + 1, seq + 1 + len(msgs)))


def _catch_all_rules(table: str, queue_num: int, seq: int) -> list[bytes]:
    """The two rules of ``ingress_all``: queue every arrival but lo's and but those on an interface of
    :data:`PASS_INGRESS_GROUP`, and every departure on an interface of :data:`HOLD_EGRESS_GROUP`."""
    return [_queue_rule(table, queue_num, seq, INGRESS_CHAIN, NFT_META_IIF, NFT_CMP_NEQ, LOOPBACK_IFINDEX,
                        (NFT_META_IIFGROUP, NFT_CMP_NEQ, PASS_INGRESS_GROUP)),
            _queue_rule(table, queue_num, seq + 1, EGRESS_CHAIN, NFT_META_OIFGROUP, NFT_CMP_EQ,
                        HOLD_EGRESS_GROUP)]


def _queue_rule(table: str, queue_num: int, seq: int, chain: str, meta_key: int, cmp_op: int,
                ifindex: int, *more: tuple[int, int, int]) -> bytes:
    """NEWRULE ``meta <key> <==|!=> value [meta <key> <==|!=> value ...]  [meta mark set meta time]  xt
    target NFQUEUE --queue-num queue_num``, appended; the first condition's value is an ifindex (iif, oif) or
    a group; the mark is set on the egress chain only (the low 32 bits of CLOCK_REALTIME ns)."""
    conds = []
    for key, op, value in ((meta_key, cmp_op, ifindex), *more):
        conds += [_expr("meta", attr_be32(NFTA_META_KEY, key), attr_be32(NFTA_META_DREG, NFT_REG_1)),
                  _expr("cmp", attr_be32(NFTA_CMP_SREG, NFT_REG_1), attr_be32(NFTA_CMP_OP, op),
                        nested(NFTA_CMP_DATA, attr(NFTA_DATA_VALUE, struct.pack("=I", value))))]
    if chain == EGRESS_CHAIN:
        # a departure is stamped as it is queued: mark = CLOCK_REALTIME ns (meta time), its low 32 bits, so
        # that its hold counts from here, not from when the daemon reads it (nothing at tc sees it before)
        conds += [_expr("meta", attr_be32(NFTA_META_KEY, NFT_META_TIME_NS), attr_be32(NFTA_META_DREG, NFT_REG_1)),
                  _expr("meta", attr_be32(NFTA_META_KEY, NFT_META_MARK), attr_be32(NFTA_META_SREG, NFT_REG_1))]
    exprs = nested(
        NFTA_RULE_EXPRESSIONS,
        *conds,
        # The native "queue" expression (nft_queue) is often not built; the xtables NFQUEUE target
        # through nft_compat (what iptables-nft uses) is. xt_NFQ_info_v3: queuenum, queues_total,
        # flags (u16 each), padded to 8 bytes.
        _expr("target", attr_str(NFTA_TARGET_NAME, "NFQUEUE"), attr_be32(NFTA_TARGET_REV, 3),
              attr(NFTA_TARGET_INFO, struct.pack("=HHHxx", queue_num, 1, 0))),
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
    return nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE, flags, seq, NFPROTO_INET, 0,
                 attr_str(NFTA_RULE_TABLE, table) + attr_str(NFTA_RULE_CHAIN, chain) + exprs)
