/* Ready children: the children of isolated and sandboxed runs, forked from the warm
 * interpreter before their requests arrive (docs/run.md "Ready children"), as Android's
 * zygote and multiprocessing's forkserver do. Python thread only (the GIL held where a
 * function forks), except py_prefork_state_changed and py_prefork_stats. */
#include "py_internal.h"

#include "py_host.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"
#include "sandbox.h"

/* How long a hand-off may wait for a child to take its request (a request larger than the
 * pipe's buffer is written while the child reads; a child that does not read is broken). */
#define HANDOFF_TIMEOUT_MS 2000
/* The largest request a child reads (the request line is at most PROTOCOL_MAX_LINE; the
 * sandbox's paths come on top). */
#define REQUEST_MAX_BYTES (16 * 1024 * 1024)
/* Retired children waiting to be reaped; past it, the oldest is reaped at once. */
#define RETIRED_MAX 64
/* How soon the idle python thread looks again for retired children to reap. */
#define REAP_AGAIN_MS 10

/* The child's descriptors: 0 /dev/null, 1 and 2 its output pipes, 3 the run --get values'
 * pipe, 4 the request's pipe; nothing of the daemon's besides. */
#define CHILD_GLOBALS_FD 3
#define CHILD_REQUEST_FD 4

enum ready_kind { KIND_ISOLATED, KIND_SANDBOXED, N_KINDS };

struct ready_child {
    pid_t pid;
    int request;              /* write end of the child's fd 4: the request goes here */
    int out, err, globals;    /* read ends of the child's fd 1, 2 and 3 */
    uint64_t generation;      /* the interpreter's state it was forked from */
    uint64_t born_ns;         /* CLOCK_MONOTONIC */
};

static struct {
    unsigned size;                   /* ready children to keep per kind ([run] prefork) */
    unsigned max_age_ms;             /* retired past this age ([run] prefork_max_age_ms) */
    uint64_t wanted_generation[N_KINDS]; /* the state the last run of the kind was asked in
                                            (0: none asked, or given up: generations start at 1) */
    uint64_t last_request_ns[N_KINDS];   /* when (CLOCK_MONOTONIC) */
    bool have_settings;
    struct sandbox_spec settings;    /* what sandboxed children unshare with (no paths) */
    struct ready_child ready[N_KINDS][PY_PREFORK_MAX];
    size_t n_ready[N_KINDS];
    pid_t retired[RETIRED_MAX];      /* killed, not yet reaped */
    size_t n_retired;
} pool;

/* A refill waits this long after a job that changed the interpreter's state (while the
 * loop thread publishes its result, and for the next job of a burst: an editor's saves),
 * and after a hand-off whose run has not ended yet. */
#define QUIET_MS 100

static atomic_uint_fast64_t generation = 1;
static atomic_uint_fast64_t quiet_until_ns;    /* after the last state change */
static atomic_uint_fast64_t handoff_until_ns;  /* after the last hand-off, until its run ends */
static atomic_uint_fast64_t n_hits, n_misses, n_retired_total;
static atomic_uint n_ready_published[N_KINDS];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void py_prefork_state_changed(void) {
    atomic_fetch_add(&generation, 1);
    atomic_store(&quiet_until_ns, now_ns() + QUIET_MS * 1000000ULL);
}

uint64_t py_prefork_generation(void) {
    return atomic_load(&generation);
}

void py_prefork_run_ended(void) {
    atomic_store(&handoff_until_ns, 0);
}

void py_prefork_stats(struct py_prefork_stats *out) {
    out->ready_isolated = atomic_load(&n_ready_published[KIND_ISOLATED]);
    out->ready_sandboxed = atomic_load(&n_ready_published[KIND_SANDBOXED]);
    out->hits = atomic_load(&n_hits);
    out->misses = atomic_load(&n_misses);
    out->retired = atomic_load(&n_retired_total);
}

static void publish_counts(void) {
    for (int k = 0; k < N_KINDS; k++)
        atomic_store(&n_ready_published[k], (unsigned)pool.n_ready[k]);
}

/* ---- the child ------------------------------------------------------------------------ */

static void child_say(const char *text) {
    if (write(2, text, strlen(text)) < 0)
        _exit(2);
}

/* Reads exactly len bytes from fd; false at EOF or an error (the daemon retired us). */
static bool read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* The request: a 4-byte length (host order) and that much JSON. Never returns without
 * one: EOF (the daemon retired this child, or died) ends the process. */
