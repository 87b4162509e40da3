/*
 * delayd.c - the compiled delay daemon of the userspace shaper: holds the queued packets of shaped ports
 * for their port's delay and drops a seeded, reproducible fraction of them. One shard of it: the Python
 * driver (emulator/shaping/delayd.py) starts several of these processes and gives each a share of the
 * namespaces, so that every core is used and each process stays under its open-file limit.
 *
 * The packet path, per shard, one thread (standby threads, op "watch", stand in for it while it cannot run):
 *   - one nfnetlink_queue socket per attached namespace, all in one epoll set; packets read in batches
 *     (recvmmsg), copy mode PACKET with a short range (the IP and L4 headers, for the loss decision);
 *   - per held port a FIFO of (packet id, due time) threaded through one preallocated pool of entries
 *     (no allocation on the packet path; a full pool drops the packet and counts it);
 *     due = max(arrival + delay, previous due of the port), so a port never reorders;
 *   - a binary heap of the ports by their first due time; one timerfd armed at the earliest due time
 *     (CLOCK_MONOTONIC, absolute, early by the measured time from expiry to the verdicts' hand-over);
 *   - verdicts collected per namespace and sent with one send(2) per namespace and pass (NF_ACCEPT; a
 *     packet whose arrival stamp came in the mark leaves with mark 0, what it had on arrival).
 * Lateness carried (--carry-fd, or a private table; --no-carry: off): a packet released L after its due
 * time (to the start of the verdicts' hand-over; negative when early, by the lead) leaves L in a table under
 * its identity (the loss decision's hash of addresses, protocol, ports and L4 bytes, and the IP ID: what no
 * hop changes; see carry_ident); the next hold of that packet, reached within CARRY_TTL_MS, in this shard or
 * another one sharing the table, holds it L + F less, F being the time from that release to this arrival up
 * to CARRY_FWD_US (the kernel's forwarding, which no link of the path has; more is a queue's, the network's):
 * never less than 0, a packet never leaves before it arrived, and what a hop's delay cannot absorb goes on
 * to the hop after; a negative L + F holds it that much longer. Each hold's due time so follows from the
 * last one's by the hop's delay, and the path's delay, what a user measures, is off only by the last hold's
 * lead and forwarding; each link's own delay is off by what it made up. A late wake-up of this process (the
 * host did not run it) costs the packet nothing unless it happens at the packet's last hold.
 * Loss: drop when hash(seed, port's link id, packet identity) < loss * 2^64, the identity being the
 * addresses, protocol, ports and the L4 bytes that tell a flow's packets apart (see packet_hash): the same
 * packet meets the same fate whatever the interleaving, and a retransmission draws again (a TCP one has a
 * new IP ID; an identical datagram sent again is counted as a repeat).
 *
 * The nf_tables rules and the queue configuration are built by the Python driver (emulator/shaping/nfnl.py)
 * and handed over as opaque netlink batches; this program sends them on the namespace's queue socket and
 * waits for their acks, holding and releasing packets meanwhile.
 *
 * Control: one request per line on the control socket (--ctl-fd, a socketpair end), one reply line each
 * ("ok ..." or "err <message>"). Paths and batches are hex encoded, so no quoting exists:
 *   ns <id> <hex path> <hex setup batch>            attach namespace <id> (a small integer chosen by the driver)
 *   nft <id> <hex batch>                             send a batch there and wait for its acks
 *   set <np> <nf> {<id> <ifindex> <ingress> <delay_ns> <loss_pct> <link_id>}*np {<id> <ifindex> <ingress>}*nf
 *   release <id> <hex batch before> <hex batch after> send "before" (rules out), release everything held
 *                                                    there, send "after" (table out), close the socket
 *   epoch <mark> <at_ns>                             route epoch: every packet accepted from the CLOCK_MONOTONIC
 *                                                    instant at_ns on (by its due time; a not-held one by the
 *                                                    time of its verdict) leaves with skb->mark = mark, so
 *                                                    that fwmark rules switch every namespace's route table
 *                                                    of this shard at one instant; at_ns 0: at once. One
 *                                                    epoch waits at a time: a new request replaces a waiting
 *                                                    one (one already due is taken first). mark 0: back to
 *                                                    leaving marks as they came (a stamp cleared to 0)
 *   watch <period_ns> <grace_ns>                     start the standby threads (once): one per CPU this
 *                                                    process may use, pinned there, each with a timer of its
 *                                                    own; see watch_thread
 *   stats <reset>                                    counters as key=value, lateness histogram as bin:count;
 *                                                    reset 1: then zero the maxima and the histogram
 *   close                                            remove every table (--exit-batch) and exit
 * It also exits (removing its tables) on EOF of the control socket, on SIGTERM and when its parent dies.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef NFNL_MSG_BATCH_BEGIN  /* linux/netfilter/nfnetlink.h has them; an older copy may not */
#define NFNL_MSG_BATCH_BEGIN NLMSG_MIN_TYPE
#define NFNL_MSG_BATCH_END (NLMSG_MIN_TYPE + 1)
#endif
#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif
#ifndef SO_SNDBUFFORCE
#define SO_SNDBUFFORCE 32
#endif

#define NIL UINT32_MAX
#define ENTRY_END 0x7FFFFFFFu     /* end of a port's FIFO in entry.next */
#define STAMPED_BIT 0x80000000u  /* in entry.next: the packet came with an arrival stamp (clear its mark) */
#define RECV_BATCH 64            /* messages per recvmmsg */
#define RECV_BUF 4096            /* bytes per message buffer: a queued packet is ~200 B with 64 B copied */
#define MAX_RECV_PER_WAKE 1024   /* packets read from one socket per pass before releasing is looked at */
#define VREC_MAX 16384           /* verdicts collected before they are sent */
#define VERDICTS_PER_SEND 2048   /* 40 B each: well under the socket's send buffer */
#define MAX_READ_LAG_US 2000000  /* an arrival stamp older than this is not ours: count from the read */
#define SERVE_EVERY_NS 100000   /* in a long control request, packets are served at least this often */
#define SERVE_CHECK_EVERY 64     /* entries of a request between two looks at the clock */
#define CTL_READ_MAX (1 << 20)   /* control bytes read per pass */
#define MAX_LEAD_NS 200000       /* never release more than 0.2 ms early (the tests rely on it) */
#define LEAD_QUANTILE_INV 8      /* the lead: the time to hand-over that 1 timer pass in 8 beats */
#define LEAD_STEP_NS 1000        /* its step up per pass slower than it (down: 7 x this per quicker one) */
#define LATE_BIN_NS 5000         /* lateness histogram: 5 us bins from -1 ms to +10 ms, then "later" */
#define LATE_LOW_NS 1000000
#define LATE_BINS 2200
#define EV_TIMER 0xFFFFFFF0u
#define EV_CTL 0xFFFFFFF1u
#define EV_SIG 0xFFFFFFF2u

struct entry {           /* one held packet, in its port's FIFO */
    uint64_t due_ns;
    uint64_t carry;      /* identity (low CARRY_IDENT_BITS) | lateness still owed from earlier holds, us (high bits) */
    uint32_t id;         /* nfqueue packet id */
    uint32_t next;       /* next entry index | STAMPED_BIT */
};

struct port {
    uint64_t delay_ns, loss_thr, link_id, last_due_ns;
    uint32_t head, tail; /* FIFO of entries (NIL when empty) */
    int32_t heap_pos;    /* index in the timer heap, -1 when empty */
    int32_t ns;          /* namespace id, -1: slot free */
    uint32_t key;        /* ifindex << 1 | ingress */
    bool loss_all;       /* 100 %: drop every packet */
    bool live;           /* in the lookup table; a forgotten port drains, then its slot is freed */
};

struct vrec { uint32_t id, next, mark; uint8_t accept, set_mark; };

struct ns {
    int fd;              /* -1: id unused */
    uint32_t vhead, vtail;  /* verdicts waiting (vrec indices) */
    bool dirty;
    int held;            /* packets held now */
    uint32_t ack_lo, ack_hi; int ack_pending, ack_err;  /* a set-up batch in flight */
};

/* control requests, timed by kind (a long one is time no packet is released, unless it releases itself) */
enum { OP_NS, OP_NFT, OP_RELEASE, OP_SET, OP_EPOCH, OP_STATS, OP_WATCH, N_OPS };
static const char *const op_names[N_OPS] = {"ns", "nft", "release", "set", "epoch", "stats", "watch"};

struct stats {
    uint64_t queued, accepted, dropped, overflow, unshaped, released, verdict_errors, stamped;
    uint64_t carried, made_up;        /* releases that left lateness behind; holds that made some up */
    int64_t made_up_ns;               /* lateness made up, summed */
    int64_t late_sum_ns, late_max_ns, read_lag_sum_ns, busy_max_ns, busy_cpu_ns;
    uint64_t hist[LATE_BINS + 1];
    uint64_t op_n[N_OPS]; int64_t op_ns[N_OPS], op_max_ns[N_OPS];  /* control requests: count, time, longest */
    uint64_t watch_passes, watch_released;   /* passes of the standby threads that released, and what */
};

