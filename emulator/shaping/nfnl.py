"""A minimal raw nfnetlink client: nfnetlink_queue (bind, configure, read packet ids, verdicts) and the
few nf_tables messages that send a namespace's outgoing packets to that queue.

No libnetfilter_queue / libnftnl: messages are packed with :mod:`struct` from the kernel's UAPI layouts
(linux/netfilter/nfnetlink.h, nfnetlink_queue.h, nf_tables.h). Only what the delay daemon needs is here.
Pure functions build and parse bytes; :class:`QueueSocket` owns one socket.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

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
NFQA_IFINDEX_OUTDEV = 6
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
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
NFT_META_OIF = 5
NFT_REG_1 = 1
NFTA_CMP_SREG = 1
NFTA_CMP_OP = 2
NFTA_CMP_DATA = 3
NFT_CMP_NEQ = 1
NFTA_DATA_VALUE = 1
NFTA_TARGET_NAME = 1
NFTA_TARGET_REV = 2
NFTA_TARGET_INFO = 3
NF_INET_POST_ROUTING = 4
NF_IP_PRI_MANGLE = -150
LOOPBACK_IFINDEX = 1  # lo is the first device of every network namespace

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, packed by the caller)
_NLATTR = struct.Struct("=HH")
_VERDICT_MSG_LEN = 16 + 4 + 4 + 8  # nlmsghdr + nfgenmsg + nlattr + nfqnl_msg_verdict_hdr
_VERDICT_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


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


def attr_be16(atype: int, value: int) -> bytes:
    return attr(atype, struct.pack(">H", value))


def nfmsg(subsys: int, msg: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    """One nfnetlink message: nlmsghdr + nfgenmsg(family, v0, res_id big endian) + attributes."""
    payload = _NFGENMSG.pack(family, 0, socket.htons(res_id)) + body
    return _NLMSGHDR.pack(16 + len(payload), (subsys << 8) | msg, flags, seq, 0) + payload


# --------------------------------------------------------------------------- nfnetlink_queue


def queue_config(queue_num: int, seq: int, *, bind: bool | None = None, maxlen: int | None = None,
                 flags: int | None = None) -> bytes:
    """NFQNL_MSG_CONFIG: optionally bind/unbind, set copy mode META (no payload), queue length, flags."""
    body = b""
    if bind is not None:
        cmd = NFQNL_CFG_CMD_BIND if bind else NFQNL_CFG_CMD_UNBIND
        body += attr(NFQA_CFG_CMD, struct.pack(">BBH", cmd, 0, 0))
    else:
        body += attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
        if maxlen is not None:
            body += attr_be32(NFQA_CFG_QUEUE_MAXLEN, maxlen)
        if flags is not None:
            body += attr_be32(NFQA_CFG_FLAGS, flags) + attr_be32(NFQA_CFG_MASK, flags)
    return nfmsg(NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC,
                 queue_num, body)


def verdict(queue_num: int, packet_id: int, accept: bool) -> bytes:
    """NFQNL_MSG_VERDICT for one packet, no ack requested (errors still come back as NLMSG_ERROR)."""
    return _pack_verdict(queue_num, packet_id, NF_ACCEPT if accept else NF_DROP)


_VERDICT_HEAD = struct.Struct("=IHHIIBB")  # nlmsghdr + family, version
_VERDICT_TAIL = struct.Struct(">HHHII")  # res_id, nla_len, nla_type (we byteswap them), verdict, id


def _pack_verdict(queue_num: int, packet_id: int, code: int) -> bytes:
    head = _VERDICT_HEAD.pack(_VERDICT_MSG_LEN, _VERDICT_TYPE, NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0)
    # res_id is big endian; the nlattr header is host order, hence packed separately.
    return (head + struct.pack(">H", queue_num) + _NLATTR.pack(12, NFQA_VERDICT_HDR)
            + struct.pack(">II", code, packet_id))


def parse_messages(buf: bytes | memoryview, n: int) -> Iterator[tuple[int, int, int]]:
    """Walk the netlink messages in ``buf[:n]``.

    Yields ``(kind, a, b)``: for a queued packet ``(NFQNL_MSG_PACKET, packet_id, out_ifindex)``
    (``out_ifindex`` 0 if the kernel sent none); for an error/ack ``(NLMSG_ERROR, -errno or 0, seq)``.
    Other messages are skipped.
    """
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
            outdev = 0
            while pos + 4 <= end:
                alen, atype = unpack_attr(buf, pos)
                if alen < 4:
                    break
                atype &= 0x3FFF
                if atype == NFQA_PACKET_HDR:
                    packet_id = struct.unpack_from(">I", buf, pos + 4)[0]
                elif atype == NFQA_IFINDEX_OUTDEV:
                    outdev = struct.unpack_from(">I", buf, pos + 4)[0]
                pos += _align4(alen)
            if packet_id >= 0:
                yield (NFQNL_MSG_PACKET, packet_id, outdev)
        elif mtype == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, off + 16)[0]
            err_seq = struct.unpack_from("=I", buf, off + 16 + 4 + 8)[0] if length >= 36 else seq
            yield (NLMSG_ERROR, err, err_seq)
        off += _align4(length)


# --------------------------------------------------------------------------- nf_tables ruleset


def _expr(name: str, *data: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, attr_str(NFTA_EXPR_NAME, name), nested(NFTA_EXPR_DATA, *data))


def nft_queue_ruleset(table: str, queue_num: int, seq: int, install: bool = True) -> bytes:
    """One nf_tables transaction (batch) that (re)creates, or with ``install=False`` deletes, the table::

        table inet <table> {
            chain postrouting { type filter hook postrouting priority mangle; policy accept;
                                meta oif != lo xt target NFQUEUE --queue-num <queue_num> }
        }

    Adding the table, deleting it and adding it again in one batch makes installation idempotent.
    Every message asks for an ack so that errors are reported.
    """
    fl = NLM_F_REQUEST | NLM_F_ACK
    msgs = [nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE, fl | NLM_F_CREATE, seq + 1, NFPROTO_INET, 0,
                  attr_str(NFTA_TABLE_NAME, table)),
            nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE, fl, seq + 2, NFPROTO_INET, 0,
                  attr_str(NFTA_TABLE_NAME, table))]
    if install:
        msgs.append(nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE, fl | NLM_F_CREATE, seq + 3, NFPROTO_INET,
                          0, attr_str(NFTA_TABLE_NAME, table)))
        hook = nested(NFTA_CHAIN_HOOK, attr_be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING),
                      attr_be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_MANGLE))
        msgs.append(nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN, fl | NLM_F_CREATE, seq + 4, NFPROTO_INET,
                          0, attr_str(NFTA_CHAIN_TABLE, table) + attr_str(NFTA_CHAIN_NAME, "postrouting")
                          + hook + attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                          + attr_str(NFTA_CHAIN_TYPE, "filter")))
        exprs = nested(
            NFTA_RULE_EXPRESSIONS,
            _expr("meta", attr_be32(NFTA_META_KEY, NFT_META_OIF), attr_be32(NFTA_META_DREG, NFT_REG_1)),
            _expr("cmp", attr_be32(NFTA_CMP_SREG, NFT_REG_1), attr_be32(NFTA_CMP_OP, NFT_CMP_NEQ),
                  nested(NFTA_CMP_DATA, attr(NFTA_DATA_VALUE, struct.pack("=I", LOOPBACK_IFINDEX)))),
            # The native "queue" expression (nft_queue) is often not built; the xtables NFQUEUE target
            # through nft_compat (what iptables-nft uses) is. xt_NFQ_info_v3: queuenum, queues_total,
            # flags (u16 each), padded to 8 bytes.
            _expr("target", attr_str(NFTA_TARGET_NAME, "NFQUEUE"), attr_be32(NFTA_TARGET_REV, 3),
                  attr(NFTA_TARGET_INFO, struct.pack("=HHHxx", queue_num, 1, 0))),
        )
        msgs.append(nfmsg(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE, fl | NLM_F_CREATE | NLM_F_APPEND, seq + 5,
                          NFPROTO_INET, 0, attr_str(NFTA_RULE_TABLE, table)
                          + attr_str(NFTA_RULE_CHAIN, "postrouting") + exprs))
    begin = nfmsg(0, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
    end = nfmsg(0, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + len(msgs) + 1, socket.AF_UNSPEC,
                NFNL_SUBSYS_NFTABLES, b"")
    return begin + b"".join(msgs) + end


# --------------------------------------------------------------------------- sockets


def open_socket(rcvbuf_bytes: int = 8 << 20) -> socket.socket:
    """A NETLINK_NETFILTER socket in the calling thread's current network namespace."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf_bytes)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    s.bind((0, 0))
    return s


def request(sock: socket.socket, data: bytes, seqs: set[int], timeout_s: float = 5.0) -> None:
    """Send ``data`` and wait for the acks of every sequence number in ``seqs``; raise OSError on a nack.

    Only for set-up on a socket that carries no packets yet (packet messages would be discarded).
    """
    sock.sendall(data)
    pending = set(seqs)
    old = sock.gettimeout()
    sock.settimeout(timeout_s)
    try:
        buf = bytearray(65536)
        while pending:
            n = sock.recv_into(buf)
            for kind, a, b in parse_messages(buf, n):
                if kind != NLMSG_ERROR:
                    continue
                if a != 0:
                    raise OSError(-a, f"netlink request seq {b}: {os.strerror(-a)}")
                pending.discard(b)
    except TimeoutError:
        raise OSError(errno.ETIMEDOUT, f"no netlink ack for seq {sorted(pending)}") from None
    finally:
        sock.settimeout(old)
