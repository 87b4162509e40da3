/*
 * computed.c - the orbital compute service of every compute node of a run, in one small program.
 *
 * The Python service (emulator/traffic/service.py) costs ~20 MB of RSS per process; a shell of 1,584
 * compute nodes would need 30 GB. This program starts as root in the host's namespaces, reads one line per
 * node on stdin and forks one child per node; the children share the parent's pages, so each costs a few
 * hundred kB (measured by emulator/traffic/compute.py). Each child, before it serves:
 *   1. joins the node's network namespace (setns) and makes itself a private mount namespace, in which a
 *      tmpfs hides /run/satnetem (other nodes' files, other runs) and the node's own folder is bind-mounted
 *      read-only at /run/satnetem/node (whereami.json, kept current by the emulator each step);
 *   2. writes its pid into the node's cgroups (cgroup.procs files given on its line), so the kernel
 *      enforces the node's CPU share and memory limit on it and on nothing else;
 *   3. binds its listening socket to the node's address only;
 *   4. drops to the unprivileged uid/gid given (--uid/--gid, e.g. nobody), with no supplementary groups and
 *      no_new_privs, and asks to be killed when the parent dies;
 *   5. tells the parent "ok" (or the error) over a pipe; the parent prints "ready <name> <pid>" or
 *      "failed <name> <reason>" on stdout, one line per node, in input order, then "done".
 *
 * Input lines (tab separated, no quoting exists):  name  netns_path  address  node_dir  cgroup_procs[,...]
 *
 * HTTP/1.1 with keep-alive, one thread per node (a node computes one request at a time, as one core would):
 *   GET /compute?id=<id>[&work_ms=<ms>]  burn <ms> (default --work-ms) of this process's CPU time (its CPU
 *        clock, so a node throttled by its cgroup takes longer in wall time) and answer
 *        {"node", "id", "service_ms", "cpu_ms", "work_ms", "digest"} as the Python service does;
 *   GET /whereami  the node's whereami.json as it is now.
 * While the node's folder holds a file "stopped" (its battery is below the stop threshold), /compute answers
 * 503 {"error": "stopped"}.
 * The parent exits on SIGTERM/SIGINT after killing and reaping its children.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONN 32
#define BUF 4096
#define NODE_MOUNT "/run/satnetem/node"
#define HIDE_DIR "/run/satnetem"

static const char *node_name = "";
static double default_work_ms = 5.0;

static double now_ms(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Burn work_ms of this thread's CPU time on a 64-bit FNV-1a chain over a 4 KiB block; returns the digest. */
static uint64_t do_work(double work_ms, double *cpu_ms)
{
    static unsigned char block[BUF];
    uint64_t h = 1469598103934665603ULL;
    double t0 = now_ms(CLOCK_THREAD_CPUTIME_ID), used;
    for (int i = 0; i < BUF; i++)
        block[i] = (unsigned char)i;
    do {
        for (int r = 0; r < 4; r++)
            for (int i = 0; i < BUF; i++) {
                h ^= block[i];
                h *= 1099511628211ULL;
            }
        block[h % BUF] ^= (unsigned char)h;
        used = now_ms(CLOCK_THREAD_CPUTIME_ID) - t0;
    } while (used < work_ms);
    *cpu_ms = used;
    return h;
}

struct conn {
    int fd;
    size_t len;
    char buf[BUF];
};

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int respond(int fd, int status, const char *reason, const char *body, size_t blen, int keep)
{
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\n\r\n", status, reason, blen, keep ? "keep-alive" : "close");
    /* one write for header and body: the client then sees the answer in one segment */
    char out[BUF + 256];
    if ((size_t)n + blen <= sizeof out) {
        memcpy(out, head, (size_t)n);
        memcpy(out + n, body, blen);
        return write_all(fd, out, (size_t)n + blen);
    }
    if (write_all(fd, head, (size_t)n) < 0)
        return -1;
    return write_all(fd, body, blen);
}

/* The value of query parameter key in path (up to '&', ' ' or end), copied with only [A-Za-z0-9._-]. */
static void query(const char *path, const char *key, char *out, size_t cap)
{
    out[0] = 0;
    const char *q = strchr(path, '?');
    size_t kl = strlen(key);
    while (q) {
        q++;
        if (!strncmp(q, key, kl) && q[kl] == '=') {
            size_t i = 0;
            for (const char *p = q + kl + 1; *p && *p != '&' && i + 1 < cap; p++)
                if ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    *p == '.' || *p == '-' || *p == '_')
                    out[i++] = *p;
            out[i] = 0;
            return;
        }
        q = strchr(q, '&');
    }
}