static struct {
    uint64_t seed;
    uint16_t queue_num;
    int ctl, ep, tfd, sfd, own_ns;
    uint32_t epoch_mark, epoch_next;  /* the route epoch's mark now, and the one waiting for epoch_at_ns */
    uint64_t epoch_at_ns;             /* 0: none waiting */
    uint64_t epochs;                  /* epochs taken */
    int rt_prio;
    bool running, locked;
    uint64_t *carry; bool carry_shared;      /* the lateness table (CARRY_SLOTS words), NULL: off */
    struct ns *ns; int nns;                 /* by id */
    struct port *ports; int nports, ports_cap; int free_port;
    uint32_t *table; uint32_t table_mask;   /* open addressing: port index by (ns, key) */
    int32_t *heap; int heap_len;            /* port indices, ordered by their first entry's due time */
    struct entry *pool; uint32_t pool_cap, pool_bump, pool_free;
    struct vrec vrec[VREC_MAX]; uint32_t nvrec;
    uint64_t vdue[VREC_MAX]; uint32_t nvdue; /* due times of the releases in vrec, for their lateness */
    uint64_t vcarry[VREC_MAX];               /* and their entries' carry words */
    int dirty[VREC_MAX]; int ndirty;
    uint64_t armed_ns, lead_ns, pre_send_ns;
    uint32_t rt_low_now;  /* CLOCK_REALTIME ns, low 32 bits, read with the receive batch's `now` */
    struct stats st;
    char *ctlbuf; size_t ctllen, ctlcap, ctlscan;
    unsigned char *exit_batch; size_t exit_len;
    char err[512];
} D;

static char rbufs[RECV_BATCH][RECV_BUF];

/* Standby threads (op "watch"): the state above belongs to whichever thread holds `mu`, the main loop's
 * between its waits; `pub_head` is the earliest due time held (0: none), published under `mu`. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t pub_head;
static uint64_t watch_period_ns, watch_grace_ns;
#define WATCH_MIN_SLEEP_NS 200000
static int nwatch;

static inline void publish_head(void);
static void pass(const struct epoll_event *evs, int n, bool main_thread);
static char sendbuf[VERDICTS_PER_SEND * 48];

static inline uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "delayd: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(D.err, sizeof D.err, fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------------------ the loss decision */

/* splitmix64's finaliser: a bijective 64-bit mix, every input bit reaching every output bit */
static inline uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Hash of a packet's identity: IPv4 addresses, protocol, L4 ports and the bytes that tell the packets of one
 * flow apart (TCP sequence and ack numbers and IP ID; the first 8 bytes of a UDP payload; ICMP id and
 * sequence). The IP ID is left out but for TCP: this kernel numbers other datagrams from a keyed, time-
 * perturbed generator, so it differs between two runs of the same scenario, while a TCP flow is not
 * reproducible between runs anyway (random ISN) and its retransmissions differ from the original only by
 * IP ID (and time stamp). *repeatable is set when an identical packet may be sent again on purpose (all
 * but TCP segments with an IP ID): the caller then counts repeats, so that a resent packet draws again. Other packets (IPv6,
 * truncated) hash what was copied of them. */
static uint64_t packet_hash(uint64_t h, const unsigned char *p, int len, bool *repeatable)
{
    *repeatable = true;
    if (len >= 20 && (p[0] >> 4) == 4) {
        int hl = (p[0] & 15) * 4, proto = p[9];
        bool first_fragment = (be(p + 6, 2) & 0x1FFF) == 0;
        const unsigned char *l4 = p + hl;
        int l4len = len - hl;
        uint64_t ports = 0, extra = 0;
        if (first_fragment && hl >= 20) {
            if (proto == 6 && l4len >= 12) {            /* TCP: ports, seq, ack, IP ID */
                ports = be(l4, 4);
                extra = be(l4 + 4, 8);
                ports ^= be(p + 4, 2) << 32;
                /* a socket's segments carry its incrementing IP ID; a SYN-ACK or reset sent for a request
                 * socket carries ID 0 and is resent byte for byte (but for a time stamp): count repeats */
                *repeatable = be(p + 4, 2) == 0;
            } else if (proto == 17 && l4len >= 8) {     /* UDP: ports, first payload bytes */
                ports = be(l4, 4);
                extra = l4len >= 16 ? be(l4 + 8, 8) : be(l4 + 8, l4len - 8);
            } else if (proto == 1 && l4len >= 8) {      /* ICMP: type, code, id, sequence (no checksum) */
                ports = be(l4, 2);
                extra = be(l4 + 4, 4);
            }
        } else {
            ports = be(p + 4, 4);                       /* a later fragment: IP ID and offset */
        }
        h = mix64(h ^ be(p + 12, 8));                   /* saddr, daddr */
        h = mix64(h ^ ((uint64_t)proto << 48 | ports)); /* proto, ports (TCP: and IP ID) */
        return mix64(h ^ extra);
    }
    for (int i = 0; i + 8 <= len && i < 64; i += 8)
        h = mix64(h ^ be(p + i, 8));
    return h;
}

/* How often each recent identity of a lossy port was seen (direct mapped, no allocation): a repeat draws
 * again. Two runs that send the same packets see the same counts; a colliding identity (about one packet
 * in REPEAT_SLOTS / flows) restarts a count. */
#define REPEAT_SLOTS 65536
static struct { uint64_t tag; uint32_t count; } repeats[REPEAT_SLOTS];

static uint64_t loss_draw(uint64_t seed, uint64_t link_id, const unsigned char *p, int len)
{
    bool repeatable;
    uint64_t h = packet_hash(mix64(seed ^ mix64(link_id)), p, len, &repeatable);
    if (!repeatable)
        return h;
    uint32_t slot = (uint32_t)(h & (REPEAT_SLOTS - 1));
    if (repeats[slot].tag == h)
        repeats[slot].count++;
    else {
        repeats[slot].tag = h;
        repeats[slot].count = 0;
    }
    return mix64(h ^ repeats[slot].count);
}

/* ------------------------------------------------------------------ ports: lookup table and timer heap */

static inline uint64_t port_hkey(int ns, uint32_t key) { return mix64((uint64_t)ns << 32 | key); }

static int port_find(int ns, uint32_t key)
{
    if (!D.table)
        return -1;
    for (uint32_t i = port_hkey(ns, key) & D.table_mask;; i = (i + 1) & D.table_mask) {
        uint32_t pi = D.table[i];
        if (pi == NIL)
            return -1;
        if (D.ports[pi].ns == ns && D.ports[pi].key == key)
            return (int)pi;
    }
}

static void table_insert(uint32_t pi)
{
    uint32_t i = port_hkey(D.ports[pi].ns, D.ports[pi].key) & D.table_mask;
    while (D.table[i] != NIL)
        i = (i + 1) & D.table_mask;
    D.table[i] = pi;
}

static void table_grow(int live)
{
    uint32_t want = 64;
    while (want < (uint32_t)live * 2 + 2)
        want <<= 1;
    if (D.table && D.table_mask + 1 >= want)
        return;
    uint32_t *old = D.table, oldn = D.table ? D.table_mask + 1 : 0;
    D.table = malloc(sizeof *D.table * want);
    if (!D.table)
        die("out of memory");
    memset(D.table, 0xFF, sizeof *D.table * want);
    D.table_mask = want - 1;
    for (uint32_t i = 0; i < oldn; i++)
        if (old[i] != NIL)
            table_insert(old[i]);
    free(old);
}

static void table_remove(uint32_t pi)
{
    uint32_t i = port_hkey(D.ports[pi].ns, D.ports[pi].key) & D.table_mask;
    while (D.table[i] != pi)
        i = (i + 1) & D.table_mask;
    /* backward-shift deletion keeps linear probing correct without tombstones */
    for (uint32_t j = (i + 1) & D.table_mask; D.table[j] != NIL; j = (j + 1) & D.table_mask) {
        uint32_t home = port_hkey(D.ports[D.table[j]].ns, D.ports[D.table[j]].key) & D.table_mask;
        if (((j - home) & D.table_mask) >= ((j - i) & D.table_mask)) {
            D.table[i] = D.table[j];
            i = j;
        }
    }
    D.table[i] = NIL;
}

static inline uint64_t head_due(int32_t pi) { return D.pool[D.ports[pi].head].due_ns; }

static void heap_set(int pos, int32_t pi)
{
    D.heap[pos] = pi;
    D.ports[pi].heap_pos = pos;
}

static void heap_up(int pos)
{
    int32_t pi = D.heap[pos];
    uint64_t d = head_due(pi);
    while (pos > 0) {
        int parent = (pos - 1) / 2;
        if (head_due(D.heap[parent]) <= d)
            break;
        heap_set(pos, D.heap[parent]);
        pos = parent;
    }
    heap_set(pos, pi);
}

static void heap_down(int pos)
{
    int32_t pi = D.heap[pos];
    uint64_t d = head_due(pi);
    for (;;) {
        int c = 2 * pos + 1;
        if (c >= D.heap_len)
            break;
        if (c + 1 < D.heap_len && head_due(D.heap[c + 1]) < head_due(D.heap[c]))
            c++;
        if (head_due(D.heap[c]) >= d)
            break;
        heap_set(pos, D.heap[c]);
        pos = c;
    }
    heap_set(pos, pi);
}

