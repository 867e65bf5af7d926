#include "watch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "strset.h"
#include "watch_backend.h"

/* How long a batch waits, once, for a path that was deleted or moved away to reappear
 * (an editor's rename-over in progress), ms. A real deletion is reported that much later. */
#define GONE_GRACE_MS 50

/* Per-path flags of the current pending set. */
#define PATH_GONE 1u     /* deleted or moved away, not written since */
#define PATH_WRITING 2u  /* created, not closed yet */

struct path_flag {
    char *path;          /* owned; NULL = empty slot */
    unsigned flags;
};

/* An open-addressing map path -> flags; entries are only ever added (a cleared entry keeps
 * its slot with flags 0) and all dropped together when a batch goes out. */
struct path_flags {
    struct path_flag *slots;
    size_t n_slots;      /* power of two, or 0 */
    size_t used;
    size_t n_set;        /* entries whose flags are not 0 (an upper bound) */
};

struct watch_root {
    char *path;
    enum watch_root_state state;
    char *message;       /* why it is not watching, or NULL */
    bool removed;        /* by watch_remove_root: the slot stays so root indices stay stable */
};

struct watch {
    uv_loop_t *loop;
    struct watch_options options;
    const struct watch_backend_ops *ops;
    struct watch_backend *backend;     /* NULL when it could not start */
    int backend_error;                 /* its -errno then */
    char *backend_message;
    uv_timer_t settle_timer;
    uv_timer_t vcs_timer;
    struct strset pending;             /* paths changed since the last batch went out */
    struct path_flags flags;
    uint64_t first_event_ns;           /* of the pending set */
    bool write_hold_started;
    uint64_t write_hold_since;         /* uv_now() when the batch started waiting for writes */
    bool gone_grace_used;
    bool waiting;                      /* the timer runs for a write or a vanished path */
    unsigned holds;                    /* WATCH_HOLD_* */
    char **vcs_locks;                  /* lock files present now */
    size_t n_vcs_locks;
    bool vcs_expired;                  /* the present locks held longer than defer_vcs_ms */
    char **gitdirs;                    /* repositories' git dirs being watched */
    size_t n_gitdirs;
    struct watch_root *roots;
    size_t n_roots;
    uint64_t rescans;
    uint64_t batches;
    uint64_t setup_ns;
    bool closing;                      /* watch_close called: nothing goes out any more */
    void (*close_cb)(void *data);
    void *close_data;
    int closing_parts;
};

/* ---- path flags ------------------------------------------------------------------- */

static uint64_t hash_path(const char *s) {
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h;
}

static struct path_flag *flags_find(const struct path_flags *m, const char *path) {
    if (m->n_slots == 0)
        return NULL;
    size_t mask = m->n_slots - 1;
    for (size_t i = (size_t)hash_path(path) & mask;; i = (i + 1) & mask) {
        if (!m->slots[i].path)
            return &m->slots[i];
        if (strcmp(m->slots[i].path, path) == 0)
            return &m->slots[i];
    }
}

