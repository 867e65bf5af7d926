/*
 * status_load: a closed-loop load generator for pyhotd's control socket.
 *
 * N connections (default 32), each with exactly one request in flight: it writes
 * {"id":K,"cmd":"status"}\n, waits for the whole response line, records the time from
 * just before the write to the arrival of the line's "\n" (CLOCK_MONOTONIC), and sends
 * the next. One thread and one epoll instance drive every connection, so the generator
 * needs one core and leaves the others to the daemon.
 *
 * After a warm-up (not counted) it runs for the given time and prints requests, requests
 * per second, and the latency distribution (p50, p90, p99, p99.9, max). With --json the
 * same figures come out as one JSON object. A response that does not carry "ok":true is
 * counted as an error; any error makes the exit status 1 (a broken run, never a slow one:
 * benchmarks print figures, they do not judge them).
 *
 *   status_load --socket PATH [--clients 32] [--seconds 5] [--warmup 1] [--cmd status]
 *               [--json]
 *
 * Built by CMake as a non-installed target (build/bin/status_load); any C11 compiler:
 *   cc -O2 -o status_load tests/bench/status_load.c
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF (256 * 1024)

struct conn {
    int fd;
    uint64_t sent_ns;
    uint64_t next_id;
    char *buf;          /* bytes of the response so far */
    size_t len;
};

struct samples {
    uint64_t *ns;
    size_t len, cap;
};