/* Handle one complete request in c->buf (header ends at hdr_end); 0 to keep the connection, -1 to close. */
static int handle(struct conn *c, size_t hdr_end)
{
    char path[512];
    c->buf[hdr_end] = 0;
    int keep = strcasestr(c->buf, "\r\nconnection: close") == NULL;
    if (strncmp(c->buf, "GET ", 4) || sscanf(c->buf + 4, "%511s", path) != 1) {
        respond(c->fd, 400, "Bad Request", "{}", 2, 0);
        return -1;
    }
    char body[BUF];
    int n;
    if (!strncmp(path, "/compute", 8) && access(NODE_MOUNT "/stopped", F_OK) == 0) {
        /* the node's battery is below its stop threshold (topologies.power): it accepts no work */
        if (respond(c->fd, 503, "Service Unavailable", "{\"error\": \"stopped\"}", 20, keep) < 0)
            return -1;
    } else if (!strncmp(path, "/compute", 8)) {
        double t0 = now_ms(CLOCK_MONOTONIC), cpu_ms;
        char id[40], w[24];
        query(path, "id", id, sizeof id);
        query(path, "work_ms", w, sizeof w);
        double work_ms = w[0] ? strtod(w, NULL) : default_work_ms;
        if (!(work_ms >= 0 && work_ms <= 60000)) {
            respond(c->fd, 400, "Bad Request", "{\"error\":\"work_ms must be in [0, 60000]\"}", 41, keep);
            return keep ? 0 : -1;
        }
        uint64_t digest = do_work(work_ms, &cpu_ms);
        double service_ms = now_ms(CLOCK_MONOTONIC) - t0;
        n = snprintf(body, sizeof body, "{\"node\": \"%s\", \"id\": \"%s\", \"service_ms\": %.3f, \"cpu_ms\": %.3f, "
                     "\"work_ms\": %g, \"digest\": \"%016llx\"}", node_name, id, service_ms, cpu_ms, work_ms,
                     (unsigned long long)digest);
        if (respond(c->fd, 200, "OK", body, (size_t)n, keep) < 0)
            return -1;
    } else if (!strcmp(path, "/whereami")) {
        int fd = open(NODE_MOUNT "/whereami.json", O_RDONLY | O_CLOEXEC);
        ssize_t r = fd < 0 ? -1 : read(fd, body, sizeof body);
        if (fd >= 0)
            close(fd);
        if (r < 0 || r == (ssize_t)sizeof body) { /* absent, or larger than one page: not ours to cut */
            if (respond(c->fd, 503, "Service Unavailable", "{}", 2, keep) < 0)
                return -1;
        } else if (respond(c->fd, 200, "OK", body, (size_t)r, keep) < 0)
            return -1;
    } else if (respond(c->fd, 404, "Not Found", "{}", 2, keep) < 0)
        return -1;
    return keep ? 0 : -1;
}

static void serve(int lfd)
{
    static struct conn conns[MAX_CONN];
    struct pollfd pf[MAX_CONN + 1];
    int n = 0;
    for (;;) {
        pf[0].fd = lfd;
        pf[0].events = n < MAX_CONN ? POLLIN : 0;
        for (int i = 0; i < n; i++) {
            pf[i + 1].fd = conns[i].fd;
            pf[i + 1].events = POLLIN;
        }
        if (poll(pf, (nfds_t)n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        for (int i = n - 1; i >= 0; i--) {
            if (!pf[i + 1].revents)
                continue;
            struct conn *c = &conns[i];
            ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
            int drop = r <= 0;
            if (!drop) {
                c->len += (size_t)r;
                c->buf[c->len] = 0;
                char *end;
                while (!drop && (end = strstr(c->buf, "\r\n\r\n")) != NULL) {
                    size_t used = (size_t)(end - c->buf) + 4;
                    drop = handle(c, used - 2) < 0;
                    memmove(c->buf, c->buf + used, c->len - used);
                    c->len -= used;
                    c->buf[c->len] = 0;
                }
                if (c->len >= sizeof c->buf - 1) /* a header larger than the buffer */
                    drop = 1;
            }
            if (drop) {
                close(c->fd);
                conns[i] = conns[--n];
            }
        }
        if (pf[0].revents & POLLIN) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conns[n].fd = fd;
                conns[n].len = 0;
                n++;
            }
        }
    }
}