static int flags_grow(struct path_flags *m) {
    size_t n = m->n_slots ? m->n_slots * 2 : 64;
    struct path_flag *slots = calloc(n, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (size_t k = 0; k < m->n_slots; k++) {
        if (!m->slots[k].path)
            continue;
        size_t i = (size_t)hash_path(m->slots[k].path) & (n - 1);
        while (slots[i].path)
            i = (i + 1) & (n - 1);
        slots[i] = m->slots[k];
    }
    free(m->slots);
    m->slots = slots;
    m->n_slots = n;
    return 0;
}

/* Sets the bits of set and clears those of clear for path. */
static void flags_update(struct path_flags *m, const char *path, unsigned set, unsigned clear) {
    struct path_flag *e = flags_find(m, path);
    if (!e || !e->path) {
        if (set == 0)
            return;
        if ((m->used + 1) * 2 > m->n_slots) {
            if (flags_grow(m) < 0)
                return;
        }
        e = flags_find(m, path);
        e->path = strdup(path);
        if (!e->path)
            return;
        e->flags = 0;
        m->used++;
    }
    if (e->flags == 0 && set != 0)
        m->n_set++;
    e->flags = (e->flags | set) & ~clear;
}

static unsigned flags_get(const struct path_flags *m, const char *path) {
    if (m->used == 0)
        return 0;
    const struct path_flag *e = flags_find(m, path);
    return e && e->path ? e->flags : 0;
}

static void flags_clear(struct path_flags *m) {
    for (size_t i = 0; i < m->n_slots; i++)
        free(m->slots[i].path);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* ---- batches ---------------------------------------------------------------------- */

static void on_settled(uv_timer_t *timer);

static void emit(struct watch *watch) {
    struct watch_batch *batch = calloc(1, sizeof(*batch));
    if (!batch) {
        log_error("watch: out of memory; dropping %zu changed paths", watch->pending.len);
        strset_clear(&watch->pending);
        flags_clear(&watch->flags);
        return;
    }
    batch->first_event_ns = watch->first_event_ns;
    batch->paths = strset_steal(&watch->pending, &batch->n_paths);
    flags_clear(&watch->flags);
    watch->write_hold_started = false;
    watch->gone_grace_used = false;
    watch->batches++;
    watch->options.on_batch(watch, batch, watch->options.data);
}

/* Sends the pending set unless a hold is set, or one of its paths is still being written
 * or has just vanished (then the timer is armed again). */
static void try_emit(struct watch *watch) {
    if (watch->pending.len == 0 || watch->holds != 0 || watch->closing)
        return;
    if (watch->flags.n_set > 0) {
        uint64_t now = uv_now(watch->loop);
        if (!watch->write_hold_started) {
            watch->write_hold_started = true;
            watch->write_hold_since = now;
        }
        if (now - watch->write_hold_since < WATCH_HOLD_WRITES_MS) {
            uint64_t wait = 0;
            for (size_t i = 0; i < watch->pending.len; i++) {
                const char *path = watch->pending.items[i];
                unsigned f = flags_get(&watch->flags, path);
                struct stat st;
                if (f & PATH_WRITING) {
                    wait = watch->options.settle_ms > 10 ? watch->options.settle_ms : 10;
                    break;
                }
                if ((f & PATH_GONE) && !watch->gone_grace_used && lstat(path, &st) < 0 &&
                    errno == ENOENT) {
                    watch->gone_grace_used = true;
                    wait = GONE_GRACE_MS;
                    break;
                }
            }
            if (wait > 0) {
                watch->waiting = true;
                uv_timer_start(&watch->settle_timer, on_settled, wait, 0);
                return;
            }
        }
    }
    emit(watch);
}

static void on_settled(uv_timer_t *timer) {
    struct watch *watch = timer->data;
    watch->waiting = false;
    try_emit(watch);
}

static void note_pending(struct watch *watch, const char *path) {
    if (watch->closing)
        return;
    if (watch->pending.len == 0)
        watch->first_event_ns = uv_hrtime();
    if (strset_add(&watch->pending, path) < 0) {
        log_error("watch: out of memory; change to %s lost", path);
        return;
    }
    /* Each event pushes the end of the batch back: it closes settle_ms after the last. */
    watch->waiting = false;
    uv_timer_start(&watch->settle_timer, on_settled, watch->options.settle_ms, 0);
}

void watch_note_change(struct watch *watch, const char *path) {
    if (watch->flags.used > 0)
        flags_update(&watch->flags, path, 0, PATH_GONE | PATH_WRITING);
    note_pending(watch, path);
}

void watch_note_gone(struct watch *watch, const char *path) {
    flags_update(&watch->flags, path, PATH_GONE, PATH_WRITING);
    note_pending(watch, path);
}

void watch_note_writing(struct watch *watch, const char *path) {
    flags_update(&watch->flags, path, PATH_WRITING, 0);
}

void watch_note_drained(struct watch *watch) {
    if (watch->options.settle_ms == 0 && watch->pending.len > 0 && !watch->waiting) {
        uv_timer_stop(&watch->settle_timer);
        try_emit(watch);
    }
}

/* ---- holds ------------------------------------------------------------------------ */

static void notify(struct watch *watch, const struct watch_notice *notice) {
    if (watch->options.on_notice)
        watch->options.on_notice(watch, notice, watch->options.data);
}

static const char *hold_name(unsigned hold) {
    return hold == WATCH_HOLD_PAUSE ? "pause" : hold == WATCH_HOLD_BUSY ? "busy" : "vcs";
}

void watch_hold(struct watch *watch, enum watch_hold hold) {
    if (watch->holds & hold)
        return;
    watch->holds |= hold;
    if (hold == WATCH_HOLD_PAUSE) {
        struct watch_notice n = {.kind = WATCH_NOTICE_HELD, .reason = hold_name(hold)};
        notify(watch, &n);
    }
}

static void release(struct watch *watch, unsigned hold, const char *reason) {
    if (!(watch->holds & hold))
        return;
    watch->holds &= ~hold;
    if (reason) {
        struct watch_notice n = {.kind = WATCH_NOTICE_RELEASED, .reason = reason,
                                 .n_pending = watch->pending.len};
        notify(watch, &n);
    }
    if (watch->holds == 0 && watch->pending.len > 0 &&
        !uv_is_active((uv_handle_t *)&watch->settle_timer))
        try_emit(watch);
}

void watch_release(struct watch *watch, enum watch_hold hold) {
    release(watch, hold, hold == WATCH_HOLD_PAUSE ? hold_name(hold) : NULL);
}

static void on_vcs_timeout(uv_timer_t *timer) {
    struct watch *watch = timer->data;
    log_warn("watch: %s has existed for %u ms (a stale lock left by a crashed git?); "
             "batches no longer wait for it", watch->n_vcs_locks ? watch->vcs_locks[0] : "?",
             watch->options.defer_vcs_ms);
    watch->vcs_expired = true;
    release(watch, WATCH_HOLD_VCS, "vcs_timeout");
}

void watch_note_vcs_lock(struct watch *watch, const char *lock_path, bool present) {
    size_t i;
    for (i = 0; i < watch->n_vcs_locks; i++)
        if (strcmp(watch->vcs_locks[i], lock_path) == 0)
            break;
    if (present) {
        if (i < watch->n_vcs_locks || watch->options.defer_vcs_ms == 0)
            return;
        char **locks = realloc(watch->vcs_locks, (watch->n_vcs_locks + 1) * sizeof(*locks));
        char *copy = strdup(lock_path);
        if (!locks || !copy) {
            free(copy);
            if (locks)
                watch->vcs_locks = locks;
            return;
        }
        watch->vcs_locks = locks;
        locks[watch->n_vcs_locks++] = copy;
        if (watch->n_vcs_locks == 1 && !watch->vcs_expired) {
            watch->holds |= WATCH_HOLD_VCS;
            uv_timer_start(&watch->vcs_timer, on_vcs_timeout, watch->options.defer_vcs_ms, 0);
            log_debug("watch: %s exists: batches are held until it goes", lock_path);
            struct watch_notice n = {.kind = WATCH_NOTICE_HELD, .reason = "vcs", .path = lock_path};
            notify(watch, &n);
        }
        return;
    }
    if (i == watch->n_vcs_locks)
        return;
    free(watch->vcs_locks[i]);
    watch->vcs_locks[i] = watch->vcs_locks[--watch->n_vcs_locks];
    if (watch->n_vcs_locks > 0)
        return;
    watch->vcs_expired = false;
    uv_timer_stop(&watch->vcs_timer);
    if (watch->holds & WATCH_HOLD_VCS) {
        log_debug("watch: %s is gone: %zu held paths go out", lock_path, watch->pending.len);
        /* The files git wrote are all in the queue before the lock's removal: settle from
         * here, then one batch. */
        watch->holds &= ~WATCH_HOLD_VCS;
        struct watch_notice n = {.kind = WATCH_NOTICE_RELEASED, .reason = "vcs",
                                 .n_pending = watch->pending.len};
        notify(watch, &n);
        if (watch->holds == 0 && watch->pending.len > 0 && !watch->closing) {
            watch->waiting = false;
            uv_timer_start(&watch->settle_timer, on_settled, watch->options.settle_ms, 0);
        }
    }
}

/* ---- roots ------------------------------------------------------------------------ */

void watch_note_root_state(struct watch *watch, size_t root, enum watch_root_state state,
                           const char *message) {
    if (root >= watch->n_roots)
        return;
    struct watch_root *r = &watch->roots[root];
    if (r->state == state && r->message && message && strcmp(r->message, message) == 0)
        return;
    r->state = state;
    free(r->message);
    r->message = message ? strdup(message) : NULL;
    if (state != WATCH_ROOT_WATCHING && watch->options.on_error)
        watch->options.on_error(watch, r->path, message ? message : "not watched",
                                watch->options.data);
}

void watch_note_root_restored(struct watch *watch, size_t root, size_t n_dirs) {
    if (root >= watch->n_roots)
        return;
    struct watch_root *r = &watch->roots[root];
    r->state = WATCH_ROOT_WATCHING;
    free(r->message);
    r->message = NULL;
    log_info("watch: %s is back: watching it again (%zu directories)", r->path, n_dirs);
    struct watch_notice n = {.kind = WATCH_NOTICE_RESTORED, .root = r->path, .n_dirs = n_dirs};
    notify(watch, &n);
}

void watch_note_rescan(struct watch *watch, const char *reason, size_t n_changed,
                       uint64_t duration_ns) {
    watch->rescans++;
    struct watch_notice n = {.kind = WATCH_NOTICE_RESCAN, .reason = reason,
                             .n_changed = n_changed, .duration_ns = duration_ns,
                             .n_dirs = watch_dir_count(watch)};
    notify(watch, &n);
}

const struct filter *watch_filter(const struct watch *watch) {
    return watch->options.filter;
}

const struct watch_options *watch_get_options(const struct watch *watch) {
    return &watch->options;
}

const char *watch_root(const struct watch *watch, size_t root) {
    return watch->roots[root].path;
}

size_t watch_roots(const struct watch *watch) {
    return watch->n_roots;
}

enum watch_root_state watch_root_state_of(const struct watch *watch, size_t root) {
    return watch->roots[root].state;
}

int watch_nearest_dir(const char *path, char *dir, size_t len) {
    snprintf(dir, len, "%s", path);
    struct stat st;
    while (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (!slash)
            return -ENOENT;
        if (slash == dir) {
            dir[1] = '\0';
            break;
        }
        *slash = '\0';
    }
    return 0;
}

int watch_describe_error(int e, const char *path, char *err, size_t errlen) {
    if (e == ENOSPC)
        snprintf(err, errlen,
                 "cannot watch %s: the inotify watch limit is reached; raise the sysctl "
                 "fs.inotify.max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288)",
                 path);
    else if (e == EMFILE || e == ENFILE)
        snprintf(err, errlen,
                 "cannot watch %s: the inotify instance limit is reached; raise the sysctl "
                 "fs.inotify.max_user_instances (e.g. sysctl fs.inotify.max_user_instances=1024), "
                 "or the open-files limit", path);
    else
        snprintf(err, errlen, "cannot watch %s: %s", path, strerror(e));
    return -e;
}

/* The git directory of the repository holding dir: dir/.git or the nearest above it, or
 * what a ".git" file (a worktree, a submodule) points to. Returns a malloc'd path or NULL. */
static char *find_gitdir(const char *dir) {
    char path[PATH_MAX];
    size_t len = strlen(dir);
    if (len >= sizeof(path) - 6)
        return NULL;
    memcpy(path, dir, len + 1);
    for (;;) {
        size_t base = len;
        memcpy(path + base, base == 1 ? ".git" : "/.git", base == 1 ? 5 : 6);
        struct stat st;
        if (lstat(path, &st) == 0) {
            if (S_ISDIR(st.st_mode))
                return strdup(path);
            if (S_ISREG(st.st_mode)) {
                char line[PATH_MAX + 16] = "";
                FILE *f = fopen(path, "re");
                if (f) {
                    if (!fgets(line, sizeof(line), f))
                        line[0] = '\0';
                    fclose(f);
                }
                line[strcspn(line, "\r\n")] = '\0';
                if (strncmp(line, "gitdir: ", 8) != 0)
                    return NULL;
                const char *target = line + 8;
                char joined[2 * PATH_MAX + 2];
                if (target[0] == '/')
                    snprintf(joined, sizeof(joined), "%s", target);
                else
                    snprintf(joined, sizeof(joined), "%.*s/%s", (int)base, path, target);
                return realpath(joined, NULL);
            }
        }
        path[base] = '\0';
        if (base <= 1)
            return NULL;
        char *slash = strrchr(path, '/');
        len = slash == path ? 1 : (size_t)(slash - path);
        path[len] = '\0';
    }
}

static void add_vcs(struct watch *watch, const char *root) {
    if (watch->options.defer_vcs_ms == 0 || !watch->backend)
        return;
    char *gitdir = find_gitdir(root);
    if (!gitdir)
        return;
    for (size_t i = 0; i < watch->n_gitdirs; i++) {
        if (strcmp(watch->gitdirs[i], gitdir) == 0) {
            free(gitdir);
            return;
        }
    }
    char err[PATH_MAX + 256];
    if (watch->ops->add_vcs(watch->backend, gitdir, err, sizeof(err)) < 0) {
        log_warn("watch: %s; batches will not wait for git", err);
        free(gitdir);
        return;
    }
    char **gitdirs = realloc(watch->gitdirs, (watch->n_gitdirs + 1) * sizeof(*gitdirs));
    if (!gitdirs) {
        free(gitdir);
        return;
    }
    watch->gitdirs = gitdirs;
    gitdirs[watch->n_gitdirs++] = gitdir;
    log_debug("watch: batches wait while %s/index.lock exists", gitdir);
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof(lock), "%s/index.lock", gitdir);
    if (access(lock, F_OK) == 0)
        watch_note_vcs_lock(watch, lock, true);
}

/* ---- lifetime --------------------------------------------------------------------- */

int watch_new(uv_loop_t *loop, const struct watch_options *options, struct watch **out,
              char *err, size_t errlen) {
    const struct watch_backend_ops *ops = &watch_uv_ops;
#ifdef __linux__
    if (options->backend == WATCH_BACKEND_INOTIFY)
        ops = &watch_inotify_ops;
#else
    if (options->backend == WATCH_BACKEND_INOTIFY)
        log_info("watch: inotify is Linux only; using the uv backend");
#endif
    struct watch *watch = calloc(1, sizeof(*watch));
    if (!watch) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    watch->loop = loop;
    watch->options = *options;
    watch->ops = ops;
    strset_init(&watch->pending);
    char berr[512];
    int r = ops->create(watch, loop, &watch->backend, berr, sizeof(berr));
    if (r < 0) {
        watch->backend = NULL;
        watch->backend_error = r;
        watch->backend_message = strdup(berr);
        log_error("watch: %s", berr);
    }
    uv_timer_init(loop, &watch->settle_timer);
    watch->settle_timer.data = watch;
    uv_timer_init(loop, &watch->vcs_timer);
    watch->vcs_timer.data = watch;
    *out = watch;
    return 0;
}

int watch_add_root(struct watch *watch, const char *path, char *err, size_t errlen) {
    struct watch_root *roots = realloc(watch->roots, (watch->n_roots + 1) * sizeof(*roots));
    if (!roots) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    watch->roots = roots;
    char *copy = strdup(path);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    size_t len = strlen(copy);
    while (len > 1 && copy[len - 1] == '/')
        copy[--len] = '\0';
    size_t i = watch->n_roots++;
    roots[i].path = copy;
    roots[i].state = WATCH_ROOT_FAILED;
    roots[i].message = NULL;
    roots[i].removed = false;
    int r;
    if (!watch->backend) {
        r = watch->backend_error;
        snprintf(err, errlen, "%s", watch->backend_message ? watch->backend_message : "no backend");
    } else {
        uint64_t started = uv_hrtime();
        r = watch->ops->add_root(watch->backend, i, err, errlen);
        watch->setup_ns += uv_hrtime() - started;
    }
    if (r == 0) {
        roots[i].state = WATCH_ROOT_WATCHING;
        add_vcs(watch, copy);
    } else {
        roots[i].message = strdup(err);
    }
    return r;
}

void watch_set_settle(struct watch *watch, unsigned settle_ms) {
    watch->options.settle_ms = settle_ms;
}

size_t watch_dir_count(const struct watch *watch) {
    return watch->backend ? watch->ops->dir_count(watch->backend) : 0;
}

int watch_remove_root(struct watch *watch, const char *path, char *err, size_t errlen) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    for (size_t i = 0; i < watch->n_roots; i++) {
        struct watch_root *root = &watch->roots[i];
        if (root->removed || strlen(root->path) != len || strncmp(root->path, path, len) != 0)
            continue;
        if (watch->backend)
            watch->ops->remove_root(watch->backend, i);
        root->removed = true;
        root->state = WATCH_ROOT_FAILED;
        return 0;
    }
    snprintf(err, errlen, "%s is not a watch root", path);
    return -ENOENT;
}