static json_t *read_request(void) {
    uint32_t len;
    if (!read_full(CHILD_REQUEST_FD, &len, sizeof(len)) || len == 0 || len > REQUEST_MAX_BYTES)
        _exit(0);
    char *text = malloc(len);
    if (!text || !read_full(CHILD_REQUEST_FD, text, len))
        _exit(0);
    close(CHILD_REQUEST_FD);
    json_t *input = json_loadb(text, len, 0, NULL);
    free(text);
    if (!json_is_object(input)) {
        child_say("pyhot: isolated run: the request did not arrive whole\n");
        _exit(2);
    }
    return input;
}

/* Puts fds[i] on fd i + 1 (stdout, stderr, the values' pipe, the request's pipe), /dev/null
 * on 0, and closes every other descriptor: nothing of the daemon's (its socket, inotify,
 * epoll, eventfds, other children's pipes). The moves go through fds >= 5 first, so that
 * no source is overwritten by an earlier dup2. */
static void child_descriptors(const int fds[4]) {
    int moved[4];
    for (int i = 0; i < 4; i++)
        if ((moved[i] = fcntl(fds[i], F_DUPFD, 5)) < 0)
            _exit(2);
    for (int i = 0; i < 4; i++)
        if (dup2(moved[i], i + 1) < 0)
            _exit(2);
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || (null != 0 && dup2(null, 0) < 0))
        _exit(2);
    syscall(SYS_close_range, 5U, ~0U, 0U);
}

/* The policy a ready child waits for its request in (sched(7)). SCHED_IDLE: the
 * preparation, a few milliseconds of CPU, takes only CPU time nothing else wants, and a
 * wake-up of the daemon's threads, a client or a run preempts it at once and may be placed
 * on its CPU. SCHED_BATCH still let it keep a CPU for a slice while the daemon's threads,
 * woken by the next request, waited on that CPU (sched_switch traces: ~1 ms a run, back to
 * back; docs/benchmarks.md). Leaving SCHED_IDLE at the request takes CAP_SYS_NICE or an
 * RLIMIT_NICE of 20 (sched_setscheduler(2); can_nice() in the kernel): a process without
 * either waits as SCHED_BATCH, which it may always leave. Read in the daemon before the
 * fork, since a sandboxed child may be in a user namespace of its own by then, whose
 * capabilities say nothing of this. */
static int waiting_policy(void) {
    static int policy = -1;
    if (policy < 0) {
        struct rlimit nice;
        struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
        struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
        bool can = getrlimit(RLIMIT_NICE, &nice) == 0 && nice.rlim_cur >= 20;
        if (!can && syscall(SYS_capget, &header, caps) == 0)
            can = (caps[CAP_TO_INDEX(CAP_SYS_NICE)].effective & CAP_TO_MASK(CAP_SYS_NICE)) != 0;
        policy = can ? SCHED_IDLE : SCHED_BATCH;
    }
    return policy;
}

/* A ready child, right after the fork: never returns. It does what no request decides
 * (descriptors, death with the daemon, a sandboxed kind's namespaces, the run's Python
 * set-up), then waits for its request and runs it. early: the sandboxed kind's settings,
 * or NULL. */
static void ready_child_main(const int fds[4], pid_t daemon_pid, const struct sandbox_spec *early,
                             int waiting) {
    char why[PATH_MAX + 256] = "";
    /* Before child_descriptors, which closes the shared network namespace's descriptor;
     * the filter too, at full priority: loading it compiles it under locks every process
     * shares (the kernel's text_mutex for the JIT), and it is 0.15 ms, at times 0.6 ms, a
     * run need not wait for (docs/run.md "Sandbox"). */
    int unshared = early ? sandbox_unshare(early, why, sizeof(why)) : 0;
    if (early && unshared == 0)
        unshared = sandbox_filter(why, sizeof(why));
    /* Until the request, the waiting policy; after the namespaces, whose system calls take
     * locks every process's mounts share (namespace_sem), which no process should hold while
     * it waits for idle CPU time. A change of policy alone does not give the CPU away:
     * sched_yield lets a thread of the daemon that woke meanwhile run first. */
    struct sched_param param = {0};
    sched_setscheduler(0, waiting, &param);
    sched_yield();
    child_descriptors(fds);
    /* Gone with the daemon's python thread, also when it dies without a word (SIGKILL);
     * checked after the prctl, in case it died before (prctl(2)). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != daemon_pid)
        _exit(0);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);

    /* The dry run copies now the pages the run will write, which only pays while the
     * child has time to spare: a request already waiting (runs back to back, the child's
     * idle-time preparation not done) would only wait for it. */
    struct pollfd request = {.fd = CHILD_REQUEST_FD, .events = POLLIN};
    if (unshared == 0)
        py_run_child_prepare(poll(&request, 1, 0) == 0);
    json_t *input = read_request();
    sched_setscheduler(0, SCHED_OTHER, &param);
    if (unshared < 0)
        py_run_child_refuse(why);
    if (!json_array_size(json_object_get(input, "get")))
        close(CHILD_GLOBALS_FD);
    py_run_child_main(input, early);
}

