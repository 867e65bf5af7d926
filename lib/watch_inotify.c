/*
 * Linux backend: one inotify instance, read from a uv_poll_t, with a watch on every
 * directory of every root (inotify(7): a directory watch reports events for the files in
 * it, so files need no watch of their own). New directories are watched, then scanned, in
 * that order, so a file created in one between its creation and our watch is still seen.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "watch_backend.h"

/* IN_CLOSE_WRITE and IN_MOVED_TO mark a finished write; IN_DELETE and IN_MOVED_FROM a file
 * gone (the module stays loaded; the reload event says so). IN_CREATE is for directories
 * (a new file is reported by its IN_CLOSE_WRITE). IN_ONLYDIR and IN_DONT_FOLLOW keep a
 * racing symlink or file from being watched in a directory's place. */
#define DIR_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | \
                  IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)

struct watched_dir {
    char *path;   /* absolute */
    size_t root;  /* index of its root in watch.c */
    size_t root_len;
};

struct watch_backend {
    struct watch *watch;
    int fd;
    uv_poll_t poll;
    struct watched_dir **dirs; /* indexed by watch descriptor */
    size_t n_dirs_slots;
    size_t n_dirs;
    void (*close_cb)(void *data);
    void *close_data;
};

static struct watched_dir *dir_get(struct watch_backend *b, int wd) {
    if (wd < 0 || (size_t)wd >= b->n_dirs_slots)
        return NULL;
    return b->dirs[wd];
}

static void dir_forget(struct watch_backend *b, int wd) {
    struct watched_dir *d = dir_get(b, wd);
    if (!d)
        return;
    b->dirs[wd] = NULL;
    b->n_dirs--;
    free(d->path);
    free(d);
}

static int dir_set(struct watch_backend *b, int wd, const char *path, size_t root) {
    if ((size_t)wd >= b->n_dirs_slots) {
        size_t n = b->n_dirs_slots ? b->n_dirs_slots : 256;
        while (n <= (size_t)wd)
            n *= 2;
        struct watched_dir **dirs = realloc(b->dirs, n * sizeof(*dirs));
        if (!dirs)
            return -ENOMEM;
        memset(dirs + b->n_dirs_slots, 0, (n - b->n_dirs_slots) * sizeof(*dirs));
        b->dirs = dirs;
        b->n_dirs_slots = n;
    }
    char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    struct watched_dir *d = b->dirs[wd];
    if (d) {
        /* The same inode again (a directory renamed within the tree): the watch
         * descriptor survived the rename, its path must follow. */
        free(d->path);
    } else {
        d = calloc(1, sizeof(*d));
        if (!d) {
            free(copy);
            return -ENOMEM;
        }
        b->dirs[wd] = d;
        b->n_dirs++;
    }
    d->path = copy;
    d->root = root;
    d->root_len = strlen(watch_root(b->watch, root));
    return 0;
}

static const char *relative_to_root(const char *path, size_t root_len) {
    if (strlen(path) <= root_len)
        return "";
    return path + root_len + 1;
}

static int describe_add_error(int e, const char *path, char *err, size_t errlen) {
    if (e == ENOSPC)
        snprintf(err, errlen,
                 "cannot watch %s: the inotify watch limit is reached; raise the sysctl "
                 "fs.inotify.max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288)",
                 path);
    else
        snprintf(err, errlen, "cannot watch %s: %s", path, strerror(e));
    return -e;
}

/* A growable stack of directory paths still to walk. */
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
    s->items[s->len] = strdup(path);
    if (!s->items[s->len])
        return -ENOMEM;
    s->len++;
    return 0;
}

