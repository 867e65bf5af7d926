/*
 * Portable backend on uv_fs_event_t: one handle per watched directory (libuv's inotify on
 * Linux, kqueue on the BSDs, FSEvents on macOS), selected with `[watch] backend = uv`.
 *
 * What it does not do, next to the inotify backend (docs/watching.md):
 * - no overflow detection: libuv drops IN_Q_OVERFLOW (and FSEvents' "must rescan"), so
 *   changes lost by the kernel stay lost;
 * - no "finished write" event: libuv reports a change on every write (IN_MODIFY) and on
 *   attribute changes, so only the settle window separates a half-written file from a
 *   saved one; a writer that pauses longer than settle_ms mid-file can be batched early;
 * - a renamed directory is dropped and watched again under its new name (its files are
 *   reported as new), rather than followed;
 * - where the kernel names no file (kqueue), a change in a directory makes it be listed
 *   again, and the accepted files whose ctime is at or after its last listing are
 *   reported; a file deleted there is not reported.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "watch_backend.h"

#define RESCAN_MARGIN_NS (100 * 1000000LL)

enum uvdir_kind {
    UVDIR_TREE,       /* a directory of a root's tree */
    UVDIR_VCS,        /* a git dir, for index.lock */
    UVDIR_SENTINEL,   /* the nearest existing ancestor of a lost root */
};

struct uvdir {
    uv_fs_event_t handle;
    struct watch_backend *b;
    enum uvdir_kind kind;
    size_t root;
    char *path;              /* absolute */
    dev_t dev;
    ino_t ino;
    int64_t listed_ns;       /* CLOCK_REALTIME when last listed (kqueue: no file names) */
    bool locked;             /* VCS: index.lock exists */
    bool closing;
};

