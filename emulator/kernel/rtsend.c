/* satnetem's route sender: one buffer of rtnetlink requests sent in slices to many sockets, from C.
 *
 * The emulator changes 10^3-10^4 routes a step, spread over thousands of namespaces, each namespace one
 * send on its own rtnetlink socket (emulator/rtnl.py run_packed_many). From Python each send costs
 * ~1.3 us of interpreter time on top of the kernel's work and holds the interpreter lock in between;
 * called through ctypes, which releases that lock, this loop costs only the system calls and lets the
 * step's other work (the shaping of changed delays) run on the other core meanwhile.
 *
 * Built by install.sh as build/libsatnetem-rtsend.so; without it the emulator sends from Python.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* Sockets polled at once after the sends: a poll over every socket of a step would cost one large
 * allocation in the kernel; a few hundred at a time keeps it on the stack. */
#define POLL_GROUP 256

/*
 * Send buf[lo[i]:hi[i]] on fds[i] for each i < n, then report which sockets have something to read.
 *
 * The slices hold whole netlink messages without NLM_F_ACK: the kernel handles them inside send() and
 * queues an NLMSG_ERROR only for a failure, so a socket with nothing to read had no failure. The caller
 * keeps each slice small enough that its failure reports fit the socket's receive buffer.
 *
 * readable[i] is set to 1 if fds[i] has data queued after the sends, else 0; send_errno[i] to the errno
 * of a send that failed (0 if it did not). Returns the number of failed sends, or -1 if poll failed
 * (errno set).
 *
 * Paced (ns_per_byte > 0): each slice goes in sends of at most chunk bytes (whole messages: the caller
 * passes a multiple of their size), and the loop sleeps whenever it is more than PACE_SLACK_NS ahead of
 * ns_per_byte from t0 (CLOCK_MONOTONIC ns) for the bytes *sent (in and out: the pace's earlier calls').
 * Route changes sent faster than ~2 x 10^5 a second leave the kernel more RCU callbacks than its qhimark
 * (10,000 a CPU), which it then runs unbounded in softirq for up to rcu_resched_ns (3 ms), holding off
 * every thread of that CPU, real-time ones too (emulator/rtnl.py AHEAD_PACE).
 */
#define PACE_SLACK_NS 200000LL

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int satnetem_send_many(int n, const int *fds, const char *buf, const int64_t *lo, const int64_t *hi,
                       uint8_t *readable, int32_t *send_errno, int64_t chunk, double ns_per_byte, int64_t t0,
                       double *sent)
{
    int failed = 0;
    for (int i = 0; i < n; i++) {
        send_errno[i] = 0;
        readable[i] = 0;
        for (int64_t off = lo[i]; off < hi[i];) {
            ssize_t len = (ssize_t)(hi[i] - off);
            ssize_t r;
            if (chunk > 0 && len > chunk)
                len = (ssize_t)chunk;
            do {
                r = send(fds[i], buf + off, (size_t)len, 0);
            } while (r < 0 && errno == EINTR);
            if (r < 0) {
                send_errno[i] = errno;
                failed++;
                break;
            } else if (r != len) { /* a datagram socket sends all or nothing; say so if it did not */
                send_errno[i] = EMSGSIZE;
                failed++;
                break;
            }
            off += len;
            if (ns_per_byte > 0) {
                *sent += (double)len;
                int64_t due = t0 + (int64_t)(*sent * ns_per_byte);
                if (due - mono_ns() > PACE_SLACK_NS) {
                    struct timespec t = {due / 1000000000LL, due % 1000000000LL};
                    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
                        ;
                }
            }
        }
    }
    struct pollfd p[POLL_GROUP];
    for (int base = 0; base < n; base += POLL_GROUP) {
        int m = n - base < POLL_GROUP ? n - base : POLL_GROUP;
        for (int k = 0; k < m; k++) {
            p[k].fd = fds[base + k];
            p[k].events = POLLIN;
            p[k].revents = 0;
        }
        int r;
        do {
            r = poll(p, (nfds_t)m, 0);
        } while (r < 0 && errno == EINTR);
        if (r < 0)
            return -1;
        for (int k = 0; k < m && r > 0; k++) {
            if (p[k].revents) {
                readable[base + k] = 1;
                r--;
            }
        }
    }
    return failed;
}