static void heap_remove(int pos)
{
    int32_t pi = D.heap[pos];
    D.ports[pi].heap_pos = -1;
    D.heap_len--;
    if (pos == D.heap_len)
        return;
    heap_set(pos, D.heap[D.heap_len]);
    heap_up(pos);
    heap_down(D.ports[D.heap[pos]].heap_pos);
}

static void port_free(int32_t pi)
{
    D.ports[pi].ns = -1;
    D.ports[pi].head = D.free_port < 0 ? NIL : (uint32_t)D.free_port;  /* free list through head */
    D.free_port = pi;
}

static int32_t port_alloc(void)
{
    if (D.free_port >= 0) {
        int32_t pi = D.free_port;
        D.free_port = D.ports[pi].head == NIL ? -1 : (int32_t)D.ports[pi].head;
        return pi;
    }
    if (D.nports == D.ports_cap) {
        int cap = D.ports_cap ? D.ports_cap * 2 : 256;
        D.ports = realloc(D.ports, sizeof *D.ports * cap);
        D.heap = realloc(D.heap, sizeof *D.heap * cap);
        if (!D.ports || !D.heap)
            die("out of memory");
        D.ports_cap = cap;
    }
    return D.nports++;
}

/* ------------------------------------------------------------------ verdicts */

/* The route epoch's mark for a packet due (or, not held, handed back) at ``t``; takes a waiting epoch
 * whose instant has passed by the clock. */
static inline uint32_t epoch_mark_at(uint64_t t, uint64_t now)
{
    if (D.epoch_at_ns && now >= D.epoch_at_ns) {
        D.epoch_mark = D.epoch_next;
        D.epoch_at_ns = 0;
        D.epochs++;
    }
    return D.epoch_at_ns && t >= D.epoch_at_ns ? D.epoch_next : D.epoch_mark;
}

/* Queue a verdict; set_mark: the packet leaves with skb->mark = mark. */
static void add_verdict(int ns, uint32_t id, bool accept, bool set_mark, uint32_t mark)
{
    struct ns *n = &D.ns[ns];
    struct vrec *v = &D.vrec[D.nvrec];
    v->id = id;
    v->next = NIL;
    v->accept = accept;
    v->set_mark = set_mark;
    v->mark = mark;
    if (n->vhead == NIL)
        n->vhead = D.nvrec;
    else
        D.vrec[n->vtail].next = D.nvrec;
    n->vtail = D.nvrec++;
    if (!n->dirty) {
        n->dirty = true;
        D.dirty[D.ndirty++] = ns;
    }
}

/* ------------------------------------------------------------------ lateness carried to the next hold */

/* One 64-bit word per slot, read and written whole (atomic on every 64-bit CPU) by every shard that shares
 * the table: tag (the identity's bits above the slot's) << 40 | (lateness us + CARRY_EARLY_US) << 20 | the
 * release's start, us mod 2^20. A lookup takes the word (compare-and-exchange to 0), so two holds never both
 * make up one lateness. */
#define CARRY_SLOT_BITS 16
#define CARRY_SLOTS (1u << CARRY_SLOT_BITS)
#define CARRY_IDENT_BITS 40      /* slot 16 + tag 24: another packet matches one in 2^24 of occupied slots */
#define CARRY_MIN_NS 1000        /* lateness below this stays where it is */
#define CARRY_EARLY_US 256       /* lateness is stored from -CARRY_EARLY_US (released early, by the lead) */
#define CARRY_MAX_US (0xFFFFu - CARRY_EARLY_US)  /* ~65 ms: more than that is carried as that */
#define CARRY_TTL_MS 20          /* taken up only by a hold the packet reached within this of its release */
#define CARRY_FWD_US 50          /* of the time from a release to the next hold, this much at most is made up */
#define CARRY_HASH_SEED 0x6361727279ull  /* identity hash: the same in every shard and run */
#define CARRY_TABLE_BYTES ((size_t)CARRY_SLOTS * sizeof(uint64_t))

static inline uint64_t carry_us20(uint64_t t) { return (t / 1000ull) & 0xFFFFFull; }

/* late_ns: from the packet's due time (less what earlier holds left it) to the start of its release, negative
 * when released early */
static void carry_put(uint64_t ident, int64_t late_ns, uint64_t start)
{
    int64_t us = late_ns / 1000 + CARRY_EARLY_US;
    us = us < 0 ? 0 : us > (int64_t)(CARRY_MAX_US + CARRY_EARLY_US) ? (int64_t)(CARRY_MAX_US + CARRY_EARLY_US) : us;
    uint64_t tag = (ident >> CARRY_SLOT_BITS) & 0xFFFFFFull;
    __atomic_store_n(&D.carry[ident & (CARRY_SLOTS - 1)], tag << 40 | (uint64_t)us << 20 | carry_us20(start),
                     __ATOMIC_RELAXED);
}

/* Lateness owed by the packet with this identity that arrived at time `arrived` (its stamp, else when read),
 * ns: what its last release was late (negative: early, by the lead), plus the time from that release to this
 * arrival up to CARRY_FWD_US (the kernel's forwarding between two holds, which a path's predicted delay does
 * not have; a queue that held the packet longer, a link's rate, is the network's and stays); only from a
 * release at most CARRY_TTL_MS before. Negative: the packet is that much ahead of its path's delay. */