/* Steps 1-4 of the header comment; on failure a message in err and -1. */
static int enter_node(const char *netns, const char *addr, const char *node_dir, char *cgroups, int port,
                      uid_t uid, gid_t gid, int *lfd, char *err, size_t cap)
{
#define FAIL(...) do { snprintf(err, cap, __VA_ARGS__); return -1; } while (0)
    int nfd = open(netns, O_RDONLY | O_CLOEXEC);
    if (nfd < 0 || setns(nfd, CLONE_NEWNET) < 0)
        FAIL("join network namespace %s: %s", netns, strerror(errno));
    close(nfd);
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        FAIL("private mount namespace: %s", strerror(errno));
    /* opened in the new mount namespace (a bind mount's source must be one of its mounts), before the
     * tmpfs below hides the path */
    int dfd = open(node_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        FAIL("open %s: %s", node_dir, strerror(errno));
    if (mount("satnetem-node", HIDE_DIR, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755") < 0)
        FAIL("tmpfs on %s: %s", HIDE_DIR, strerror(errno));
    if (mkdir(NODE_MOUNT, 0755) < 0)
        FAIL("mkdir %s: %s", NODE_MOUNT, strerror(errno));
    char src[64];
    snprintf(src, sizeof src, "/proc/self/fd/%d", dfd);
    if (mount(src, NODE_MOUNT, NULL, MS_BIND, NULL) < 0 ||
        mount(NULL, NODE_MOUNT, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        FAIL("bind %s read-only: %s", node_dir, strerror(errno));
    close(dfd);
    for (char *f = strtok(cgroups, ","); f; f = strtok(NULL, ",")) {
        int cfd = open(f, O_WRONLY | O_CLOEXEC);
        if (cfd < 0 || write(cfd, "0\n", 2) != 2) /* "0": the writing process itself */
            FAIL("join cgroup %s: %s", f, strerror(errno));
        close(cfd);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        FAIL("not an IPv4 address: %s", addr);
    int one = 1;
    *lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*lfd < 0 || setsockopt(*lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(*lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(*lfd, 64) < 0)
        FAIL("listen on %s:%d: %s", addr, port, strerror(errno));
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0 ||
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        FAIL("drop to uid %d gid %d: %s", (int)uid, (int)gid, strerror(errno));
    if (setuid(0) == 0) /* must not be able to return */
        FAIL("still able to become root after dropping privileges");
    setenv("SATNETEM_WHEREAMI", NODE_MOUNT "/whereami.json", 1);
    return 0;
#undef FAIL
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void usage(void)
{
    fprintf(stderr, "usage: satnetem-computed --port P --work-ms MS --uid UID --gid GID [--mark TEXT] < nodes\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int port = 8080;
    long uid = -1, gid = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--work-ms"))
            default_work_ms = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--uid"))
            uid = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--gid"))
            gid = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--mark")) /* only so that 'satnetem clean' can find this process */
            i++;
        else
            usage();
    }
    if (port <= 0 || port > 65535 || uid <= 0 || gid <= 0 || !(default_work_ms >= 0 && default_work_ms <= 60000))
        usage();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    pid_t *kids = NULL;
    size_t nkids = 0;
    char *line = NULL;
    size_t cap = 0;
    pid_t self = getpid();
    while (getline(&line, &cap, stdin) > 0) {
        line[strcspn(line, "\n")] = 0;
        char *f[5];
        int nf = 0;
        for (char *p = line, *s; nf < 5 && (s = strsep(&p, "\t")) != NULL;)
            f[nf++] = s;
        if (nf != 5) {
            printf("failed %s expected 5 tab-separated fields\n", nf ? f[0] : "?");
            fflush(stdout);
            continue;
        }
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) < 0) {
            printf("failed %s pipe: %s\n", f[0], strerror(errno));
            fflush(stdout);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            char err[512] = "ok";
            int lfd = -1;
            close(pfd[0]);
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != self)
                _exit(1);
            fclose(stdin);
            node_name = f[0];
            int rc = enter_node(f[1], f[2], f[3], f[4], port, (uid_t)uid, (gid_t)gid, &lfd, err, sizeof err);
            (void)!write(pfd[1], err, strlen(err));
            close(pfd[1]);
            if (rc < 0)
                _exit(1);
            free(kids); /* the parent's table is not this node's business; give its pages back */
            serve(lfd);
            _exit(0);
        }
        close(pfd[1]);
        char msg[512] = "";
        ssize_t r = pid < 0 ? -1 : read(pfd[0], msg, sizeof msg - 1);
        close(pfd[0]);
        if (pid > 0 && r == 2 && !memcmp(msg, "ok", 2)) {
            pid_t *k = realloc(kids, (nkids + 1) * sizeof *kids);
            if (!k) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                printf("failed %s out of memory\n", f[0]);
            } else {
                kids = k;
                kids[nkids++] = pid;
                printf("ready %s %d\n", f[0], (int)pid);
            }
        } else {
            if (pid > 0)
                waitpid(pid, NULL, 0);
            printf("failed %s %s\n", f[0], pid < 0 ? strerror(errno) : (r > 0 ? msg : "child exited"));
        }
        fflush(stdout);
    }
    free(line);
    printf("done\n");
    fflush(stdout);
    while (!stop) {
        int status;
        pid_t p = waitpid(-1, &status, 0);
        if (p > 0) {
            for (size_t i = 0; i < nkids; i++)
                if (kids[i] == p) {
                    fprintf(stderr, "satnetem-computed: service pid %d ended (status %d)\n", (int)p, status);
                    kids[i] = 0;
                }
        } else if (errno == ECHILD)
            pause();
    }
    for (size_t i = 0; i < nkids; i++)
        if (kids[i] > 0)
            kill(kids[i], SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
        ;
    return 0;
}