struct watch_backend {
    struct watch *watch;
    uv_loop_t *loop;
    struct uvdir **dirs;     /* every open handle, any kind */
    size_t n_dirs, cap_dirs;
    size_t n_tree;
    size_t open_handles;     /* handles not yet closed (closing ones included) */
    bool closing;
    void (*close_cb)(void *data);
    void *close_data;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void maybe_finish_close(struct watch_backend *b) {
    if (!b->closing || b->open_handles > 0)
        return;
    void (*cb)(void *) = b->close_cb;
    void *data = b->close_data;
    free(b->dirs);
    free(b);
    if (cb)
        cb(data);
}

static void on_handle_closed(uv_handle_t *handle) {
    struct uvdir *d = handle->data;
    struct watch_backend *b = d->b;
    free(d->path);
    free(d);
    b->open_handles--;
    maybe_finish_close(b);
}

/* Stops d and takes it out of the list; its memory goes in the close callback. */
static void uvdir_close(struct watch_backend *b, struct uvdir *d) {
    if (d->closing)
        return;
    d->closing = true;
    for (size_t i = 0; i < b->n_dirs; i++) {
        if (b->dirs[i] == d) {
            b->dirs[i] = b->dirs[--b->n_dirs];
            break;
        }
    }
    if (d->kind == UVDIR_TREE)
        b->n_tree--;
    uv_fs_event_stop(&d->handle);
    uv_close((uv_handle_t *)&d->handle, on_handle_closed);
}

static bool under(const char *path, const char *dir) {
    size_t len = strlen(dir);
    return strncmp(path, dir, len) == 0 && (path[len] == '\0' || path[len] == '/');
}

/* Closes the tree handles at path and below it. */
static void close_tree(struct watch_backend *b, const char *path) {
    char *copy = strdup(path);
    if (!copy)
        return;
    for (size_t i = 0; i < b->n_dirs;) {
        struct uvdir *d = b->dirs[i];
        if (d->kind == UVDIR_TREE && under(d->path, copy))
            uvdir_close(b, d);  /* moves the last entry to i */
        else
            i++;
    }
    free(copy);
}

static struct uvdir *find_tree(struct watch_backend *b, const char *path) {
    for (size_t i = 0; i < b->n_dirs; i++)
        if (b->dirs[i]->kind == UVDIR_TREE && strcmp(b->dirs[i]->path, path) == 0)
            return b->dirs[i];
    return NULL;
}

static void on_fs_event(uv_fs_event_t *handle, const char *filename, int events, int status);

/* Starts a handle on the directory path. Returns it, or NULL with *e set. */
static struct uvdir *uvdir_start(struct watch_backend *b, enum uvdir_kind kind, size_t root,
                                 const char *path, int *e) {
    struct stat st;
    if (stat(path, &st) < 0) {
        *e = -errno;
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        *e = -ENOTDIR;
        return NULL;
    }
    if (b->n_dirs == b->cap_dirs) {
        size_t cap = b->cap_dirs ? b->cap_dirs * 2 : 256;
        struct uvdir **dirs = realloc(b->dirs, cap * sizeof(*dirs));
        if (!dirs) {
            *e = -ENOMEM;
            return NULL;
        }
        b->dirs = dirs;
        b->cap_dirs = cap;
    }
    struct uvdir *d = calloc(1, sizeof(*d));
    if (!d || !(d->path = strdup(path))) {
        free(d);
        *e = -ENOMEM;
        return NULL;
    }
    d->b = b;
    d->kind = kind;
    d->root = root;
    d->dev = st.st_dev;
    d->ino = st.st_ino;
    d->listed_ns = now_ns();
    uv_fs_event_init(b->loop, &d->handle);
    d->handle.data = d;
    b->open_handles++;
    int r = uv_fs_event_start(&d->handle, on_fs_event, path, 0);
    if (r < 0) {
        d->closing = true;
        uv_close((uv_handle_t *)&d->handle, on_handle_closed);
        *e = r;
        return NULL;
    }
    b->dirs[b->n_dirs++] = d;
    if (kind == UVDIR_TREE)
        b->n_tree++;
    *e = 0;
    return d;
}

/* ---- walking ---------------------------------------------------------------------- */

struct path_stack {
    char **items;
    size_t len, cap;
};

static int stack_push(struct path_stack *s, const char *path) {
    if (s->len == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        char **items = realloc(s->items, cap * sizeof(*items));
        if (!items)
            return -ENOMEM;
        s->items = items;
        s->cap = cap;
    }
    if (!(s->items[s->len] = strdup(path)))
        return -ENOMEM;
    s->len++;
    return 0;
}

/* Lists the directory d: new subdirectories are pushed onto stack (when given), accepted
 * files are reported: all of them when since is INT64_MIN, else those whose ctime is at
 * or after since. */
static int list_dir(struct watch_backend *b, size_t root, const char *dir, struct path_stack *stack,
                    int64_t since, bool report, size_t *n_changed) {
    const struct watch_options *options = watch_get_options(b->watch);
    size_t root_len = strlen(watch_root(b->watch, root));
    DIR *dp = opendir(dir);
    if (!dp)
        return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
    char path[PATH_MAX];
    struct dirent *ent;
    int result = 0;
    while (result == 0 && (ent = readdir(dp)) != NULL) {
        const char *name = ent->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
            continue;
        int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (n < 0 || (size_t)n >= sizeof(path))
            continue;
        const char *rel = (size_t)n > root_len ? path + root_len + 1 : "";
        struct stat st;
        bool is_dir = false, is_file = false;
        int type = ent->d_type;
        if (type == DT_DIR) {
            is_dir = true;
        } else if (type == DT_REG) {
            is_file = true;
        } else if (type == DT_LNK || type == DT_UNKNOWN) {
            struct stat lst;
            if (lstat(path, &lst) < 0)
                continue;
            if (S_ISDIR(lst.st_mode))
                is_dir = true;
            else if (S_ISREG(lst.st_mode))
                is_file = true;
            else if (S_ISLNK(lst.st_mode) && stat(path, &st) == 0) {
                is_dir = S_ISDIR(st.st_mode) && options->follow_symlinks;
                is_file = S_ISREG(st.st_mode);
            }
        }
        if (is_dir) {
            if (stack && !filter_ignores_dir(options->filter, rel, name) && !find_tree(b, path))
                result = stack_push(stack, path);
        } else if (is_file && report && filter_accepts_file(options->filter, rel, name)) {
            if (since != INT64_MIN) {
                if (stat(path, &st) < 0 ||
                    (int64_t)st.st_ctime * 1000000000LL + st.st_ctim.tv_nsec < since)
                    continue;
            }
            watch_note_found(b->watch, path);
            if (n_changed)
                (*n_changed)++;
        }
    }
    closedir(dp);
    return result;
}

/* Watches top and every non-ignored directory below it; report: every accepted file found
 * is reported. Returns 0 or a negative errno with a message in err (the walk stops at a
 * limit; an error on top itself is returned too). */
static int add_tree(struct watch_backend *b, size_t root, const char *top, bool report,
                    char *err, size_t errlen) {
    struct path_stack stack = {0};
    int result = stack_push(&stack, top);
    bool is_top = true;
    char *seen_err = NULL;
    while (result == 0 && stack.len > 0) {
        char *dir = stack.items[--stack.len];
        int e = 0;
        struct uvdir *d = find_tree(b, dir);
        if (!d)
            d = uvdir_start(b, UVDIR_TREE, root, dir, &e);
        else if (!is_top) {
            free(dir);
            continue;
        }
        if (!d) {
            if (is_top || e == UV_ENOSPC || e == -ENOSPC || e == -ENOMEM) {
                result = watch_describe_error(e == UV_ENOSPC ? ENOSPC : -e, dir, err, errlen);
            } else if (e != -ENOENT && e != -ENOTDIR) {
                log_warn("watch: cannot watch %s: %s", dir, uv_strerror(e));
            }
            free(dir);
            is_top = false;
            continue;
        }
        is_top = false;
        int r = list_dir(b, root, dir, &stack, INT64_MIN, report, NULL);
        if (r < 0 && r != -ENOMEM)
            log_warn("watch: cannot list %s: %s", dir, strerror(-r));
        else if (r == -ENOMEM)
            result = watch_describe_error(ENOMEM, dir, err, errlen);
        free(dir);
    }
    for (size_t i = 0; i < stack.len; i++)
        free(stack.items[i]);
    free(stack.items);
    free(seen_err);
    return result;
}

/* ---- lost roots ------------------------------------------------------------------- */

static struct uvdir *sentinel_of(struct watch_backend *b, size_t root) {
    for (size_t i = 0; i < b->n_dirs; i++)
        if (b->dirs[i]->kind == UVDIR_SENTINEL && b->dirs[i]->root == root)
            return b->dirs[i];
    return NULL;
}

static void sentinel_install(struct watch_backend *b, size_t root) {
    const char *path = watch_root(b->watch, root);
    char dir[PATH_MAX];
    for (int tries = 0; tries < 64; tries++) {
        if (watch_nearest_dir(path, dir, sizeof(dir)) < 0)
            return;
        struct uvdir *s = sentinel_of(b, root);
        if (strcmp(dir, path) == 0) {
            char err[PATH_MAX + 256];
            int r = add_tree(b, root, path, true, err, sizeof(err));
            if (r == -ENOENT || r == -ENOTDIR)
                continue;
            if (s)
                uvdir_close(b, s);
            if (r < 0) {
                close_tree(b, path);
                watch_note_root_state(b->watch, root, WATCH_ROOT_FAILED, err);
                return;
            }
            size_t n = 0;
            for (size_t i = 0; i < b->n_dirs; i++)
                if (b->dirs[i]->kind == UVDIR_TREE && b->dirs[i]->root == root)
                    n++;
            watch_note_root_restored(b->watch, root, n);
            return;
        }
        if (s && strcmp(s->path, dir) == 0)
            return;
        if (s)
            uvdir_close(b, s);
        int e;
        if (!uvdir_start(b, UVDIR_SENTINEL, root, dir, &e)) {
            log_warn("watch: cannot wait for %s to reappear: %s", path, uv_strerror(e));
            return;
        }
        size_t dlen = strlen(dir);
        const char *rest = path + dlen + (dlen > 1 ? 1 : 0);
        char next[PATH_MAX];
        snprintf(next, sizeof(next), "%.*s", (int)(rest - path + strcspn(rest, "/")), path);
        struct stat st;
        if (stat(next, &st) < 0)
            return;
    }
}

/* ---- events ----------------------------------------------------------------------- */

static void tree_event(struct watch_backend *b, struct uvdir *d, const char *filename) {
    const struct watch_options *options = watch_get_options(b->watch);
    size_t root = d->root;
    const char *root_path = watch_root(b->watch, root);
    struct stat st;

    /* The directory itself gone or replaced? */
    if (stat(d->path, &st) < 0 || st.st_ino != d->ino || st.st_dev != d->dev) {
        bool is_root = strcmp(d->path, root_path) == 0;
        char *path = strdup(d->path);
        if (path) {
            close_tree(b, path);
            free(path);
        }
        if (is_root) {
            char message[PATH_MAX + 64];
            snprintf(message, sizeof(message), "watch root %s was deleted or moved away", root_path);
            watch_note_root_state(b->watch, root, WATCH_ROOT_LOST, message);
            sentinel_install(b, root);
        }
        return;
    }
    if (!filename) {
        /* kqueue names no file: list the directory again. */
        int64_t since = d->listed_ns - RESCAN_MARGIN_NS;
        d->listed_ns = now_ns();
        struct path_stack stack = {0};
        list_dir(b, root, d->path, &stack, since, true, NULL);
        for (size_t i = 0; i < stack.len; i++) {
            char err[PATH_MAX + 256];
            if (add_tree(b, root, stack.items[i], true, err, sizeof(err)) == -ENOSPC)
                watch_note_root_state(b->watch, root, WATCH_ROOT_FAILED, err);
            free(stack.items[i]);
        }
        free(stack.items);
        return;
    }
    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%s", d->path, filename);
    if (n < 0 || (size_t)n >= sizeof(path))
        return;
    const char *rel = (size_t)n > strlen(root_path) ? path + strlen(root_path) + 1 : "";
    const char *name = strrchr(path, '/') + 1;
    struct stat lst;
    if (lstat(path, &lst) < 0) {
        if (find_tree(b, path))
            close_tree(b, path);
        else if (filter_accepts_file(options->filter, rel, name))
            watch_note_gone(b->watch, path);
        return;
    }
    bool is_dir = S_ISDIR(lst.st_mode) ||
                  (S_ISLNK(lst.st_mode) && options->follow_symlinks && stat(path, &st) == 0 &&
                   S_ISDIR(st.st_mode));
    if (is_dir) {
        struct uvdir *c = find_tree(b, path);
        if (c && lstat(path, &st) == 0 && (c->ino != st.st_ino || c->dev != st.st_dev)) {
            close_tree(b, path);  /* another directory under the same name */
            c = NULL;
        }
        if (c || filter_ignores_dir(options->filter, rel, name))
            return;
        char err[PATH_MAX + 256];
        int r = add_tree(b, root, path, true, err, sizeof(err));
        if (r == -ENOSPC)
            watch_note_root_state(b->watch, root, WATCH_ROOT_FAILED, err);
        else if (r < 0 && r != -ENOENT && r != -ENOTDIR)
            log_warn("watch: %s", err);
        return;
    }
    if (find_tree(b, path))
        close_tree(b, path);  /* a directory replaced by a file */
    if ((S_ISREG(lst.st_mode) || S_ISLNK(lst.st_mode)) && filter_accepts_file(options->filter, rel, name))
        watch_note_change(b->watch, path);
}

static void on_fs_event(uv_fs_event_t *handle, const char *filename, int events, int status) {
    struct uvdir *d = handle->data;
    struct watch_backend *b = d->b;
    (void)events;
    if (d->closing || b->closing)
        return;
    if (status < 0) {
        log_warn("watch: %s: %s", d->path, uv_strerror(status));
        return;
    }
    switch (d->kind) {
    case UVDIR_TREE:
        tree_event(b, d, filename);
        break;
    case UVDIR_VCS: {
        char lock[PATH_MAX + 16];
        snprintf(lock, sizeof(lock), "%s/index.lock", d->path);
        if (filename && strcmp(filename, "index.lock") != 0)
            break;
        bool present = access(lock, F_OK) == 0;
        if (present != d->locked) {
            d->locked = present;
            watch_note_vcs_lock(b->watch, lock, present);
        }
        break;
    }
    case UVDIR_SENTINEL:
        sentinel_install(b, d->root);
        break;
    }
    watch_note_drained(b->watch);
}

/* ---- the backend interface ---------------------------------------------------------- */

static int uv_create(struct watch *watch, uv_loop_t *loop, struct watch_backend **out, char *err,
                     size_t errlen) {
    struct watch_backend *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    b->watch = watch;
    b->loop = loop;
    *out = b;
    return 0;
}

static int uv_add_root(struct watch_backend *b, size_t root, char *err, size_t errlen) {
    const char *path = watch_root(b->watch, root);
    int r = add_tree(b, root, path, false, err, errlen);
    if (r < 0)
        close_tree(b, path);
    return r;
}

static int uv_add_vcs(struct watch_backend *b, const char *gitdir, char *err, size_t errlen) {
    int e;
    struct uvdir *d = uvdir_start(b, UVDIR_VCS, 0, gitdir, &e);
    if (!d)
        return watch_describe_error(e == UV_ENOSPC ? ENOSPC : -e, gitdir, err, errlen);
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof(lock), "%s/index.lock", gitdir);
    d->locked = access(lock, F_OK) == 0;
    return 0;
}

static size_t uv_dir_count(const struct watch_backend *b) {
    return b->n_tree;
}

static void uv_backend_close(struct watch_backend *b, void (*close_cb)(void *data), void *data) {
    b->close_cb = close_cb;
    b->close_data = data;
    while (b->n_dirs > 0)
        uvdir_close(b, b->dirs[b->n_dirs - 1]);
    b->closing = true;
    maybe_finish_close(b);
}

static void uv_remove_root(struct watch_backend *b, size_t root) {
    for (size_t i = 0; i < b->n_dirs;) {
        struct uvdir *d = b->dirs[i];
        if ((d->kind == UVDIR_TREE || d->kind == UVDIR_SENTINEL) && d->root == root)
            uvdir_close(b, d);  /* moves the last entry to i */
        else
            i++;
    }
}

const struct watch_backend_ops watch_uv_ops = {
    .name = "uv",
    .reports_completion = false,
    .create = uv_create,
    .add_root = uv_add_root,
    .add_vcs = uv_add_vcs,
    .dir_count = uv_dir_count,
    .remove_root = uv_remove_root,
    .close = uv_backend_close,
};
