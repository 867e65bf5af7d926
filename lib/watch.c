#include "watch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "log.h"
#include "strset.h"
#include "watch_backend.h"

/* How long a batch waits, once, for a path that was deleted or moved away to reappear
 * (an editor's rename-over in progress), ms. A real deletion is reported that much later. */
#define GONE_GRACE_MS 50

/* Per-path flags of the current pending set. */
#define PATH_GONE 1u     /* deleted or moved away, not written since */
#define PATH_WRITING 2u  /* created, truncated or written, not closed yet */

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
    size_t n_set;        /* entries whose flags are not 0 */
};

enum root_method {
    METHOD_EVENTS = 0,   /* the event backend alone */
    METHOD_BOTH = 1,     /* the event backend, and polled */
    METHOD_POLL = 2,     /* polled alone (backend = poll) */
};

struct watch_root {
    char *path;
    enum watch_root_state state;
    char *message;       /* why it is not watching, or NULL */
    bool removed;        /* by watch_remove_root: the slot stays so root indices stay stable */
    enum root_method method;
    char *why;           /* how it is watched, as status says it */
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
    struct watch_poll *poll;           /* NULL until a tree is polled */
    char **loaded;                     /* the loaded modules' files (watch_set_loaded) */
    size_t n_loaded;
    uint64_t recent_changes[WATCH_STORM_CHANGES]; /* uv_now() of the last changes, a ring */
    size_t recent_next;
    uint64_t fast_batches;
    bool must_settle;                  /* a walk found files: this batch waits the window */
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
    unsigned old = e->flags;
    e->flags = (e->flags | set) & ~clear;
    if (old == 0 && e->flags != 0)
        m->n_set++;
    else if (old != 0 && e->flags == 0)
        m->n_set--;
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
    watch->must_settle = false;
    if (watch->poll) {
        /* A change both inotify and the poll saw goes out once: the second sighting
         * finds the content it already sent. */
        size_t kept = 0;
        for (size_t i = 0; i < batch->n_paths; i++) {
            if (watch_poll_is_repeat(watch->poll, batch->paths[i])) {
                log_debug("watch: %s: content already sent; not again", batch->paths[i]);
                free(batch->paths[i]);
            } else {
                batch->paths[kept++] = batch->paths[i];
            }
        }
        batch->n_paths = kept;
        if (kept == 0) {
            watch_batch_free(batch);
            return;
        }
    }
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
    watch->recent_changes[watch->recent_next] = uv_now(watch->loop);
    watch->recent_next = (watch->recent_next + 1) % WATCH_STORM_CHANGES;
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

void watch_note_found(struct watch *watch, const char *path) {
    watch->must_settle = true;
    watch_note_change(watch, path);
}

void watch_note_gone(struct watch *watch, const char *path) {
    flags_update(&watch->flags, path, PATH_GONE, PATH_WRITING);
    note_pending(watch, path);
}

void watch_note_writing(struct watch *watch, const char *path) {
    flags_update(&watch->flags, path, PATH_WRITING, 0);
}

/* Whether the pending set may leave now rather than after the settle window: every path
 * in it finished (no file created, written or deleted and not yet closed or back, none
 * found by a walk), it is small, and files are not changing in numbers (the oldest of the last
 * WATCH_STORM_CHANGES changes is older than WATCH_STORM_WINDOW_MS). */
static bool settled_early(const struct watch *watch) {
    if (watch->flags.n_set > 0 || watch->pending.len > WATCH_FAST_MAX_PATHS ||
        watch->must_settle)
        return false;
    if (watch->ops && !watch->ops->reports_completion)
        return false;
    uint64_t oldest = watch->recent_changes[watch->recent_next];
    return oldest == 0 || uv_now(watch->loop) - oldest >= WATCH_STORM_WINDOW_MS;
}

void watch_note_drained(struct watch *watch) {
    if (watch->pending.len == 0 || watch->waiting)
        return;
    if (watch->options.settle_ms == 0 || settled_early(watch)) {
        uv_timer_stop(&watch->settle_timer);
        if (watch->options.settle_ms > 0 && watch->holds == 0)
            watch->fast_batches++;
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
    if (watch->options.defer_vcs_ms == 0 || (!watch->backend && !watch->poll))
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
    if (!watch->backend) {
        if (watch_poll_add_vcs(watch->poll, gitdir) < 0) {
            free(gitdir);
            return;
        }
    } else if (watch->ops->add_vcs(watch->backend, gitdir, err, sizeof(err)) < 0) {
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

/* ---- how each root is watched ------------------------------------------------------ */

/* Undoes the octal escapes of /proc/self/mounts (space, tab, newline, backslash). */
static void unescape_mount_path(char *s) {
    char *out = s;
    for (char *in = s; *in; in++) {
        if (in[0] == '\\' && in[1] >= '0' && in[1] <= '3' && in[2] >= '0' && in[2] <= '7' &&
            in[3] >= '0' && in[3] <= '7') {
            *out++ = (char)((in[1] - '0') * 64 + (in[2] - '0') * 8 + (in[3] - '0'));
            in += 3;
        } else {
            *out++ = *in;
        }
    }
    *out = '\0';
}

static bool path_at_or_below(const char *path, const char *dir) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    if (strncmp(path, dir, len) != 0)
        return false;
    return path[len] == '\0' || path[len] == '/' || (len == 1 && dir[0] == '/');
}

/* Calls fn for every mount of /proc/self/mounts (mount point unescaped, type). */
static void each_mount(void (*fn)(const char *dir, const char *type, void *data), void *data) {
    FILE *f = fopen("/proc/self/mounts", "re");
    if (!f)
        return;
    char line[PATH_MAX * 2];
    while (fgets(line, sizeof(line), f)) {
        char *save = NULL;
        char *dev = strtok_r(line, " ", &save);
        char *dir = dev ? strtok_r(NULL, " ", &save) : NULL;
        char *type = dir ? strtok_r(NULL, " ", &save) : NULL;
        if (!type)
            continue;
        unescape_mount_path(dir);
        fn(dir, type, data);
    }
    fclose(f);
}

struct mount_search {
    const char *path;
    size_t best_len;
    char type[64];
};

static void find_mount(const char *dir, const char *type, void *data) {
    struct mount_search *m = data;
    size_t len = strlen(dir);
    /* The last of equal mount points is the one on top. */
    if (path_at_or_below(m->path, dir) && len >= m->best_len) {
        m->best_len = len;
        snprintf(m->type, sizeof(m->type), "%s", type);
    }
}

static enum root_method choose_method(const struct watch *watch, const char *path, char *why,
                                      size_t len) {
    if (watch->options.backend == WATCH_BACKEND_POLL) {
        snprintf(why, len, "backend = poll");
        return METHOD_POLL;
    }
    for (size_t i = 0; i < watch->options.n_poll_dirs; i++) {
        if (path_at_or_below(path, watch->options.poll_dirs[i])) {
            snprintf(why, len, "poll = %s", watch->options.poll_dirs[i]);
            return METHOD_BOTH;
        }
    }
    struct mount_search m = {.path = path};
    each_mount(find_mount, &m);
    struct statfs sfs;
    bool remote = m.type[0] ? watch_fs_name_is_remote(m.type)
                            : statfs(path, &sfs) == 0 && watch_fs_magic_is_remote((long)sfs.f_type);
    if (remote) {
        snprintf(why, len, "%s file system", m.type[0] ? m.type : "network");
        return METHOD_BOTH;
    }
    snprintf(why, len, "local %s file system", m.type[0] ? m.type : "");
    return METHOD_EVENTS;
}

static int poll_tree(struct watch *watch, size_t root, const char *top, const char *why,
                     char *err, size_t errlen) {
    if (!watch->poll) {
        if (watch_poll_new(watch, watch->loop, watch->options.poll_interval_ms, &watch->poll) < 0) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        if (watch->n_loaded > 0)
            watch_poll_set_loaded(watch->poll, (const char *const *)watch->loaded, watch->n_loaded);
    }
    int r = watch_poll_add_tree(watch->poll, root, top, why, err, errlen);
    if (r == 0)
        log_info("watch: polling %s every %u ms (%s%s)", top, watch->options.poll_interval_ms, why,
                 strncmp(why, "local", 5) != 0 && strchr(why, '=') == NULL
                     ? ": changes made by other machines or through other mounts reach no inotify"
                     : "");
    return r;
}

/* Whether no component of dir below root is an ignored directory. */
static bool dir_is_watched(const struct watch *watch, const char *root, const char *dir) {
    size_t root_len = strlen(root);
    char rel[PATH_MAX];
    snprintf(rel, sizeof(rel), "%s", dir + root_len + (root_len > 1 ? 1 : 0));
    for (char *p = rel;;) {
        char *slash = strchr(p, '/');
        if (slash)
            *slash = '\0';
        bool ignored = filter_ignores_dir(watch->options.filter, rel, p);
        if (ignored || !slash)
            return !ignored;
        *slash = '/';
        p = slash + 1;
    }
}

struct inner_trees {
    struct watch *watch;
    size_t root;
    char **dirs;          /* top, then why, in pairs */
    size_t n;
};

static void collect_inner_tree(struct inner_trees *t, const char *dir, const char *why) {
    const char *root = watch_root(t->watch, t->root);
    if (!path_at_or_below(dir, root) || strcmp(dir, root) == 0 ||
        !dir_is_watched(t->watch, root, dir))
        return;
    for (size_t i = 0; i < t->n; i += 2)
        if (path_at_or_below(dir, t->dirs[i]))
            return;  /* inside a tree polled already */
    char **dirs = realloc(t->dirs, (t->n + 2) * sizeof(*dirs));
    if (!dirs)
        return;
    t->dirs = dirs;
    dirs[t->n] = strdup(dir);
    dirs[t->n + 1] = strdup(why);
    t->n += 2;
}

static void find_inner_mount(const char *dir, const char *type, void *data) {
    if (!watch_fs_name_is_remote(type))
        return;
    char why[128];
    snprintf(why, sizeof(why), "%s file system mounted there", type);
    collect_inner_tree(data, dir, why);
}

/* Polls, beside inotify, the directories below root i that are `poll` directories or
 * mounts of file systems inotify may be blind on. Failures are logged; the root's
 * inotify watches stand either way. */
static void poll_inner_trees(struct watch *watch, size_t root) {
    struct inner_trees t = {.watch = watch, .root = root};
    for (size_t i = 0; i < watch->options.n_poll_dirs; i++) {
        char why[PATH_MAX + 16];
        snprintf(why, sizeof(why), "poll = %s", watch->options.poll_dirs[i]);
        collect_inner_tree(&t, watch->options.poll_dirs[i], why);
    }
    each_mount(find_inner_mount, &t);
    for (size_t i = 0; i < t.n; i += 2) {
        char err[PATH_MAX + 256];
        if (t.dirs[i] && t.dirs[i + 1] &&
            poll_tree(watch, root, t.dirs[i], t.dirs[i + 1], err, sizeof(err)) < 0)
            log_warn("watch: %s; changes made elsewhere under it are not seen", err);
        free(t.dirs[i]);
        free(t.dirs[i + 1]);
    }
    free(t.dirs);
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
    if (options->backend == WATCH_BACKEND_POLL)
        ops = NULL;
    struct watch *watch = calloc(1, sizeof(*watch));
    if (!watch) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    watch->loop = loop;
    watch->options = *options;
    watch->ops = ops;
    char **poll_dirs = calloc(options->n_poll_dirs + 1, sizeof(*poll_dirs));
    for (size_t i = 0; poll_dirs && i < options->n_poll_dirs; i++) {
        poll_dirs[i] = strdup(options->poll_dirs[i]);
        if (!poll_dirs[i]) {
            while (i-- > 0)
                free(poll_dirs[i]);
            free(poll_dirs);
            poll_dirs = NULL;
        }
    }
    if (!poll_dirs) {
        free(watch);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    watch->options.poll_dirs = (const char *const *)poll_dirs;
    if (watch->options.poll_interval_ms == 0)
        watch->options.poll_interval_ms = WATCH_POLL_INTERVAL_MS;
    strset_init(&watch->pending);
    char berr[512];
    int r = ops ? ops->create(watch, loop, &watch->backend, berr, sizeof(berr)) : 0;
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
    roots[i].why = NULL;
    char why[PATH_MAX + 128];
    roots[i].method = choose_method(watch, copy, why, sizeof(why));
    roots[i].why = strdup(why);
    int r = 0;
    uint64_t started = uv_hrtime();
    if (roots[i].method != METHOD_POLL) {
        if (!watch->backend) {
            r = watch->backend_error;
            snprintf(err, errlen, "%s",
                     watch->backend_message ? watch->backend_message : "no backend");
        } else {
            r = watch->ops->add_root(watch->backend, i, err, errlen);
        }
        if ((r == -ENOSPC || r == -EMFILE || r == -ENFILE) && roots[i].method == METHOD_BOTH) {
            /* Polled anyway: polling alone beats not watching it at all. */
            log_warn("watch: %s; %s is polled alone", err, copy);
            roots[i].method = METHOD_POLL;
            snprintf(why + strlen(why), sizeof(why) - strlen(why), "; inotify limit reached");
            free(roots[i].why);
            roots[i].why = strdup(why);
            r = 0;
        }
    }
    if (r == 0 && roots[i].method != METHOD_EVENTS)
        r = poll_tree(watch, i, copy, why, err, errlen);
    if (r == 0 && roots[i].method == METHOD_EVENTS)
        poll_inner_trees(watch, i);
    watch->setup_ns += uv_hrtime() - started;
    if (r == 0) {
        roots[i].state = WATCH_ROOT_WATCHING;
        add_vcs(watch, copy);
    } else {
        if (watch->backend && roots[i].method != METHOD_POLL)
            watch->ops->remove_root(watch->backend, i);
        if (watch->poll)
            watch_poll_remove_root(watch->poll, i);
        roots[i].message = strdup(err);
    }
    return r;
}

int watch_set_loaded(struct watch *watch, const char *const *paths, size_t n) {
    char **copy = calloc(n ? n : 1, sizeof(*copy));
    if (!copy)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        copy[i] = strdup(paths[i]);
        if (!copy[i]) {
            while (i-- > 0)
                free(copy[i]);
            free(copy);
            return -ENOMEM;
        }
    }
    for (size_t i = 0; i < watch->n_loaded; i++)
        free(watch->loaded[i]);
    free(watch->loaded);
    watch->loaded = copy;
    watch->n_loaded = n;
    if (watch->poll)
        watch_poll_set_loaded(watch->poll, (const char *const *)copy, n);
    return 0;
}

const char *watch_root_method(const struct watch *watch, size_t i, const char **why) {
    if (why)
        *why = i < watch->n_roots ? watch->roots[i].why : NULL;
    if (i >= watch->n_roots)
        return NULL;
    const char *events = watch->ops ? watch->ops->name : "poll";
    switch (watch->roots[i].method) {
    case METHOD_POLL:
        return "poll";
    case METHOD_BOTH:
        return watch->ops == &watch_uv_ops ? "uv+poll" : "inotify+poll";
    default:
        return events;
    }
}

const char *watch_root_describe(const struct watch *watch, size_t i, char *buf, size_t len) {
    const char *why = NULL;
    const char *method = watch_root_method(watch, i, &why);
    snprintf(buf, len, "%s (%s)", method ? method : "nothing", why ? why : "");
    return buf;
}

size_t watch_root_polled_count(const struct watch *watch, size_t i) {
    if (!watch->poll || i >= watch->n_roots || watch->roots[i].method != METHOD_EVENTS)
        return 0;
    return watch_poll_tree_count(watch->poll, i);
}

const char *watch_root_polled(const struct watch *watch, size_t i, size_t k, const char **why,
                              const char **problem) {
    return watch_poll_tree(watch->poll, i, k, why, problem);
}

void watch_note_poll_problem(struct watch *watch, size_t root, const char *top,
                             const char *message, bool lost) {
    if (root >= watch->n_roots)
        return;
    struct watch_root *r = &watch->roots[root];
    if (strcmp(r->path, top) == 0) {
        watch_note_root_state(watch, root, lost ? WATCH_ROOT_LOST : WATCH_ROOT_FAILED, message);
        return;
    }
    if (watch->options.on_error)
        watch->options.on_error(watch, top, message, watch->options.data);
}

void watch_note_poll_restored(struct watch *watch, size_t root, const char *top,
                              size_t n_dirs) {
    if (root >= watch->n_roots)
        return;
    struct watch_root *r = &watch->roots[root];
    bool whole = strcmp(r->path, top) == 0;
    if (r->method != METHOD_POLL && watch->backend &&
        (whole || r->state == WATCH_ROOT_WATCHING)) {
        /* inotify dropped its watches of the tree when it was unmounted, or watched the
         * directory the mount covers now: the root is watched afresh (nothing reported;
         * the poll's walk reported what changed meanwhile). */
        char err[PATH_MAX + 256];
        watch->ops->remove_root(watch->backend, root);
        if (watch->ops->add_root(watch->backend, root, err, sizeof(err)) < 0)
            log_warn("watch: %s; %s is polled alone", err, top);
    }
    if (whole) {
        watch_note_root_restored(watch, root, n_dirs);
        return;
    }
    log_info("watch: %s can be read again: polling it (%zu directories)", top, n_dirs);
    struct watch_notice n = {.kind = WATCH_NOTICE_RESTORED, .root = top, .n_dirs = n_dirs};
    notify(watch, &n);
}

void watch_set_settle(struct watch *watch, unsigned settle_ms) {
    watch->options.settle_ms = settle_ms;
}

size_t watch_dir_count(const struct watch *watch) {
    if (watch->backend)
        return watch->ops->dir_count(watch->backend);
    if (watch->poll) {
        struct watch_stats st;
        watch_poll_get_stats(watch->poll, &st);
        return st.polled_dirs;
    }
    return 0;
}

int watch_remove_root(struct watch *watch, const char *path, char *err, size_t errlen) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    for (size_t i = 0; i < watch->n_roots; i++) {
        struct watch_root *root = &watch->roots[i];
        if (root->removed || strlen(root->path) != len || strncmp(root->path, path, len) != 0)
            continue;
        if (watch->backend && root->method != METHOD_POLL)
            watch->ops->remove_root(watch->backend, i);
        if (watch->poll)
            watch_poll_remove_root(watch->poll, i);
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
    if (watch->poll)
        watch_poll_get_stats(watch->poll, out);
    out->backend = watch->ops ? watch->ops->name : "poll";
    out->poll_interval_ms = watch->options.poll_interval_ms;
    out->fast_batches = watch->fast_batches;
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
        free(watch->roots[i].why);
    }
    for (size_t i = 0; i < watch->n_loaded; i++)
        free(watch->loaded[i]);
    free(watch->loaded);
    free(watch->roots);
    for (size_t i = 0; i < watch->n_vcs_locks; i++)
        free(watch->vcs_locks[i]);
    free(watch->vcs_locks);
    for (size_t i = 0; i < watch->n_gitdirs; i++)
        free(watch->gitdirs[i]);
    free(watch->gitdirs);
    for (size_t i = 0; i < watch->options.n_poll_dirs; i++)
        free((char *)watch->options.poll_dirs[i]);
    free((char **)watch->options.poll_dirs);
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
    watch->closing_parts = 2 + (watch->backend ? 1 : 0) + (watch->poll ? 1 : 0);
    uv_close((uv_handle_t *)&watch->settle_timer, on_timer_closed);
    uv_close((uv_handle_t *)&watch->vcs_timer, on_timer_closed);
    if (watch->backend)
        watch->ops->close(watch->backend, on_backend_closed, watch);
    if (watch->poll)
        watch_poll_close(watch->poll, on_backend_closed, watch);
}

void watch_batch_free(struct watch_batch *batch) {
    if (!batch)
        return;
    for (size_t i = 0; i < batch->n_paths; i++)
        free(batch->paths[i]);
    free(batch->paths);
    free(batch);
}