/* ---- the pool (python thread) ------------------------------------------------------------ */

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void reap_retired(bool wait) {
    size_t kept = 0;
    for (size_t i = 0; i < pool.n_retired; i++) {
        pid_t pid = pool.retired[i];
        pid_t r;
        do
            r = waitpid(pid, NULL, wait ? 0 : WNOHANG);
        while (r < 0 && errno == EINTR);
        if (r == 0)
            pool.retired[kept++] = pid;
    }
    pool.n_retired = kept;
}

/* Kills c (SIGKILL: it runs nothing of anyone's yet) and closes its pipes; it is reaped
 * later (reap_retired), off the path of the job at hand. */
static void retire(struct ready_child *c) {
    kill(c->pid, SIGKILL);
    close_fd(&c->request);
    close_fd(&c->out);
    close_fd(&c->err);
    close_fd(&c->globals);
    if (pool.n_retired == RETIRED_MAX) {
        waitpid(pool.retired[0], NULL, 0);
        memmove(pool.retired, pool.retired + 1, (RETIRED_MAX - 1) * sizeof(pid_t));
        pool.n_retired--;
    }
    pool.retired[pool.n_retired++] = c->pid;
    atomic_fetch_add(&n_retired_total, 1);
}

static bool is_fresh(const struct ready_child *c, uint64_t now) {
    return c->generation == atomic_load(&generation) &&
           (pool.max_age_ms == 0 || now - c->born_ns < (uint64_t)pool.max_age_ms * 1000000ULL);
}

/* Retires kind's children that are stale (forked before the interpreter's state last
 * changed, or older than the maximum age), or all of them. */
static void retire_kind(int kind, bool all) {
    uint64_t now = now_ns();
    size_t kept = 0;
    for (size_t i = 0; i < pool.n_ready[kind]; i++) {
        struct ready_child *c = &pool.ready[kind][i];
        if (all || !is_fresh(c, now))
            retire(c);
        else
            pool.ready[kind][kept++] = *c;
    }
    pool.n_ready[kind] = kept;
    publish_counts();
}

/* Whether kind is kept ready: a run of it was asked for since the interpreter's state last
 * changed, and within the maximum age. A fork leaves the daemon's pages shared with the
 * child, so the daemon's next writes (a reload's) each copy a page: children forked for
 * runs that have stopped coming would slow every save down (docs/run.md). */
static bool is_wanted(int kind, uint64_t now) {
    return pool.size > 0 && pool.wanted_generation[kind] == atomic_load(&generation) &&
           (pool.max_age_ms == 0 ||
            now - pool.last_request_ns[kind] < (uint64_t)pool.max_age_ms * 1000000ULL);
}

static bool same_settings(const struct sandbox_spec *a, const struct sandbox_spec *b) {
    return a->network == b->network && a->change_user == b->change_user && a->uid == b->uid &&
           a->gid == b->gid && a->tmp_size_mb == b->tmp_size_mb &&
           (a->tmpdir == b->tmpdir || (a->tmpdir && b->tmpdir && strcmp(a->tmpdir, b->tmpdir) == 0));
}

static json_t *errno_error(const char *what, int e) {
    return json_pack("{s:s, s:s++}", "code", PROTOCOL_E_INTERNAL, "message", what, strerror(e));
}

/* Forks a child of kind (early: the sandboxed kind's settings) into *c. GIL held. Returns
 * 0, or -1 with *error set. */