static uint64_t now_ns(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int samples_add(struct samples *s, uint64_t v) {
    if (s->len == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1 << 20;
        uint64_t *ns = realloc(s->ns, cap * sizeof(*ns));

        if (ns == NULL)
            return -ENOMEM;
        s->ns = ns;
        s->cap = cap;
    }
    s->ns[s->len++] = v;
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* The nearest-rank percentile p (0..100) of sorted values. */
static uint64_t percentile(const struct samples *s, double p) {
    size_t rank;

    if (s->len == 0)
        return 0;
    rank = (size_t)((p / 100.0) * (double)s->len + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > s->len)
        rank = s->len;
    return s->ns[rank - 1];
}

static int send_request(struct conn *c, const char *cmd) {
    char line[256];
    int n = snprintf(line, sizeof(line), "{\"id\":%llu,\"cmd\":\"%s\"}\n",
                     (unsigned long long)++c->next_id, cmd);
    size_t off = 0;

    c->sent_ns = now_ns();
    while (off < (size_t)n) {
        ssize_t w = write(c->fd, line + off, (size_t)n - off);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (size_t)w;
    }
    return 0;
}

static int connect_unix(const char *path) {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int e = errno;

        close(fd);
        return -e;
    }
    return fd;
}

static void usage(FILE *out) {
    fprintf(out, "Usage: status_load --socket PATH [--clients N] [--seconds S] [--warmup S]\n"
                 "                   [--cmd NAME] [--json]\n");
}

int main(int argc, char **argv) {
    static const struct option options[] = {
        { "socket", required_argument, NULL, 's' },
        { "clients", required_argument, NULL, 'c' },
        { "seconds", required_argument, NULL, 'd' },
        { "warmup", required_argument, NULL, 'w' },
        { "cmd", required_argument, NULL, 'm' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = NULL, *cmd = "status";
    int n_clients = 32, opt, ep;
    double seconds = 5.0, warmup = 1.0;
    bool json = false;
    struct conn *conns;
    struct samples samples = { 0 };
    uint64_t errors = 0, start_ns, measure_ns, end_ns, measured_start = 0;
    struct epoll_event events[256];

    while ((opt = getopt_long(argc, argv, "s:c:d:w:m:jh", options, NULL)) != -1) {
        switch (opt) {
        case 's': path = optarg; break;
        case 'c': n_clients = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'm': cmd = optarg; break;
        case 'j': json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (path == NULL || n_clients < 1 || n_clients > 4096 || seconds <= 0 || warmup < 0 ||
        strlen(cmd) > 64 || strpbrk(cmd, "\"\\") != NULL) {
        usage(stderr);
        return 2;
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)n_clients, sizeof(*conns));
    if (ep < 0 || conns == NULL) {
        perror("status_load");
        return 1;
    }
    for (int i = 0; i < n_clients; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &conns[i] };

        conns[i].fd = connect_unix(path);
        if (conns[i].fd < 0) {
            fprintf(stderr, "status_load: connect %s: %s\n", path, strerror(-conns[i].fd));
            return 1;
        }
        conns[i].buf = malloc(READ_BUF);
        if (conns[i].buf == NULL || epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0) {
            perror("status_load");
            return 1;
        }
    }

    start_ns = now_ns();
    measure_ns = start_ns + (uint64_t)(warmup * 1e9);
    end_ns = measure_ns + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < n_clients; i++) {
        if (send_request(&conns[i], cmd) < 0) {
            perror("status_load: write");
            return 1;
        }
    }

    for (;;) {
        int n = epoll_wait(ep, events, 256, 1000);
        uint64_t t;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("status_load: epoll_wait");
            return 1;
        }
        t = now_ns();
        if (t >= end_ns)
            break;
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->len, READ_BUF - c->len);
            char *nl;

            if (r <= 0) {
                if (r < 0 && (errno == EINTR || errno == EAGAIN))
                    continue;
                fprintf(stderr, "status_load: the daemon closed a connection (%s)\n",
                        r == 0 ? "EOF" : strerror(errno));
                return 1;
            }
            c->len += (size_t)r;
            nl = memchr(c->buf, '\n', c->len);
            if (nl == NULL) {
                if (c->len == READ_BUF) {
                    fprintf(stderr, "status_load: a response exceeds %d bytes\n", READ_BUF);
                    return 1;
                }
                continue;
            }
            t = now_ns();
            if (nl + 1 != c->buf + c->len) {
                fprintf(stderr, "status_load: bytes after a response (events?)\n");
                return 1;
            }
            if (memmem(c->buf, c->len, "\"ok\":true", 9) == NULL)
                errors++;
            if (c->sent_ns >= measure_ns) {
                if (measured_start == 0)
                    measured_start = c->sent_ns;
                if (samples_add(&samples, t - c->sent_ns) < 0) {
                    fprintf(stderr, "status_load: out of memory\n");
                    return 1;
                }
            }
            c->len = 0;
            if (send_request(c, cmd) < 0) {
                perror("status_load: write");
                return 1;
            }
        }
    }

    qsort(samples.ns, samples.len, sizeof(*samples.ns), cmp_u64);
    double span = (double)(end_ns - measure_ns) / 1e9;
    double rate = (double)samples.len / span;
    double p50 = percentile(&samples, 50) / 1e3, p90 = percentile(&samples, 90) / 1e3;
    double p99 = percentile(&samples, 99) / 1e3, p999 = percentile(&samples, 99.9) / 1e3;
    double max = samples.len ? samples.ns[samples.len - 1] / 1e3 : 0;

    if (json) {
        printf("{\"cmd\":\"%s\",\"clients\":%d,\"seconds\":%.3f,\"requests\":%zu,"
               "\"errors\":%llu,\"rate\":%.0f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
               "\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f}\n",
               cmd, n_clients, span, samples.len, (unsigned long long)errors, rate, p50, p90,
               p99, p999, max);
    } else {
        printf("%s: %d clients, %.1f s (after %.1f s of warm-up)\n", cmd, n_clients, span,
               warmup);
        printf("  requests  %zu (%llu errors)\n", samples.len, (unsigned long long)errors);
        printf("  rate      %.0f requests/s\n", rate);
        printf("  latency   p50 %.1f us, p90 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n",
               p50, p90, p99, p999, max);
    }
    for (int i = 0; i < n_clients; i++) {
        close(conns[i].fd);
        free(conns[i].buf);
    }
    free(conns);
    free(samples.ns);
    close(ep);
    return errors ? 1 : 0;
}