static bool entry_is_dir(int dirfd, struct dirent *entry) {
    if (entry->d_type == DT_DIR)
        return true;
    if (entry->d_type != DT_UNKNOWN)
        return false;
    struct stat st;
    return fstatat(dirfd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

/*
 * Watches the directory at top and every non-ignored directory below it. When
 * report_files is set (a directory that appeared after the start), every accepted file
 * found is reported as changed. Errors below the top are logged and skipped; an error on
 * the top is returned.
 */
static int add_tree(struct watch_backend *b, const char *top, size_t root, bool report_files,
                    char *err, size_t errlen) {
    const struct filter *filter = watch_filter(b->watch);
    size_t root_len = strlen(watch_root(b->watch, root));
    struct path_stack stack = {0};
    int result = stack_push(&stack, top);
    bool is_top = true;
    char path[PATH_MAX];

    while (result == 0 && stack.len > 0) {
        char *dir = stack.items[--stack.len];
        int wd = inotify_add_watch(b->fd, dir, DIR_MASK);
        if (wd < 0) {
            int e = errno;
            if (is_top) {
                result = describe_add_error(e, dir, err, errlen);
            } else if (e == ENOSPC) {
                char message[PATH_MAX + 200];
                describe_add_error(e, dir, message, sizeof(message));
                log_error("watch: %s", message);
            } else if (e != ENOENT && e != ENOTDIR) {
                log_warn("watch: cannot watch %s: %s", dir, strerror(e));
            }
            free(dir);
            is_top = false;
            continue;
        }
        is_top = false;
        if (dir_set(b, wd, dir, root) < 0) {
            snprintf(err, errlen, "out of memory");
            result = -ENOMEM;
            free(dir);
            break;
        }
        DIR *d = opendir(dir);
        if (!d) {
            if (errno != ENOENT)
                log_warn("watch: cannot list %s: %s", dir, strerror(errno));
            free(dir);
            continue;
        }
        struct dirent *entry;
        while ((entry = readdir(d)) != NULL) {
            const char *name = entry->d_name;
            if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
                continue;
            int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
            if (n < 0 || (size_t)n >= sizeof(path))
                continue;
            const char *rel = relative_to_root(path, root_len);
            if (entry_is_dir(dirfd(d), entry)) {
                if (!filter_ignores_dir(filter, rel, name) && stack_push(&stack, path) < 0) {
                    result = -ENOMEM;
                    snprintf(err, errlen, "out of memory");
                    break;
                }
            } else if (report_files && (entry->d_type == DT_REG || entry->d_type == DT_UNKNOWN) &&
                       filter_accepts_file(filter, rel, name)) {
                watch_note_change(b->watch, path);
            }
        }
        closedir(d);
        free(dir);
    }
    for (size_t i = 0; i < stack.len; i++)
        free(stack.items[i]);
    free(stack.items);
    return result;
}

/* Drops the watches of the directory at path and of everything below it (it was moved
 * away; if it moved within the tree, IN_MOVED_TO adds it again under its new path). */
static void remove_tree(struct watch_backend *b, const char *path) {
    size_t len = strlen(path);
    for (size_t wd = 0; wd < b->n_dirs_slots; wd++) {
        struct watched_dir *d = b->dirs[wd];
        if (!d)
            continue;
        if (strncmp(d->path, path, len) == 0 && (d->path[len] == '\0' || d->path[len] == '/')) {
            inotify_rm_watch(b->fd, (int)wd);
            dir_forget(b, (int)wd);
        }
    }
}

static void handle_event(struct watch_backend *b, const struct inotify_event *ev) {
    if (ev->mask & IN_Q_OVERFLOW) {
        log_warn("watch: the inotify queue overflowed (fs.inotify.max_queued_events); "
                 "changes may have been missed");
        return;
    }
    struct watched_dir *d = dir_get(b, ev->wd);
    if (!d)
        return;
    if (ev->mask & IN_IGNORED) {
        dir_forget(b, ev->wd);
        return;
    }
    if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        if (d->root_len == strlen(d->path)) {
            char message[PATH_MAX + 64];
            snprintf(message, sizeof(message), "watch root %s was %s", d->path,
                     (ev->mask & IN_DELETE_SELF) ? "deleted" : "moved away");
            watch_note_root_lost(b->watch, d->root, message);
            if (ev->mask & IN_MOVE_SELF) {
                inotify_rm_watch(b->fd, ev->wd);
                dir_forget(b, ev->wd);
            }
        }
        return;
    }
    if (ev->len == 0)
        return;

    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%s", d->path, ev->name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return;
    const char *rel = relative_to_root(path, d->root_len);
    const struct filter *filter = watch_filter(b->watch);

    if (ev->mask & IN_ISDIR) {
        if (filter_ignores_dir(filter, rel, ev->name))
            return;
        if (ev->mask & IN_MOVED_FROM) {
            remove_tree(b, path);
        } else if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
            char err[PATH_MAX + 200];
            if (add_tree(b, path, d->root, true, err, sizeof(err)) < 0)
                log_warn("watch: %s", err);
        }
        return;
    }
    if ((ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE)) &&
        filter_accepts_file(filter, rel, ev->name))
        watch_note_change(b->watch, path);
}