size_t watch_root_count(const struct watch *watch) {
    return watch->n_roots;
}

const char *watch_root_path(const struct watch *watch, size_t i) {
    if (i >= watch->n_roots || watch->roots[i].removed)
        return NULL;
    return watch->roots[i].path;
}

enum watch_root_state watch_root_state(const struct watch *watch, size_t i,
                                       const char **message) {
    if (i >= watch->n_roots) {
        if (message)
            *message = NULL;
        return WATCH_ROOT_FAILED;
    }
    if (message)
        *message = watch->roots[i].message;
    return watch->roots[i].state;
}

void watch_get_stats(const struct watch *watch, struct watch_stats *out) {
    memset(out, 0, sizeof(*out));
    out->backend = watch->ops->name;
    out->dirs = watch_dir_count(watch);
    out->rescans = watch->rescans;
    out->batches = watch->batches;
    out->pending = watch->pending.len;
    out->holds = watch->holds;
    out->vcs_lock = watch->n_vcs_locks > 0 ? watch->vcs_locks[0] : NULL;
    out->setup_ns = watch->setup_ns;
}

static void finish_close(struct watch *watch) {
    if (--watch->closing_parts > 0)
        return;
    void (*cb)(void *) = watch->close_cb;
    void *data = watch->close_data;
    strset_clear(&watch->pending);
    flags_clear(&watch->flags);
    for (size_t i = 0; i < watch->n_roots; i++) {
        free(watch->roots[i].path);
        free(watch->roots[i].message);
    }
    free(watch->roots);
    for (size_t i = 0; i < watch->n_vcs_locks; i++)
        free(watch->vcs_locks[i]);
    free(watch->vcs_locks);
    for (size_t i = 0; i < watch->n_gitdirs; i++)
        free(watch->gitdirs[i]);
    free(watch->gitdirs);
    free(watch->backend_message);
    free(watch);
    if (cb)
        cb(data);
}

static void on_timer_closed(uv_handle_t *handle) {
    finish_close(handle->data);
}

static void on_backend_closed(void *data) {
    finish_close(data);
}

void watch_close(struct watch *watch, void (*close_cb)(void *data), void *data) {
    watch->close_cb = close_cb;
    watch->close_data = data;
    watch->closing = true;
    watch->closing_parts = watch->backend ? 3 : 2;
    uv_close((uv_handle_t *)&watch->settle_timer, on_timer_closed);
    uv_close((uv_handle_t *)&watch->vcs_timer, on_timer_closed);
    if (watch->backend)
        watch->ops->close(watch->backend, on_backend_closed, watch);
}

void watch_batch_free(struct watch_batch *batch) {
    if (!batch)
        return;
    for (size_t i = 0; i < batch->n_paths; i++)
        free(batch->paths[i]);
    free(batch->paths);
    free(batch);
}