static int64_t carry_take(uint64_t ident, uint64_t arrived)
{
    uint64_t *slot = &D.carry[ident & (CARRY_SLOTS - 1)];
    uint64_t w = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (!w || w >> 40 != ((ident >> CARRY_SLOT_BITS) & 0xFFFFFFull))
        return 0;
    int64_t fwd_us = (int64_t)((carry_us20(arrived) - (w & 0xFFFFFull)) & 0xFFFFFull);
    if (fwd_us > CARRY_TTL_MS * 1000)
        return 0;
    if (!__atomic_compare_exchange_n(slot, &w, 0, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return 0;
    int64_t late_us = (int64_t)((w >> 20) & 0xFFFFull) - CARRY_EARLY_US;
    return (late_us + (fwd_us < CARRY_FWD_US ? fwd_us : CARRY_FWD_US)) * 1000;
}

/* The identity lateness is carried under: the loss decision's hash and the IPv4 ID, which every hop keeps and
 * which tells apart the packets of one flow whose first bytes are all alike (the outer packets of a VXLAN or
 * WireGuard tunnel: a constant header, ports from the inner flow). 0, nothing carried, for a packet that
 * cannot be told from the next one of its flow: IPv4 with ID 0 that is neither TCP (sequence numbers) nor
 * ICMP (identifier and sequence), and anything not IPv4. Handing one packet's lateness to another would
 * release that one early, below the path's delay. */
static uint64_t carry_ident(const unsigned char *p, int len)
{
    if (len < 20 || (p[0] >> 4) != 4)
        return 0;
    uint64_t ipid = be(p + 4, 2);
    if (!ipid && p[9] != 6 && p[9] != 1)
        return 0;
    bool repeatable;
    uint64_t h = mix64(packet_hash(CARRY_HASH_SEED, p, len, &repeatable) ^ ipid << 8 ^ 0xC0);
    h &= (1ull << CARRY_IDENT_BITS) - 1;
    return h ? h : 1;
}

static void account_lateness(uint64_t sent)
{
    for (uint32_t i = 0; i < D.nvdue; i++) {
        int64_t late = (int64_t)(sent - D.vdue[i]);
        int64_t b = (late + LATE_LOW_NS) / LATE_BIN_NS;
        D.st.hist[late + LATE_LOW_NS < 0 ? 0 : b < LATE_BINS ? b : LATE_BINS]++;
        D.st.late_sum_ns += late;
        if (late > D.st.late_max_ns)
            D.st.late_max_ns = late;
    }
    D.st.released += D.nvdue;
    D.nvdue = 0;
}

/* What each release of this pass owes its packet's next hold: the time from its due time to the start of the
 * hand-over (`start`; the kernel forwards a packet inside send(2); negative when released early, by the lead),
 * plus what earlier holds left that this one could not absorb; the next hold adds the forwarding (carry_take).
 * Measured on the overhead test's 8 traversals of 1 ms: RTT beyond 8 ms and the unshaped RTT -12 and -6 us
 * (the hops' forwarding made up, the last one's left), minimum 8.00-8.01 ms; before the forwarding was made
 * up, 74-104 us, and carrying the earliness alone (a longer next hold) 115-175 us. */
static void carry_releases(uint64_t start)
{
    for (uint32_t i = 0; i < D.nvdue; i++) {
        uint64_t ident = D.vcarry[i] & ((1ull << CARRY_IDENT_BITS) - 1);
        if (!ident)
            continue;
        int64_t late = (int64_t)(start - D.vdue[i]) + (int64_t)(D.vcarry[i] >> CARRY_IDENT_BITS) * 1000;
        carry_put(ident, late, start);  /* early too: the forwarding to the next hold may make it up */
        D.st.carried += late >= CARRY_MIN_NS;
    }
}

static void send_verdicts(void)
{
    if (D.carry && D.nvdue)
        carry_releases(now_ns());
    for (int k = 0; k < D.ndirty; k++) {
        struct ns *n = &D.ns[D.dirty[k]];
        n->dirty = false;
        size_t off = 0;
        int count = 0;
        for (uint32_t vi = n->vhead; vi != NIL; vi = D.vrec[vi].next) {
            struct vrec *v = &D.vrec[vi];
            struct nlmsghdr *nlh = nfq_nlmsg_put(sendbuf + off, NFQNL_MSG_VERDICT, D.queue_num);
            nfq_nlmsg_verdict_put(nlh, (int)v->id, v->accept ? NF_ACCEPT : NF_DROP);
            if (v->set_mark)
                nfq_nlmsg_verdict_put_mark(nlh, v->mark);
            off += NLMSG_ALIGN(nlh->nlmsg_len);
            if (v->accept)
                D.st.accepted++;
            if (++count == VERDICTS_PER_SEND || v->next == NIL) {
                if (n->fd >= 0 && send(n->fd, sendbuf, off, 0) < 0)
                    D.st.verdict_errors += count;
                off = 0;
                count = 0;
            }
        }
        n->vhead = n->vtail = NIL;
    }
    D.ndirty = 0;
    D.nvrec = 0;
    if (D.nvdue)
        account_lateness(now_ns());
}

/* Release (ACCEPT) the first entry of port pi; now: the clock of this pass. A packet that came stamped
 * leaves with the epoch's mark (0 without one: what it had before the stamp), another with the epoch's
 * mark if there is one, else as it came. */
static void release_head(int32_t pi, uint64_t now)
{
    struct port *p = &D.ports[pi];
    uint32_t ei = p->head;
    struct entry *e = &D.pool[ei];
    if (D.nvrec == VREC_MAX)
        send_verdicts();
    uint32_t mark = epoch_mark_at(e->due_ns, now);
    add_verdict(p->ns, e->id, true, mark || (e->next & STAMPED_BIT), mark);
    D.vcarry[D.nvdue] = e->carry;
    D.vdue[D.nvdue++] = e->due_ns;
    uint32_t nx = e->next & ~STAMPED_BIT;
    p->head = nx == ENTRY_END ? NIL : nx;
    if (p->head == NIL)
        p->tail = NIL;
    e->next = D.pool_free;
    D.pool_free = ei;
    D.ns[p->ns].held--;
}

/* Release what is due (up to lead_ns early), or with everything_of >= 0 all that namespace holds now. */
static void release_due(int everything_of)
{
    if (everything_of >= 0) {
        for (int32_t pi = 0; pi < D.nports; pi++) {
            if (D.ports[pi].ns != everything_of || D.ports[pi].heap_pos < 0)
                continue;
            uint64_t now = now_ns();
            while (D.ports[pi].head != NIL)
                release_head(pi, now);
            heap_remove(D.ports[pi].heap_pos);
            if (!D.ports[pi].live)
                port_free(pi);
        }
    } else {
        uint64_t now = now_ns(), due = now + D.lead_ns;
        while (D.heap_len && head_due(D.heap[0]) <= due) {
            int32_t pi = D.heap[0];
            while (D.ports[pi].head != NIL && D.pool[D.ports[pi].head].due_ns <= due)
                release_head(pi, now);
            if (D.ports[pi].head == NIL) {
                heap_remove(0);
                if (!D.ports[pi].live)
                    port_free(pi);
            } else {
                heap_down(0);
            }
        }
    }
    D.pre_send_ns = now_ns();
    send_verdicts();
}

static void arm_timer(void)
{
    uint64_t at = 0;
    if (D.heap_len) {
        uint64_t d = head_due(D.heap[0]);
        at = d > D.lead_ns + 1 ? d - D.lead_ns : 1;
    }
    if (at == D.armed_ns)
        return;
    struct itimerspec its = {{0, 0}, {(time_t)(at / 1000000000ull), (long)(at % 1000000000ull)}};
    if (timerfd_settime(D.tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die("timerfd_settime: %s", strerror(errno));
    D.armed_ns = at;
}

static inline void publish_head(void)
{
    atomic_store_explicit(&pub_head, D.heap_len ? head_due(D.heap[0]) : 0, memory_order_relaxed);
}

/* A standby thread, pinned to one CPU, with a timer of its own armed from that CPU: it wakes at the earliest
 * due time plus the grace (at most a period from now, so that a head that came since is seen) and, when
 * the main loop has not released by then and is not running, releases what is due itself. What it covers:
 * a CPU that stops running anything for milliseconds (on this project's development VM, with some
 * thousands of namespaces, one CPU at a time went without timer interrupts for 2-28 ms: the main loop's
 * timer, armed on that CPU, fired that late). The main loop is not pinned; one standby per CPU means one
 * is always elsewhere. */
static void *watch_thread(void *arg)
{
    int cpu = (int)(intptr_t)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (tfd < 0)
        return NULL;
    for (;;) {
        uint64_t now = now_ns(), head = atomic_load_explicit(&pub_head, memory_order_relaxed);
        /* never sooner than WATCH_MIN_SLEEP_NS: a main loop at work with the lock (a long request) or
         * stopped while holding it is waited for, not spun on */
        uint64_t at = now + watch_period_ns;
        if (head && head + watch_grace_ns < at)
            at = head + watch_grace_ns > now + WATCH_MIN_SLEEP_NS ? head + watch_grace_ns : now + WATCH_MIN_SLEEP_NS;
        struct itimerspec its = {{0, 0}, {(time_t)(at / 1000000000ull), (long)(at % 1000000000ull)}};
        uint64_t x;
        if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0 || read(tfd, &x, sizeof x) < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        if (pthread_mutex_trylock(&mu))
            continue;  /* the main loop is at work */
        /* packets the main loop has not read (woken, it waits for a CPU that runs nothing), or held ones
         * overdue: a pass here, on this CPU (the control socket and signals stay the main loop's) */
        struct epoll_event evs[64];
        int n = D.running ? epoll_wait(D.ep, evs, 64, 0) : 0;
        bool ns_ready = false;
        for (int i = 0; i < n; i++)
            ns_ready |= evs[i].data.u32 < (uint32_t)D.nns;
        if (D.running && (ns_ready || (D.heap_len && head_due(D.heap[0]) + watch_grace_ns <= now_ns()))) {
            uint64_t before = D.st.released;
            pass(evs, n, false);
            D.st.watch_passes++;
            D.st.watch_released += D.st.released - before;
            publish_head();
        }
        pthread_mutex_unlock(&mu);
    }
}

/* ------------------------------------------------------------------ the packet path */

static void on_packet(int nsid, const struct nlmsghdr *nlh, uint64_t now)
{
    const struct nlattr *a;
    uint32_t id = 0, indev = 0, outdev = 0, mark = 0;
    int hook = -1, plen = 0;
    const unsigned char *payload = NULL;
    bool have_id = false;
    mnl_attr_for_each(a, nlh, sizeof(struct nfgenmsg)) {
        switch (mnl_attr_get_type(a)) {
        case NFQA_PACKET_HDR: {
            const struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(a);
            id = ntohl(ph->packet_id);
            hook = ph->hook;
            have_id = true;
            break;
        }
        case NFQA_MARK: mark = ntohl(mnl_attr_get_u32(a)); break;
        case NFQA_IFINDEX_INDEV: indev = ntohl(mnl_attr_get_u32(a)); break;
        case NFQA_IFINDEX_OUTDEV: outdev = ntohl(mnl_attr_get_u32(a)); break;
        case NFQA_PAYLOAD:
            payload = mnl_attr_get_payload(a);
            plen = mnl_attr_get_payload_len(a);
            break;
        }
    }
    if (!have_id)
        return;
    D.st.queued++;
    uint32_t key = hook == NF_INET_PRE_ROUTING ? (indev << 1 | 1) : (outdev << 1);
    int pi = port_find(nsid, key);
    if (D.nvrec == VREC_MAX)
        send_verdicts();
    if (pi < 0) {
        D.st.unshaped++;
        uint32_t m = epoch_mark_at(now, now);
        add_verdict(nsid, id, true, m != 0, m);
        return;
    }
    struct port *p = &D.ports[pi];
    if (p->loss_all || (p->loss_thr && loss_draw(D.seed, p->link_id, payload, plen) < p->loss_thr)) {
        D.st.dropped++;
        add_verdict(nsid, id, false, false, 0);
        return;
    }
    /* An arrival held at ingress carries its arrival time (us, 32 bits) in the mark, stamped at tc ingress:
     * the delay counts from there, not from when this process got round to reading it. */
    uint64_t arrived = now;
    bool stamped = false;
    if (mark && (key & 1)) {
        uint64_t now_us = now / 1000;
        uint64_t ago_us = (now_us - mark) & 0xFFFFFFFFull;
        if (ago_us <= MAX_READ_LAG_US) {
            arrived = (now_us - ago_us) * 1000 + 500;  /* +500: the stamp was truncated */
            stamped = true;
            D.st.stamped++;
            D.st.read_lag_sum_ns += (int64_t)(now - arrived);
        }
    } else if (mark && hook == NF_INET_POST_ROUTING) {
        /* A departure is stamped by its queueing rule: the low 32 bits of CLOCK_REALTIME ns (nft's meta time;
         * there is no monotonic one), wrapping every 4.3 s: the time since then is read against the realtime
         * clock read with this batch's `now` (once per batch, not per packet), and taken from `now`. */
        uint64_t ago_ns = (uint32_t)(D.rt_low_now - mark);  /* both clocks read together with `now` */
        if (ago_ns <= (uint64_t)MAX_READ_LAG_US * 1000 && ago_ns <= now) {
            arrived = now - ago_ns;
            stamped = true;
            D.st.stamped++;
            D.st.read_lag_sum_ns += (int64_t)(now - arrived);
        }
    }
    uint32_t ei;
    if (D.pool_free != NIL) {
        ei = D.pool_free;
        D.pool_free = D.pool[ei].next;
    } else if (D.pool_bump < D.pool_cap) {
        ei = D.pool_bump++;
    } else {
        D.st.overflow++;
        D.st.dropped++;
        add_verdict(nsid, id, false, false, 0);
        return;
    }
    /* lateness an earlier hold left on this packet: made up here as far as this port's delay allows;
     * earliness (its last release went early, by the lead, and reached here sooner than that) held longer */
    uint64_t ident = 0, owed = 0, made_up = 0, extra = 0;
    if (D.carry && payload && (ident = carry_ident(payload, plen))) {
        int64_t o = carry_take(ident, arrived);
        if (o < 0) {
            extra = (uint64_t)-o;
        } else {
            owed = (uint64_t)o;
            made_up = owed < p->delay_ns ? owed : p->delay_ns;
            owed -= made_up;
        }
    }
    uint64_t due = arrived + p->delay_ns - made_up + extra;
    if (due < p->last_due_ns)
        due = p->last_due_ns;
    if (made_up) {
        uint64_t full = arrived + p->delay_ns;  /* what in-order release left of it */
        made_up = due < full ? full - due : 0;
        if (made_up) {
            D.st.made_up++;
            D.st.made_up_ns += (int64_t)made_up;
        }
    }
    p->last_due_ns = due;
    struct entry *e = &D.pool[ei];
    e->due_ns = due;
    e->carry = ident | (owed / 1000 > 0xFFFFFFull ? 0xFFFFFFull : owed / 1000) << CARRY_IDENT_BITS;
    e->id = id;
    e->next = stamped ? (ENTRY_END | STAMPED_BIT) : ENTRY_END;
    if (p->head == NIL) {
        p->head = p->tail = ei;
        heap_set(D.heap_len++, pi);
        heap_up(D.heap_len - 1);
    } else {
        struct entry *t = &D.pool[p->tail];
        t->next = (t->next & STAMPED_BIT) | ei;
        p->tail = ei;
    }
    D.ns[nsid].held++;
}

/* Handle the messages of one buffer: packets, and acks/errors (of a set-up batch or of verdicts). */
static void on_messages(int nsid, const char *buf, int len, uint64_t now)
{
    struct ns *n = &D.ns[nsid];
    const struct nlmsghdr *nlh = (const struct nlmsghdr *)buf;
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
        if (nlh->nlmsg_type == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) {
            on_packet(nsid, nlh, now);
        } else if (nlh->nlmsg_type == NLMSG_ERROR && nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
            const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);
            uint32_t seq = err->msg.nlmsg_seq;
            if (n->ack_pending && seq >= n->ack_lo && seq <= n->ack_hi) {
                n->ack_pending--;
                if (err->error && !n->ack_err)
                    n->ack_err = -err->error;
            } else if (err->error) {
                D.st.verdict_errors++;  /* e.g. a verdict for a packet whose device went away */
            }
        }
    }
}

static void receive(int nsid)
{
    static struct mmsghdr msgs[RECV_BATCH];
    static struct iovec iov[RECV_BATCH];
    int total = 0;
    while (total < MAX_RECV_PER_WAKE && D.ns[nsid].fd >= 0) {
        for (int i = 0; i < RECV_BATCH; i++) {
            iov[i].iov_base = rbufs[i];
            iov[i].iov_len = RECV_BUF;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(D.ns[nsid].fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0)
            return;
        uint64_t now = now_ns();
        D.rt_low_now = (uint32_t)realtime_ns();  /* what departures' stamps are read against (on_packet) */
        /* Reading must not starve releasing: under a flood the socket never drains, and every packet held
         * would be released late by as long as reading went on. Stop after this batch once something is due. */
        bool due_break = D.heap_len && head_due(D.heap[0]) <= now + D.lead_ns;
        for (int i = 0; i < got; i++)
            on_messages(nsid, rbufs[i], (int)msgs[i].msg_len, now);
        total += got;
        if (due_break || got < RECV_BATCH)
            return;
    }
}

/* ------------------------------------------------------------------ namespaces and set-up batches */

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode hex text in place; returns the byte count, -1 on bad input. */
static long unhex(char *s)
{
    size_t n = strlen(s);
    if (n % 2)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        s[i] = (char)(hi << 4 | lo);
    }
    s[n / 2] = 0;
    return (long)(n / 2);
}

/* Send a netlink batch on a namespace's queue socket and wait (up to timeout_ms) for the ack of every
 * message in it that asks for one, holding and releasing packets meanwhile. 0, or -1 with D.err set. */
static int send_batch(int nsid, const unsigned char *data, size_t len, int timeout_ms)
{
    struct ns *n = &D.ns[nsid];
    uint32_t lo = UINT32_MAX, hi = 0;
    int want = 0;
    size_t off = 0;
    while (off + sizeof(struct nlmsghdr) <= len) {
        const struct nlmsghdr *h = (const struct nlmsghdr *)(data + off);
        if (h->nlmsg_len < sizeof *h || off + h->nlmsg_len > len)
            return fail("malformed batch");
        if (h->nlmsg_flags & NLM_F_ACK) {
            want++;
            if (h->nlmsg_seq < lo) lo = h->nlmsg_seq;
            if (h->nlmsg_seq > hi) hi = h->nlmsg_seq;
        }
        off += NLMSG_ALIGN(h->nlmsg_len);
    }
    n->ack_lo = lo;
    n->ack_hi = hi;
    n->ack_pending = want;
    n->ack_err = 0;
    /* One send per nf_tables transaction (BATCH_BEGIN .. BATCH_END) and one for each run of plain messages
     * (queue configuration): nfnetlink treats a send as a transaction only when it starts with BATCH_BEGIN. */
    off = 0;
    while (off < len) {
        size_t end = off;
        bool in_batch = ((const struct nlmsghdr *)(data + off))->nlmsg_type == NFNL_MSG_BATCH_BEGIN;
        while (end < len) {
            const struct nlmsghdr *h = (const struct nlmsghdr *)(data + end);
            if (end > off && !in_batch && h->nlmsg_type == NFNL_MSG_BATCH_BEGIN)
                break;
            end += NLMSG_ALIGN(h->nlmsg_len);
            if (in_batch && h->nlmsg_type == NFNL_MSG_BATCH_END)
                break;
        }
        if (end > len)
            end = len;
        if (send(n->fd, data + off, end - off, 0) < 0) {
            n->ack_pending = 0;
            return fail("send: %s", strerror(errno));
        }
        off = end;
    }
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (n->ack_pending) {
        uint64_t t = now_ns();
        if (t >= deadline) {
            n->ack_pending = 0;
            return fail("no ack from the kernel");
        }
        int wait_ms = (int)((deadline - t) / 1000000ull) + 1;
        if (D.heap_len) {
            uint64_t d = head_due(D.heap[0]);
            int until_due = d <= t ? 0 : (int)((d - t) / 1000000ull);
            if (until_due < wait_ms)
                wait_ms = until_due;
        }
        struct pollfd pfd = {n->fd, POLLIN, 0};
        int r = poll(&pfd, 1, wait_ms);
        if (r > 0)
            receive(nsid);
        if (D.heap_len && head_due(D.heap[0]) <= now_ns() + D.lead_ns)
            release_due(-1);
    }
    if (n->ack_err)
        return fail("%s", strerror(n->ack_err));
    return 0;
}

static int ns_attach(int nsid, const char *path, const unsigned char *setup, size_t setup_len)
{
    if (nsid < 0 || nsid > 1 << 24)
        return fail("bad namespace id %d", nsid);
    if (nsid >= D.nns) {
        int cap = nsid + 1 > D.nns * 2 ? nsid + 1 : D.nns * 2;
        D.ns = realloc(D.ns, sizeof *D.ns * cap);
        if (!D.ns)
            die("out of memory");
        for (int i = D.nns; i < cap; i++)
            D.ns[i] = (struct ns){.fd = -1, .vhead = NIL, .vtail = NIL};
        D.nns = cap;
    }
    if (D.ns[nsid].fd >= 0)
        return fail("namespace id %d in use", nsid);
    int nsfd = open(path, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0)
        return fail("%s: %s", path, strerror(errno));
    if (setns(nsfd, CLONE_NEWNET) < 0) {
        int e = errno;
        close(nsfd);
        return fail("setns %s: %s", path, strerror(e));
    }
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER);
    int e = errno;
    if (setns(D.own_ns, CLONE_NEWNET) < 0)
        die("setns back: %s", strerror(errno));
    close(nsfd);
    if (fd < 0)
        return fail("socket in %s: %s", path, strerror(e));
    int rcv = 8 << 20, snd = 4 << 20, one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &snd, sizeof snd) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        e = errno;
        close(fd);
        return fail("bind in %s: %s", path, strerror(e));
    }
    D.ns[nsid] = (struct ns){.fd = fd, .vhead = NIL, .vtail = NIL};
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)nsid};
    if (epoll_ctl(D.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    /* The queue is bound and configured before the batch's rules (if any) can queue a packet. */
    if (send_batch(nsid, setup, setup_len, 5000) < 0) {
        char why[sizeof D.err];
        snprintf(why, sizeof why, "set-up in %.200s: %.250s", path, D.err);
        epoll_ctl(D.ep, EPOLL_CTL_DEL, fd, NULL);
        release_due(nsid);
        close(fd);
        D.ns[nsid].fd = -1;
        return fail("%s", why);
    }
    return 0;
}

static void ns_close(int nsid)
{
    struct ns *n = &D.ns[nsid];
    for (int32_t pi = 0; pi < D.nports; pi++) {
        if (D.ports[pi].ns == nsid && D.ports[pi].live) {
            table_remove(pi);
            D.ports[pi].live = false;
            if (D.ports[pi].heap_pos < 0)
                port_free(pi);
        }
    }
    release_due(nsid);  /* frees the drained ports too */
    epoll_ctl(D.ep, EPOLL_CTL_DEL, n->fd, NULL);
    close(n->fd);
    n->fd = -1;
}

/* ------------------------------------------------------------------ control */

static char *tok(char **s)
{
    char *p = *s;
    while (*p == ' ')
        p++;
    if (!*p)
        return NULL;
    char *start = p;
    while (*p && *p != ' ')
        p++;
    if (*p)
        *p++ = 0;
    *s = p;
    return start;
}

static bool tok_u64(char **s, uint64_t *out)
{
    char *t = tok(s), *end;
    if (!t)
        return false;
    errno = 0;
    *out = strtoull(t, &end, 0);
    return !errno && !*end && t[0] != '-';
}

static bool ns_ok(uint64_t id) { return id < (uint64_t)D.nns && D.ns[id].fd >= 0; }

struct setport { uint64_t ns, ifindex, ingress, delay_ns, link_id; double loss_pct; };

/* The packet path's work between the parts of a long control request, as a standby pass does it: what is
 * readable is read and what is due released, at most every SERVE_EVERY_NS. The main loop holds the lock
 * while it handles a request, so the standby threads cannot stand in: every packet of the shard due
 * meanwhile left late by up to the whole request (a "set" of 100,000 ports: 15-25 ms here; the access
 * example's longest "set" took 9.6 ms, most take 0.1 ms). */
static void serve_between(void)
{
    static uint64_t served_ns;
    uint64_t t = now_ns();
    if (t - served_ns < SERVE_EVERY_NS)
        return;
    served_ns = t;
    struct epoll_event evs[64];
    int n = D.running ? epoll_wait(D.ep, evs, 64, 0) : 0;
    pass(evs, n < 0 ? 0 : n, false);
    publish_head();
}

static int op_set(char *s)
{
    uint64_t np, nf;
    if (!tok_u64(&s, &np) || !tok_u64(&s, &nf) || np > 1 << 24 || nf > 1 << 24)
        return fail("set: bad counts");
    struct setport *sp = calloc(np + nf + 1, sizeof *sp);
    if (!sp)
        die("out of memory");
    int rc = 0, fresh = 0;  /* ports this request makes: what the table must grow by */
    /* every entry is checked before any is applied, so a bad request changes nothing */
    for (uint64_t i = 0; i < np + nf && !rc; i++) {
        if (i % SERVE_CHECK_EVERY == SERVE_CHECK_EVERY - 1)
            serve_between();
        struct setport *q = &sp[i];
        if (!tok_u64(&s, &q->ns) || !tok_u64(&s, &q->ifindex) || !tok_u64(&s, &q->ingress))
            rc = fail("set: entry %" PRIu64 " malformed", i);
        else if (q->ifindex < 1 || q->ifindex > 0x7FFFFFFF || q->ingress > 1)
            rc = fail("set: entry %" PRIu64 ": bad ifindex or ingress", i);
        else if (i < np) {
            char *t, *end;
            if (!tok_u64(&s, &q->delay_ns) || !(t = tok(&s)) || !tok_u64(&s, &q->link_id))
                rc = fail("set: entry %" PRIu64 " malformed", i);
            else if (q->loss_pct = strtod(t, &end), *end || !(q->loss_pct >= 0 && q->loss_pct <= 100))
                rc = fail("set: entry %" PRIu64 ": loss %s not in [0, 100] %%", i, t);
            else if (!ns_ok(q->ns))
                rc = fail("set: namespace %" PRIu64 " not attached", q->ns);
            else
                fresh += port_find((int)q->ns, (uint32_t)(q->ifindex << 1 | q->ingress)) < 0;
        }
    }
    if (!rc) {
        for (uint64_t i = np; i < np + nf; i++) {  /* forget first */
            if (!ns_ok(sp[i].ns))
                continue;  /* a released namespace has nothing left to forget */
            int pi = port_find((int)sp[i].ns, (uint32_t)(sp[i].ifindex << 1 | sp[i].ingress));
            if (pi < 0)
                continue;
            table_remove(pi);
            D.ports[pi].live = false;
            if (D.ports[pi].heap_pos < 0)
                port_free(pi);
        }
        int live = 0;
        for (int i = 0; i < D.nports; i++)
            live += D.ports[i].ns >= 0 && D.ports[i].live;
        table_grow(live + fresh);  /* (a port given twice is counted twice: room to spare) */
        for (uint64_t i = 0; i < np; i++) {
            if (i % SERVE_CHECK_EVERY == SERVE_CHECK_EVERY - 1)
                serve_between();  /* between whole entries: a packet meets its port's old shape or its new one */
            struct setport *q = &sp[i];
            uint32_t key = (uint32_t)(q->ifindex << 1 | q->ingress);
            int pi = port_find((int)q->ns, key);
            if (pi < 0) {
                pi = port_alloc();
                D.ports[pi] = (struct port){.head = NIL, .tail = NIL, .heap_pos = -1, .ns = (int32_t)q->ns,
                                            .key = key, .live = true};
                table_insert((uint32_t)pi);
            }
            struct port *p = &D.ports[pi];
            p->delay_ns = q->delay_ns;
            p->link_id = q->link_id;
            p->loss_all = q->loss_pct >= 100.0;
            /* loss as a fraction of 2^64: a hash below it drops */
            p->loss_thr = p->loss_all ? UINT64_MAX : (uint64_t)(q->loss_pct / 100.0 * 18446744073709551616.0);
        }
    }
    free(sp);
    return rc;
}

static int op_epoch(char *s)
{
    uint64_t mark, at;
    if (!tok_u64(&s, &mark) || !tok_u64(&s, &at) || mark > UINT32_MAX)
        return fail("epoch: malformed request (want: epoch <mark 0..2^32-1> <at_ns>)");
    uint64_t now = now_ns();
    epoch_mark_at(now, now);  /* one waiting and due by now is taken first */
    if (at <= now) {
        D.epoch_mark = (uint32_t)mark;
        D.epoch_at_ns = 0;
        D.epochs++;
    } else {
        D.epoch_next = (uint32_t)mark;
        D.epoch_at_ns = at;
    }
    return 0;
}

/* watch <period_ns> <grace_ns>: start one standby thread per CPU this process may run on (once). */
static int op_watch(char *s)
{
    uint64_t period, grace;
    if (!tok_u64(&s, &period) || !tok_u64(&s, &grace) || period < 100000 || period > 1000000000ull
        || grace > 1000000000ull)
        return fail("watch: malformed request (want: watch <period_ns 1e5..1e9> <grace_ns 0..1e9>)");
    if (nwatch)
        return 0;
    watch_period_ns = period;
    watch_grace_ns = grace;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return fail("watch: sched_getaffinity: %s", strerror(errno));
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set))
            continue;
        pthread_t t;
        int e = pthread_create(&t, NULL, watch_thread, (void *)(intptr_t)cpu);
        if (e)
            return fail("watch: pthread_create: %s", strerror(e));
        pthread_detach(t);
        nwatch++;
    }
    return 0;
}