static void on_readable(uv_poll_t *poll, int status, int events) {
    struct watch_backend *b = poll->data;
    /* inotify(7): the buffer must be aligned for struct inotify_event. */
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    if (status < 0) {
        log_error("watch: polling inotify failed: %s", uv_strerror(status));
        return;
    }
    for (;;) {
        ssize_t len = read(b->fd, buf, sizeof(buf));
        if (len < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                log_error("watch: reading inotify failed: %s", strerror(errno));
            watch_note_drained(b->watch);
            return;
        }
        if (len == 0)
            break;
        for (char *p = buf; p < buf + len;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(b, ev);
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
    watch_note_drained(b->watch);
}

int watch_backend_new(struct watch *watch, uv_loop_t *loop, struct watch_backend **out,
                      char *err, size_t errlen) {
    struct watch_backend *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    b->watch = watch;
    b->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (b->fd < 0) {
        int e = errno;
        if (e == EMFILE)
            snprintf(err, errlen, "cannot create an inotify instance: the limit is reached; raise "
                                  "the sysctl fs.inotify.max_user_instances");
        else
            snprintf(err, errlen, "cannot create an inotify instance: %s", strerror(e));
        free(b);
        return -e;
    }
    int r = uv_poll_init(loop, &b->poll, b->fd);
    if (r < 0) {
        snprintf(err, errlen, "cannot poll inotify: %s", uv_strerror(r));
        close(b->fd);
        free(b);
        return r;
    }
    b->poll.data = b;
    uv_poll_start(&b->poll, UV_READABLE, on_readable);
    *out = b;
    return 0;
}

int watch_backend_add_root(struct watch_backend *b, size_t root, char *err, size_t errlen) {
    return add_tree(b, watch_root(b->watch, root), root, false, err, errlen);
}

void watch_backend_remove_root(struct watch_backend *b, size_t root) {
    for (size_t wd = 0; wd < b->n_dirs_slots; wd++) {
        struct watched_dir *d = b->dirs[wd];
        if (!d)
            continue;
        if (d->root == root) {
            inotify_rm_watch(b->fd, (int)wd);
            dir_forget(b, (int)wd);
        } else if (d->root > root) {
            d->root--;
        }
    }
}

size_t watch_backend_dir_count(const struct watch_backend *b) {
    return b->n_dirs;
}

static void on_poll_closed(uv_handle_t *handle) {
    struct watch_backend *b = handle->data;
    void (*cb)(void *) = b->close_cb;
    void *data = b->close_data;
    for (size_t i = 0; i < b->n_dirs_slots; i++) {
        if (b->dirs[i]) {
            free(b->dirs[i]->path);
            free(b->dirs[i]);
        }
    }
    free(b->dirs);
    close(b->fd);
    free(b);
    if (cb)
        cb(data);
}

void watch_backend_close(struct watch_backend *b, void (*close_cb)(void *data), void *data) {
    b->close_cb = close_cb;
    b->close_data = data;
    uv_close((uv_handle_t *)&b->poll, on_poll_closed);
}