static int fork_ready(int kind, const struct sandbox_spec *early, struct ready_child *c,
                      json_t **error) {
    int pipes[4][2]; /* the child's fd 1, 2, 3 (written by it) and 4 (read by it) */
    for (int i = 0; i < 4; i++) {
        if (pipe2(pipes[i], O_CLOEXEC) < 0) {
            int e = errno;
            for (int k = 0; k < i; k++) {
                close(pipes[k][0]);
                close(pipes[k][1]);
            }
            *error = errno_error("cannot start the isolated run: pipe: ", e);
            return -1;
        }
    }
    int child_fds[4] = {pipes[0][1], pipes[1][1], pipes[2][1], pipes[3][0]};
    pid_t daemon_pid = getpid();
    int waiting = waiting_policy();
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        ready_child_main(child_fds, daemon_pid, kind == KIND_SANDBOXED ? early : NULL, waiting);
        _exit(2);
    }
    int e = errno;
    PyOS_AfterFork_Parent();
    for (int i = 0; i < 4; i++)
        close(child_fds[i]);
    if (pid < 0) {
        close(pipes[0][0]);
        close(pipes[1][0]);
        close(pipes[2][0]);
        close(pipes[3][1]);
        *error = errno_error("cannot start the isolated run: fork: ", e);
        return -1;
    }
    c->pid = pid;
    c->out = pipes[0][0];
    c->err = pipes[1][0];
    c->globals = pipes[2][0];
    c->request = pipes[3][1];
    c->generation = atomic_load(&generation);
    c->born_ns = now_ns();
    return 0;
}

/* Writes all of data to fd (non-blocking), waiting for the reader at most until deadline.
 * Returns 0 or a negative errno (-ETIMEDOUT, -EPIPE when the child is gone). */
static int write_all(int fd, const char *data, size_t len, uint64_t deadline_ns) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return -errno;
        uint64_t now = now_ns();
        if (now >= deadline_ns)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, (int)((deadline_ns - now) / 1000000 + 1)) < 0 && errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Gives c the request input (its length, then its JSON) and hands its pipes over: returns
 * the job's output {"pid", "stdout_fd", "stderr_fd", "globals_fd", "isolated"} (the loop
 * thread owns the fds from then on; run_channel_watch_child), or NULL with *errno_out
 * set (c is retired then). */
static json_t *hand_off(struct ready_child *c, json_t *input, int *errno_out) {
    size_t len = 0;
    char *text = json_dumps(input, JSON_COMPACT);
    if (text)
        len = strlen(text);
    int r = !text ? -ENOMEM : len > REQUEST_MAX_BYTES ? -E2BIG : 0;
    if (r == 0 && fcntl(c->request, F_SETFL, O_NONBLOCK) < 0)
        r = -errno;
    uint32_t header = (uint32_t)len;
    uint64_t deadline = now_ns() + (uint64_t)HANDOFF_TIMEOUT_MS * 1000000ULL;
    /* Out of its waiting policy now, should it still be preparing (waiting_policy): the
     * run must not wait for CPU time nothing else wants. Best effort: the child makes the
     * same change itself once it has read the request. */
    struct sched_param param = {0};
    sched_setscheduler(c->pid, SCHED_OTHER, &param);
    if (r == 0)
        r = write_all(c->request, (const char *)&header, sizeof(header), deadline);
    if (r == 0)
        r = write_all(c->request, text, len, deadline);
    free(text);
    if (r < 0) {
        retire(c);
        *errno_out = -r;
        return NULL;
    }
    close_fd(&c->request);
    atomic_store(&handoff_until_ns, now_ns() + QUIET_MS * 1000000ULL);
    bool get = json_array_size(json_object_get(input, "get")) > 0;
    if (!get)
        close_fd(&c->globals);
    json_t *out = json_pack("{s:i, s:i, s:i, s:i, s:b}", "pid", (int)c->pid, "stdout_fd", c->out,
                            "stderr_fd", c->err, "globals_fd", get ? c->globals : -1, "isolated", 1);
    return out;
}

/* The first fresh child of kind, taken out of the pool into *c; stale ones are retired. */
static bool take_ready(int kind, struct ready_child *c) {
    retire_kind(kind, false);
    if (pool.n_ready[kind] == 0)
        return false;
    *c = pool.ready[kind][0];
    memmove(&pool.ready[kind][0], &pool.ready[kind][1], (pool.n_ready[kind] - 1) * sizeof(*c));
    pool.n_ready[kind]--;
    publish_counts();
    return true;
}

void py_prefork_configure(json_t *input) {
    json_t *size = json_object_get(input, "prefork");
    json_t *age = json_object_get(input, "prefork_max_age_ms");
    if (json_is_integer(size)) {
        json_int_t n = json_integer_value(size);
        pool.size = n < 0 ? 0 : n > PY_PREFORK_MAX ? PY_PREFORK_MAX : (unsigned)n;
    }
    if (json_is_integer(age) && json_integer_value(age) >= 0)
        pool.max_age_ms = (unsigned)json_integer_value(age);
}