static void reply(const char *fmt, ...)
{
    static char out[1 << 16];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof out - 2)
        n = sizeof out - 2;
    out[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(D.ctl, out + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {D.ctl, POLLOUT, 0};
                poll(&pfd, 1, 1000);
                continue;
            }
            D.running = false;
            return;
        }
        off += w;
    }
}

static void op_stats(char *s)
{
    uint64_t reset = 0;
    tok_u64(&s, &reset);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int nns = 0, held_if = 0, held = 0;
    for (int i = 0; i < D.nns; i++) {
        nns += D.ns[i].fd >= 0;
        held += D.ns[i].fd >= 0 ? D.ns[i].held : 0;
    }
    for (int i = 0; i < D.nports; i++)
        held_if += D.ports[i].ns >= 0 && D.ports[i].live;
    /* the histogram, sparse: bin:count pairs */
    static char hist[LATE_BINS * 24];
    size_t off = 0;
    hist[0] = 0;
    for (int b = 0; b <= LATE_BINS; b++)
        if (D.st.hist[b])
            off += snprintf(hist + off, sizeof hist - off, "%s%d:%" PRIu64, off ? "," : "", b, D.st.hist[b]);
    static char ops[N_OPS * 80];
    size_t ooff = 0;
    ops[0] = 0;
    for (int k = 0; k < N_OPS; k++)
        ooff += snprintf(ops + ooff, sizeof ops - ooff, "%s%s:%" PRIu64 ":%" PRId64 ":%" PRId64, k ? "," : "",
                         op_names[k], D.st.op_n[k], D.st.op_ns[k], D.st.op_max_ns[k]);
    reply("ok queued=%" PRIu64 " verdicts=%" PRIu64 " dropped=%" PRIu64 " overflow=%" PRIu64
          " unshaped=%" PRIu64 " held=%d verdict_errors=%" PRIu64 " released=%" PRIu64
          " late_sum_ns=%" PRId64 " late_max_ns=%" PRId64 " busy_max_ns=%" PRId64 " busy_cpu_ns=%" PRId64
          " lead_ns=%" PRIu64 " stamped=%" PRIu64 " read_lag_sum_ns=%" PRId64 " namespaces=%d"
          " held_interfaces=%d cpu_ns=%" PRIu64 " rt_priority=%d pool=%u locked=%d epoch_mark=%" PRIu32
          " epochs=%" PRIu64 " carry=%d carried=%" PRIu64 " made_up=%" PRIu64 " made_up_ns=%" PRId64
          " watch=%d watch_passes=%" PRIu64 " watch_released=%" PRIu64 " ops=%s hist=%s",
          D.st.queued, D.st.accepted, D.st.dropped, D.st.overflow, D.st.unshaped, held,
          D.st.verdict_errors, D.st.released, D.st.late_sum_ns, D.st.late_max_ns, D.st.busy_max_ns,
          D.st.busy_cpu_ns, D.lead_ns, D.st.stamped, D.st.read_lag_sum_ns, nns, held_if,
          (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull
              + (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull,
          D.rt_prio, D.pool_cap, D.locked, D.epoch_mark, D.epochs, D.carry ? (D.carry_shared ? 2 : 1) : 0,
          D.st.carried, D.st.made_up, D.st.made_up_ns, nwatch, D.st.watch_passes, D.st.watch_released, ops,
          off ? hist : "-");
    if (reset) {  /* measure one interval: maxima and histogram start again (the sums do not) */
        D.st.late_max_ns = D.st.busy_max_ns = D.st.busy_cpu_ns = 0;
        memset(D.st.hist, 0, sizeof D.st.hist);
        memset(D.st.op_max_ns, 0, sizeof D.st.op_max_ns);
    }
}

static void handle(char *line)
{
    char *s = line, *op = tok(&s);
    int rc = 0;
    if (!op) {
        reply("err empty request");
        return;
    }
    if (!strcmp(op, "ns") || !strcmp(op, "nft") || !strcmp(op, "release")) {
        uint64_t id;
        char *a = NULL, *b = NULL, *c = NULL;
        long la = 0, lb = 0, lc = 0;
        if (!tok_u64(&s, &id) || id > 1 << 24 || !(a = tok(&s)) || (la = unhex(a)) < 0)
            rc = fail("%s: malformed request", op);
        else if (!strcmp(op, "ns")) {
            if (!(b = tok(&s)) || (lb = unhex(b)) <= 0)
                rc = fail("ns: malformed set-up batch");
            else
                rc = ns_attach((int)id, a, (unsigned char *)b, (size_t)lb);
        } else if (!ns_ok(id)) {
            rc = fail("%s: namespace %" PRIu64 " not attached", op, id);
        } else if (!strcmp(op, "nft")) {
            rc = la ? send_batch((int)id, (unsigned char *)a, (size_t)la, 5000) : 0;
        } else {
            /* rules out first (no new packets), then what is held goes, then the table: deleting its
             * chains would make the kernel drop whatever is still queued in the namespace */
            if (!(c = tok(&s)) || (lc = unhex(c)) < 0)
                rc = fail("release: malformed request");
            int rc1 = rc || !la ? 0 : send_batch((int)id, (unsigned char *)a, (size_t)la, 2000);
            if (!rc) {
                char why[sizeof D.err] = "";
                if (rc1)
                    snprintf(why, sizeof why, "%s", D.err);
                for (int32_t pi = 0; pi < D.nports; pi++)
                    if (D.ports[pi].ns == (int)id && D.ports[pi].live) {
                        table_remove(pi);
                        D.ports[pi].live = false;
                        if (D.ports[pi].heap_pos < 0)
                            port_free(pi);
                    }
                release_due((int)id);
                int rc2 = lc ? send_batch((int)id, (unsigned char *)c, (size_t)lc, 2000) : 0;
                ns_close((int)id);
                if (rc1)
                    rc = fail("removing rules: %s", why);
                else if (rc2)
                    rc = fail("removing table: %s", D.err);
            }
        }
    } else if (!strcmp(op, "set")) {
        rc = op_set(s);
    } else if (!strcmp(op, "epoch")) {
        rc = op_epoch(s);
    } else if (!strcmp(op, "watch")) {
        rc = op_watch(s);
    } else if (!strcmp(op, "stats")) {
        op_stats(s);
        return;
    } else if (!strcmp(op, "close")) {
        D.running = false;
        return;  /* the reply is the exit */
    } else {
        rc = fail("unknown op %s", op);
    }
    if (rc)
        reply("err %s", D.err);
    else
        reply("ok");
}

/* handle() timed by the request's kind */
static void handle_timed(char *line)
{
    size_t w = strcspn(line, " ");
    int k = 0;
    while (k < N_OPS && !(strlen(op_names[k]) == w && !strncmp(line, op_names[k], w)))
        k++;
    uint64_t t0 = now_ns();
    handle(line);
    if (k < N_OPS) {
        int64_t dt = (int64_t)(now_ns() - t0);
        D.st.op_n[k]++;
        D.st.op_ns[k] += dt;
        if (dt > D.st.op_max_ns[k])
            D.st.op_max_ns[k] = dt;
    }
}

/* Requests read from the control socket and handled. At most CTL_READ_MAX bytes are read per call (the
 * socket stays readable for the next pass: a request of some MB arrives in pieces, and the packets due
 * meanwhile are served between them), and the search for a request's end resumes where the last call
 * left it (it started from the buffer's start at every piece). */
static void control(void)
{
    size_t got = 0;
    while (got < CTL_READ_MAX) {
        if (D.ctlcap - D.ctllen < 65536) {
            D.ctlcap = D.ctlcap ? D.ctlcap * 2 : 1 << 20;
            D.ctlbuf = realloc(D.ctlbuf, D.ctlcap);
            if (!D.ctlbuf)
                die("out of memory");
        }
        ssize_t n = read(D.ctl, D.ctlbuf + D.ctllen, D.ctlcap - D.ctllen - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {  /* the driver went away */
            D.running = false;
            break;
        }
        D.ctllen += (size_t)n;
        got += (size_t)n;
    }
    size_t start = 0;
    while (D.ctlscan < D.ctllen && D.running) {
        char *nl = memchr(D.ctlbuf + D.ctlscan, '\n', D.ctllen - D.ctlscan);
        if (!nl) {
            D.ctlscan = D.ctllen;
            break;
        }
        *nl = 0;
        handle_timed(D.ctlbuf + start);
        start = D.ctlscan = (size_t)(nl - D.ctlbuf) + 1;
        serve_between();
    }
    memmove(D.ctlbuf, D.ctlbuf + start, D.ctllen - start);
    D.ctllen -= start;
    D.ctlscan -= start;
}

/* ------------------------------------------------------------------ main loop and shutdown */

/* One pass over the ready events: packets read, what is due released, the timer armed again. The main
 * loop's pass also serves the control socket and signals, and learns the lead from its timer's expiries. */
static void pass(const struct epoll_event *evs, int n, bool main_thread)
{
    uint64_t t0 = now_ns(), c0 = cpu_ns(), fired = 0;
    for (int i = 0; i < n; i++) {
        uint32_t tag = evs[i].data.u32;
        if (tag == EV_TIMER) {
            uint64_t x;
            if (read(D.tfd, &x, sizeof x) == sizeof x)
                fired = D.armed_ns;
            D.armed_ns = 0;
        } else if (tag == EV_CTL) {
            if (main_thread)
                control();
        } else if (tag == EV_SIG) {
            struct signalfd_siginfo si;
            if (main_thread && read(D.sfd, &si, sizeof si) > 0)
                D.running = false;
        } else if (tag < (uint32_t)D.nns && D.ns[tag].fd >= 0) {
            receive((int)tag);
        }
    }
    release_due(-1);
    arm_timer();
    uint64_t t1 = now_ns();
    if (fired && main_thread) {
        /* A low quantile (1/LEAD_QUANTILE_INV) of the time from the timer's expiry to the start of the
         * verdicts' hand-over to the kernel (wake-up and this loop's work), bounded to [0, MAX_LEAD_NS]: a
         * packet is handed back when due and then forwarded, as after netem's dequeue. Counting the
         * hand-over too (the kernel forwards each packet inside send(2)) released packets early: ping over
         * 6 traversals of 1 ms came back 124-237 us early (3 runs). A mean (it was an EWMA) follows the
         * slow passes: with bulk TCP through the same daemon it rose to 80-120 us, and a quick wake-up then
         * released a ping that much early (2 holds of 1 ms: RTT 1.95 ms, 1.88 ms in CI). Tracked by steps
         * (down LEAD_STEP_NS x (q-1), up LEAD_STEP_NS) it settles where 1 pass in LEAD_QUANTILE_INV is
         * quicker: a release is early only by what its pass beat that by. */
        int64_t err = (int64_t)(D.pre_send_ns - fired), lead = (int64_t)D.lead_ns;
        lead += err < lead ? -(int64_t)LEAD_STEP_NS * (LEAD_QUANTILE_INV - 1) : (int64_t)LEAD_STEP_NS;
        D.lead_ns = (uint64_t)(lead < 0 ? 0 : lead > MAX_LEAD_NS ? MAX_LEAD_NS : lead);
    }
    /* lateness beyond this figure is time the daemon was not on a CPU, not work it did */
    if ((int64_t)(t1 - t0) > D.st.busy_max_ns) {
        D.st.busy_max_ns = (int64_t)(t1 - t0);
        D.st.busy_cpu_ns = (int64_t)(cpu_ns() - c0);
    }
}

static void run(void)
{
    struct epoll_event evs[256];
    pthread_mutex_lock(&mu);  /* held but in epoll_wait, and to the end: shutdown is the main thread's */
    while (D.running) {
        int timeout = D.heap_len && head_due(D.heap[0]) <= now_ns() + D.lead_ns ? 0 : -1;
        publish_head();
        pthread_mutex_unlock(&mu);
        int n = epoll_wait(D.ep, evs, 256, timeout);
        pthread_mutex_lock(&mu);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        pass(evs, n, true);
    }
}

/* Release everything held and delete every table: the exit batch sent on each namespace's own queue socket
 * (no setns), all first, then the acks collected; closing a socket unbinds its queue. */
static void shutdown_all(void)
{
    for (int i = 0; i < D.nns; i++)
        if (D.ns[i].fd >= 0)
            release_due(i);
    for (int i = 0; i < D.nns; i++) {
        D.ns[i].ack_pending = 0;
        if (D.ns[i].fd < 0 || !D.exit_len)
            continue;
        int fl = fcntl(D.ns[i].fd, F_GETFL);
        fcntl(D.ns[i].fd, F_SETFL, fl & ~O_NONBLOCK);
        /* a failed send: the namespace is already gone with its table, no ack to wait for */
        D.ns[i].ack_pending = send(D.ns[i].fd, D.exit_batch, D.exit_len, 0) >= 0;
    }
    for (int i = 0; i < D.nns; i++) {
        if (D.ns[i].fd < 0)
            continue;
        struct pollfd pfd = {D.ns[i].fd, POLLIN, 0};
        while (D.ns[i].ack_pending && poll(&pfd, 1, 200) > 0) {
            ssize_t n = recv(D.ns[i].fd, rbufs[0], RECV_BUF, MSG_DONTWAIT);
            if (n <= 0)
                break;
            /* acks only (no rules left to queue anything); stop at the last one */
            const struct nlmsghdr *h = (const struct nlmsghdr *)rbufs[0];
            int len = (int)n;
            bool last = false;
            for (; mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len))
                if (h->nlmsg_type == NLMSG_ERROR) {
                    const struct nlmsgerr *e = mnl_nlmsg_get_payload(h);
                    const struct nlmsghdr *ex = (const struct nlmsghdr *)D.exit_batch;
                    uint32_t max_seq = 0;
                    for (int l = (int)D.exit_len; mnl_nlmsg_ok(ex, l); ex = mnl_nlmsg_next(ex, &l))
                        if (ex->nlmsg_flags & NLM_F_ACK && ex->nlmsg_seq > max_seq)
                            max_seq = ex->nlmsg_seq;
                    if (e->msg.nlmsg_seq == max_seq)
                        last = true;
                }
            if (last)
                break;
        }
        close(D.ns[i].fd);
        D.ns[i].fd = -1;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: delayd --ctl-fd FD [--queue-num N] [--seed S] [--pool ENTRIES] "
                    "[--exit-batch HEX] [--rt-priority P] [--nice N] [--fd-limit N] [--carry-fd FD | --no-carry 1]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long pool = 1 << 20, nice_val = -10, fd_limit = 0, carry_fd = -1;
    bool carry = true;
    D.ctl = -1;
    D.queue_num = 4711;
    D.free_port = -1;
    D.pool_free = NIL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        char *end;
        errno = 0;
        if (!strcmp(a, "--ctl-fd")) D.ctl = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--queue-num")) D.queue_num = (uint16_t)strtoul(v, &end, 10);
        else if (!strcmp(a, "--seed")) D.seed = strtoull(v, &end, 0);
        else if (!strcmp(a, "--pool")) pool = strtol(v, &end, 10);
        else if (!strcmp(a, "--rt-priority")) D.rt_prio = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--nice")) nice_val = strtol(v, &end, 10);
        else if (!strcmp(a, "--fd-limit")) fd_limit = strtol(v, &end, 10);
        else if (!strcmp(a, "--carry-fd")) carry_fd = strtol(v, &end, 10);
        else if (!strcmp(a, "--no-carry")) carry = !strtol(v, &end, 10);
        else if (!strcmp(a, "--exit-batch")) {
            size_t n = strlen(v);
            D.exit_batch = malloc(n + 1);
            memcpy(D.exit_batch, v, n + 1);
            long l = unhex((char *)D.exit_batch);
            if (l < 0)
                die("--exit-batch: not hex");
            D.exit_len = (size_t)l;
            end = (char *)"";
        } else usage();
        if (errno || *end)
            die("bad value for %s: %s", a, v);
        i++;
    }
    if (D.ctl < 0 || pool < 1 || pool > 0x7FFFFFFE)
        usage();
    /* Die with the driver (the thread that started us, strictly), and keep timer wake-ups exact. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    prctl(PR_SET_TIMERSLACK, 1UL);
    if (getppid() == 1)
        return 1;
    /* Namespace sockets count against the open-file limit: take the hard limit (the driver sizes shards
     * by it). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (fd_limit > 0) {  /* a lower limit, asked for (tests of the sharding) */
        rl.rlim_cur = rl.rlim_max = (rlim_t)fd_limit;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            die("--fd-limit %ld: %s", fd_limit, strerror(errno));
    }
    if (D.rt_prio > 0) {
        struct sched_param sp = {.sched_priority = D.rt_prio};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0) {
            fprintf(stderr, "delayd: cannot run at SCHED_FIFO %d: %s\n", D.rt_prio, strerror(errno));
            D.rt_prio = 0;
        }
    } else if (setpriority(PRIO_PROCESS, 0, (int)nice_val) < 0) {
        /* netem runs in softirq, ahead of every process; standing in for it, wait behind no traffic generator */
        fprintf(stderr, "delayd: cannot set niceness %ld: %s\n", nice_val, strerror(errno));
    }
    if (carry && carry_fd >= 0) {  /* shared with the other shards: the driver's memfd */
        void *m = mmap(NULL, CARRY_TABLE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, (int)carry_fd, 0);
        if (m == MAP_FAILED)
            die("--carry-fd %ld: %s", carry_fd, strerror(errno));
        close((int)carry_fd);
        D.carry = m;
        D.carry_shared = true;
    } else if (carry) {
        D.carry = calloc(CARRY_SLOTS, sizeof *D.carry);
        if (!D.carry)
            die("cannot allocate the lateness table");
    }
    D.pool_cap = (uint32_t)pool;
    D.pool = malloc(sizeof *D.pool * (size_t)pool);  /* pages are touched as the pool is first used */
    if (!D.pool)
        die("cannot allocate %ld entries", pool);
    /* Every page in memory before the first packet and kept there: under memory pressure the kernel
     * evicts the text and data pages of idle-looking processes, and faulting them back costs milliseconds
     * on the packet path. */
    if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
        fprintf(stderr, "delayd: mlockall: %s (pages may be evicted under memory pressure)\n", strerror(errno));
    else
        D.locked = true;
    D.own_ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (D.own_ns < 0)
        die("own namespace: %s", strerror(errno));
    D.ep = epoll_create1(EPOLL_CLOEXEC);
    D.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGTERM);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    signal(SIGINT, SIG_IGN);  /* the emulator handles ^C and closes us */
    signal(SIGPIPE, SIG_IGN);
    D.sfd = signalfd(-1, &ss, SFD_NONBLOCK | SFD_CLOEXEC);
    fcntl(D.ctl, F_SETFL, fcntl(D.ctl, F_GETFL) | O_NONBLOCK);
    fcntl(D.ctl, F_SETFD, FD_CLOEXEC);
    if (D.ep < 0 || D.tfd < 0 || D.sfd < 0)
        die("epoll/timerfd/signalfd: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = EV_TIMER;
    epoll_ctl(D.ep, EPOLL_CTL_ADD, D.tfd, &ev);
    ev.data.u32 = EV_CTL;
    if (epoll_ctl(D.ep, EPOLL_CTL_ADD, D.ctl, &ev) < 0)
        die("control fd %d: %s", D.ctl, strerror(errno));
    ev.data.u32 = EV_SIG;
    epoll_ctl(D.ep, EPOLL_CTL_ADD, D.sfd, &ev);
    D.running = true;
    run();
    shutdown_all();
    return 0;
}