json_t *py_prefork_start(json_t *input, const struct sandbox_spec *early, json_t **error) {
    int kind = early ? KIND_SANDBOXED : KIND_ISOLATED;
    reap_retired(false);
    if (early && (!pool.have_settings || !same_settings(&pool.settings, early))) {
        retire_kind(KIND_SANDBOXED, true);
        pool.settings = *early;
        pool.have_settings = true;
    }
    for (int k = 0; k < N_KINDS; k++)
        if (pool.n_ready[k] > pool.size)
            retire_kind(k, true);

    struct ready_child c;
    json_t *out = NULL;
    int e = 0;
    if (take_ready(kind, &c)) {
        out = hand_off(&c, input, &e);
        if (out)
            atomic_fetch_add(&n_hits, 1);
    }
    if (!out) {
        /* None ready, or the one taken was gone: fork one now, as without a pool. */
        atomic_fetch_add(&n_misses, 1);
        if (fork_ready(kind, early, &c, error) < 0)
            return NULL;
        out = hand_off(&c, input, &e);
        if (!out)
            *error = errno_error("cannot start the isolated run: handing the request over: ", e);
    }
    pool.wanted_generation[kind] = atomic_load(&generation);
    pool.last_request_ns[kind] = now_ns();
    return out;
}

/* Whether now is no time to fork: just after a state change or a hand-off. */
static bool refill_held(uint64_t now) {
    return now < atomic_load(&quiet_until_ns) || now < atomic_load(&handoff_until_ns);
}

bool py_prefork_due(void) {
    uint64_t now = now_ns();
    bool held = refill_held(now);
    for (int k = 0; k < N_KINDS; k++) {
        bool wanted = is_wanted(k, now);
        /* Children to retire go at once, even while refills are held: each one still
         * alive makes the daemon's next writes copy pages. */
        if (!wanted && pool.n_ready[k] > 0)
            return true;
        for (size_t i = 0; i < pool.n_ready[k]; i++)
            if (!is_fresh(&pool.ready[k][i], now))
                return true;
        if (!held && wanted && pool.n_ready[k] != pool.size)
            return true;
    }
    return false;
}

uint64_t py_prefork_wake_ns(void) {
    uint64_t next = 0;
    uint64_t now = now_ns();
    uint64_t quiet = atomic_load(&quiet_until_ns), handoff = atomic_load(&handoff_until_ns);
    uint64_t until = quiet > handoff ? quiet : handoff;
    bool work = false;
    for (int k = 0; k < N_KINDS; k++)
        work |= is_wanted(k, now) || pool.n_ready[k] > 0;
    if (work && until > now)
        next = until;
    if (pool.n_retired > 0) {
        reap_retired(false);
        if (pool.n_retired > 0 && (next == 0 || now + REAP_AGAIN_MS * 1000000ULL < next))
            next = now + REAP_AGAIN_MS * 1000000ULL;
    }
    for (int k = 0; pool.max_age_ms && k < N_KINDS; k++)
        for (size_t i = 0; i < pool.n_ready[k]; i++) {
            uint64_t at = pool.ready[k][i].born_ns + (uint64_t)pool.max_age_ms * 1000000ULL;
            if (next == 0 || at < next)
                next = at;
        }
    return next;
}

void py_prefork_step(void) {
    reap_retired(false);
    uint64_t now = now_ns();
    for (int k = 0; k < N_KINDS; k++) {
        bool wanted = is_wanted(k, now);
        retire_kind(k, !wanted || pool.n_ready[k] > pool.size);
        if (!wanted || pool.n_ready[k] >= pool.size || refill_held(now))
            continue;
        struct ready_child c;
        json_t *error = NULL;
        if (fork_ready(k, k == KIND_SANDBOXED ? &pool.settings : NULL, &c, &error) < 0) {
            /* Not now: the next run forks its own, and says why if it cannot. */
            pool.wanted_generation[k] = 0;
            json_decref(error);
            return;
        }
        pool.ready[k][pool.n_ready[k]++] = c;
        publish_counts();
        py_run_rehearse(k == KIND_SANDBOXED);
        return; /* one fork per step: the job queue is looked at in between */
    }
}

void py_prefork_fini(void) {
    for (int k = 0; k < N_KINDS; k++) {
        pool.wanted_generation[k] = 0;
        retire_kind(k, true);
    }
    reap_retired(true);
}
