/*
 * Linux backend: one inotify instance, read from a uv_poll_t, with a watch on every
 * directory of every root (inotify(7): a directory watch reports events for the files in
 * it, so files need no watch of their own). New directories are watched, then scanned, in
 * that order, so a file created in one between its creation and our watch is still seen.
 *
 * Each watched directory is a node: its watch descriptor, its parent node and its base
 * name (a root's top node holds the root's path). A path is built by walking up, so a
 * directory renamed within the tree keeps its watch descriptor (inotify's watches follow
 * the inode) and only its node's parent and name change: IN_MOVED_FROM and IN_MOVED_TO
 * are paired by their cookie. A directory moved out of the tree (a MOVED_FROM with no
 * MOVED_TO by the time the queue is drained) loses its watches.
 *
 * Besides the tree, a watch descriptor can serve two other roles: a repository's git
 * directory (watched non-recursively for index.lock), and the sentinel of a lost root
 * (the nearest existing ancestor of a root that was deleted or moved away, waiting for it
 * to reappear). The kernel gives one descriptor per inode, so one descriptor may hold
 * several roles; it is removed only when it holds none.
 *
 * IN_Q_OVERFLOW: events were lost. Once the queue is drained, every root is walked
 * again: directories are (re)watched, nodes whose directory is gone are dropped, renamed
 * directories are found under their new path, and every accepted file whose ctime is at
 * or after the last moment the queue was known to be complete is reported (the reload
 * engine drops content it has already applied, by hash). ctime, not mtime: no tool can set
 * it back, so a file replaced by an older copy (cp -p, tar, rsync -t) is caught too.
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
#include <time.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "ptrmap.h"
#include "watch_backend.h"

/* IN_CLOSE_WRITE and IN_MOVED_TO mark a finished write; IN_DELETE and IN_MOVED_FROM a file
 * gone (the module stays loaded; the reload event says so); IN_CREATE a new directory, or
 * a file being written; IN_MODIFY a file being written or truncated (the adaptive settle
 * waits for its IN_CLOSE_WRITE; the kernel merges repeated ones in the queue). IN_ONLYDIR
 * keeps a racing file from being watched in a directory's place; IN_DONT_FOLLOW (unless
 * symlinks are followed) a racing symlink. Every role uses the same event mask, since a
 * second inotify_add_watch on an inode replaces its mask. */
#define EVENT_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | \
                    IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK)
#define DIR_MASK (EVENT_MASK | IN_ONLYDIR | IN_DONT_FOLLOW)
#define LINK_MASK (EVENT_MASK | IN_ONLYDIR)

/* The first slot array of the node map (8 KiB); it doubles past 3/4 full. */
#define MAP_MIN_SLOTS 1024

/* How far before the last complete drain a rescan looks for changed files (file times
 * come from a coarse clock), ns. */
#define RESCAN_MARGIN_NS (100 * 1000000LL)

struct node {
    int wd;
    uint32_t gen;           /* rescan generation that last saw it */
    size_t root;            /* index of its root in watch.c */
    struct node *parent;    /* NULL for a root's top */
    size_t n_children;      /* nodes whose parent this is */
    char *name;             /* base name; a root's top: the root's path */
    bool name_heap;         /* name was malloc'd (after a rename) rather than inline */
    char inline_name[];
};

struct vcs_dir {
    int wd;
    char *gitdir;
    bool locked;
};

struct root_info {
    int sentinel_wd;        /* -1, or the watch on the nearest existing ancestor of a lost root */
    char *sentinel_path;
};

struct pending_move {
    uint32_t cookie;
    int wd;                 /* of the moved directory's node */
};

struct watch_backend {
    struct watch *watch;
    int fd;
    uv_poll_t poll;
    struct ptrmap nodes;    /* wd -> node: a hash index, since wds grow without bound
                             * over time (the kernel hands them out cyclically), and so
                             * would an array indexed by wd */
    struct vcs_dir *vcs;
    size_t n_vcs;
    struct root_info *roots;
    size_t n_roots;
    struct pending_move *moves;
    size_t n_moves, cap_moves;
    uint32_t gen;
    bool overflowed;
    int64_t synced_ns;      /* CLOCK_REALTIME_COARSE at the last complete drain */
    void (*close_cb)(void *data);
    void *close_data;
};

/* ---- the node map ----------------------------------------------------------------- */

/* Knuth's multiplicative hash (TAOCP vol. 3, 6.4): consecutive wds spread over the slots. */
static uint64_t wd_hash(int wd) {
    return (uint64_t)(uint32_t)wd * 2654435761u;
}

static uint64_t node_hash(const void *item) {
    return wd_hash(((const struct node *)item)->wd);
}

static bool node_matches(const void *item, const void *key) {
    return ((const struct node *)item)->wd == *(const int *)key;
}

static struct node *map_get(const struct ptrmap *m, int wd) {
    return ptrmap_find(m, wd_hash(wd), node_matches, &wd);
}

/* ---- nodes ------------------------------------------------------------------------ */

static struct node *node_new(int wd, struct node *parent, const char *name, size_t root) {
    size_t len = strlen(name);
    struct node *n = malloc(sizeof(*n) + len + 1);
    if (!n)
        return NULL;
    n->wd = wd;
    n->gen = 0;
    n->root = root;
    n->parent = parent;
    n->n_children = 0;
    memcpy(n->inline_name, name, len + 1);
    n->name = n->inline_name;
    n->name_heap = false;
    if (parent)
        parent->n_children++;
    return n;
}

static void node_free(struct node *n) {
    if (n->name_heap)
        free(n->name);
    free(n);
}

/* Writes node n's absolute path into buf. Returns its length, or -1 if it does not fit. */
static int node_path(const struct node *n, char *buf, size_t size) {
    size_t total = 0;
    for (const struct node *p = n; p; p = p->parent)
        total += strlen(p->name) + (p->parent ? 1 : 0);
    if (total + 1 > size)
        return -1;
    buf[total] = '\0';
    size_t end = total;
    for (const struct node *p = n; p; p = p->parent) {
        size_t len = strlen(p->name);
        end -= len;
        memcpy(buf + end, p->name, len);
        if (p->parent)
            buf[--end] = '/';
    }
    return (int)total;
}

static bool is_descendant(const struct node *n, const struct node *of) {
    for (const struct node *p = n->parent; p; p = p->parent)
        if (p == of)
            return true;
    return false;
}

static bool wd_in_use(const struct watch_backend *b, int wd) {
    if (map_get(&b->nodes, wd))
        return true;
    for (size_t i = 0; i < b->n_vcs; i++)
        if (b->vcs[i].wd == wd)
            return true;
    for (size_t i = 0; i < b->n_roots; i++)
        if (b->roots[i].sentinel_wd == wd)
            return true;
    return false;
}

/* Removes wd from the kernel once no role uses it. */
static void drop_wd(struct watch_backend *b, int wd) {
    if (wd >= 0 && !wd_in_use(b, wd))
        inotify_rm_watch(b->fd, wd);
}

/* Forgets node n and every node below it, removing their watches (rm: the directories
 * still exist, e.g. moved away) or not (the kernel already dropped them). */
static void forget_subtree(struct watch_backend *b, struct node *n, bool rm) {
    if (n->n_children > 0) {
        struct node **below = NULL;
        size_t n_below = 0, cap = 0;
        size_t pos = 0;
        for (struct node *c; (c = ptrmap_next(&b->nodes, &pos));) {
            if (!is_descendant(c, n))
                continue;
            if (n_below == cap) {
                cap = cap ? cap * 2 : 64;
                struct node **grown = realloc(below, cap * sizeof(*grown));
                if (!grown)
                    break;
                below = grown;
            }
            below[n_below++] = c;
        }
        /* Out of the map first (a slot scan above would otherwise shift under us), then
         * freed, once no node below points to a parent that is gone. */
        for (size_t k = 0; k < n_below; k++) {
            ptrmap_remove(&b->nodes, below[k]);
            if (rm)
                drop_wd(b, below[k]->wd);
        }
        for (size_t k = 0; k < n_below; k++)
            node_free(below[k]);
        free(below);
        n->n_children = 0;
    }
    ptrmap_remove(&b->nodes, n);
    if (rm)
        drop_wd(b, n->wd);
    if (n->parent)
        n->parent->n_children--;
    node_free(n);
}

static int node_rename(struct node *n, struct node *parent, const char *name) {
    if (strcmp(n->name, name) != 0) {
        char *copy = strdup(name);
        if (!copy)
            return -ENOMEM;
        if (n->name_heap)
            free(n->name);
        n->name = copy;
        n->name_heap = true;
    }
    if (n->parent != parent) {
        if (n->parent)
            n->parent->n_children--;
        n->parent = parent;
        if (parent)
            parent->n_children++;
    }
    return 0;
}

/* Gives n and its subtree root index root (a directory moved from one root to another). */
static void set_subtree_root(struct watch_backend *b, struct node *n, size_t root) {
    if (n->root == root)
        return;
    size_t pos = 0;
    for (struct node *c; (c = ptrmap_next(&b->nodes, &pos));)
        if (is_descendant(c, n))
            c->root = root;
    n->root = root;
}

/* The node watching the directory named name in parent, or NULL. */
static struct node *find_child(const struct watch_backend *b, const struct node *parent,
                               const char *name) {
    if (parent->n_children == 0)
        return NULL;
    size_t pos = 0;
    for (struct node *c; (c = ptrmap_next(&b->nodes, &pos));)
        if (c->parent == parent && strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static const char *relative_to_root(const char *path, size_t root_len) {
    return strlen(path) <= root_len ? "" : path + root_len + 1;
}

/* ---- walking ---------------------------------------------------------------------- */

enum walk_mode {
    WALK_INITIAL,   /* at start: watch, report nothing */
    WALK_REPORT,    /* a directory that appeared: watch, report every accepted file */
    WALK_RESCAN,    /* after an overflow: watch, report files changed since synced_ns */
};

struct walk {
    struct watch_backend *b;
    enum walk_mode mode;
    size_t root;
    size_t root_len;
    size_t n_changed;
    struct node **stack;
    size_t len, cap;
};

static int walk_push(struct walk *w, struct node *n) {
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        struct node **stack = realloc(w->stack, cap * sizeof(*stack));
        if (!stack)
            return -ENOMEM;
        w->stack = stack;
        w->cap = cap;
    }
    w->stack[w->len++] = n;
    return 0;
}

/* Watches the directory at path (a child of parent named name; parent NULL for a root's
 * top). Returns its node (new, or existing: the same inode is watched already), NULL with
 * *skip set when the directory is to be left alone (gone, unreadable, an alias of one
 * watched elsewhere), or NULL with *e set (-ENOSPC, -ENOMEM) when the walk must stop. */
static struct node *watch_dir(struct walk *w, const char *path, struct node *parent,
                              const char *name, bool via_link, bool is_top, bool *pushed_existing,
                              int *e) {
    struct watch_backend *b = w->b;
    *e = 0;
    *pushed_existing = false;
    int wd = inotify_add_watch(b->fd, path, via_link ? LINK_MASK : DIR_MASK);
    if (wd < 0) {
        int err = errno;
        if (err == ENOSPC || err == ENOMEM || is_top) {
            *e = -err;
            return NULL;
        }
        if (err != ENOENT && err != ENOTDIR)
            log_warn("watch: cannot watch %s: %s", path, strerror(err));
        return NULL;
    }
    struct node *n = map_get(&b->nodes, wd);
    if (n) {
        bool same_place = n->parent == parent && strcmp(n->name, name) == 0;
        if (w->mode == WALK_RESCAN && n->gen != b->gen) {
            /* Not seen yet in this rescan: it is here now (renamed while events were lost). */
            if (!same_place && (node_rename(n, parent, name) < 0)) {
                *e = -ENOMEM;
                return NULL;
            }
            set_subtree_root(b, n, w->root);
            n->gen = b->gen;
            *pushed_existing = true;
            return n;
        }
        if (!same_place && w->mode == WALK_REPORT && !via_link) {
            /* The same directory at a new path whose move we did not pair: follow it. */
            char old[PATH_MAX];
            struct stat st_old, st_new;
            if (node_path(n, old, sizeof(old)) < 0 || lstat(old, &st_old) < 0 ||
                lstat(path, &st_new) < 0 || st_old.st_ino != st_new.st_ino ||
                st_old.st_dev != st_new.st_dev) {
                if (node_rename(n, parent, name) < 0) {
                    *e = -ENOMEM;
                    return NULL;
                }
                set_subtree_root(b, n, w->root);
                n->gen = b->gen;
                *pushed_existing = true;
                return n;
            }
        }
        /* Watched already at this place (scanned then), or an alias (a followed symlink, a
         * bind mount, a loop): not again. */
        if (!same_place)
            log_debug("watch: %s is %s already watched; not descending", path,
                      via_link ? "a symlink to a directory" : "a directory");
        return NULL;
    }
    n = node_new(wd, parent, parent ? name : path, w->root);
    if (!n || ptrmap_insert(&b->nodes, n) < 0) {
        if (n) {
            if (parent)
                parent->n_children--;
            free(n);
        }
        inotify_rm_watch(b->fd, wd);
        *e = -ENOMEM;
        return NULL;
    }
    n->gen = b->gen;
    return n;
}

struct linux_dirent64 {
    ino64_t d_ino;
    off64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Lists node n's directory (path, len bytes in buf) and handles each entry. */
static int walk_dir(struct walk *w, struct node *n, char *path, size_t len) {
    struct watch_backend *b = w->b;
    const struct watch_options *options = watch_get_options(b->watch);
    const struct filter *filter = options->filter;
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (options->follow_symlinks ? 0 : O_NOFOLLOW);
    int fd = open(path, flags);
    if (fd < 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            log_warn("watch: cannot list %s: %s", path, strerror(errno));
        return 0;
    }
    char buf[32 * 1024] __attribute__((aligned(8)));
    int result = 0;
    for (;;) {
        ssize_t got = getdents64(fd, buf, sizeof(buf));
        if (got <= 0) {
            if (got < 0 && errno != ENOENT)
                log_warn("watch: cannot list %s: %s", path, strerror(errno));
            break;
        }
        for (ssize_t off = 0; off < got && result == 0;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
                continue;
            size_t nlen = strlen(name);
            if (len + 1 + nlen + 1 > PATH_MAX)
                continue;
            path[len] = '/';
            memcpy(path + len + 1, name, nlen + 1);
            unsigned type = d->d_type;
            struct stat st;
            if (type == DT_UNKNOWN) {
                if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                    continue;
                type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISLNK(st.st_mode) ? DT_LNK
                       : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
            }
            bool via_link = false;
            if (type == DT_LNK && options->follow_symlinks) {
                if (fstatat(fd, name, &st, 0) == 0 && S_ISDIR(st.st_mode)) {
                    type = DT_DIR;
                    via_link = true;
                }
            }
            const char *rel = relative_to_root(path, w->root_len);
            if (type == DT_DIR) {
                if (filter_ignores_dir(filter, rel, name))
                    continue;
                bool existing;
                int e;
                struct node *c = watch_dir(w, path, n, name, via_link, false, &existing, &e);
                if (e < 0)
                    result = e;
                else if (c)
                    result = walk_push(w, c);
            } else if (w->mode != WALK_INITIAL && (type == DT_REG || type == DT_LNK) &&
                       filter_accepts_file(filter, rel, name)) {
                if (w->mode == WALK_REPORT) {
                    watch_note_found(b->watch, path);
                    w->n_changed++;
                } else if (fstatat(fd, name, &st, 0) == 0 &&
                           (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec >=
                               b->synced_ns - RESCAN_MARGIN_NS) {
                    watch_note_found(b->watch, path);
                    w->n_changed++;
                }
            }
        }
        if (result < 0)
            break;
    }
    path[len] = '\0';
    close(fd);
    return result;
}

/*
 * Watches the directory at top (a child of parent named name, or a root's top when parent
 * is NULL) and every non-ignored directory below it, each watched before it is listed.
 * Returns 0, or a negative errno with a message in err: an error on top itself, or
 * -ENOSPC / -ENOMEM anywhere (the walk stops there; what was watched stays watched).
 * *top_out receives top's node when it was watched.
 */
static int walk_tree(struct watch_backend *b, enum walk_mode mode, size_t root, const char *top,
                     struct node *parent, const char *name, bool via_link, size_t *n_changed,
                     struct node **top_out, char *err, size_t errlen) {
    struct walk w = {.b = b, .mode = mode, .root = root,
                     .root_len = strlen(watch_root(b->watch, root))};
    if (top_out)
        *top_out = NULL;
    bool existing;
    int e;
    struct node *n = watch_dir(&w, top, parent, parent ? name : top, via_link, true, &existing, &e);
    if (e < 0)
        return watch_describe_error(-e, top, err, errlen);
    if (!n)
        return 0;
    if (top_out)
        *top_out = n;
    char path[PATH_MAX];
    int result = walk_push(&w, n);
    while (result == 0 && w.len > 0) {
        struct node *dir = w.stack[--w.len];
        int len = node_path(dir, path, sizeof(path));
        if (len < 0)
            continue;
        result = walk_dir(&w, dir, path, (size_t)len);
        if (result < 0)
            watch_describe_error(-result, path, err, errlen);
    }
    free(w.stack);
    if (n_changed)
        *n_changed += w.n_changed;
    return result;
}

/* ---- roles: git dirs, sentinels ------------------------------------------------------- */

static struct vcs_dir *vcs_of(struct watch_backend *b, int wd) {
    for (size_t i = 0; i < b->n_vcs; i++)
        if (b->vcs[i].wd == wd)
            return &b->vcs[i];
    return NULL;
}

static void vcs_drop(struct watch_backend *b, struct vcs_dir *v) {
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof(lock), "%s/index.lock", v->gitdir);
    if (v->locked)
        watch_note_vcs_lock(b->watch, lock, false);
    int wd = v->wd;
    free(v->gitdir);
    *v = b->vcs[--b->n_vcs];
    drop_wd(b, wd);
}

static void root_lost(struct watch_backend *b, size_t root);

static void sentinel_clear(struct watch_backend *b, size_t root) {
    struct root_info *ri = &b->roots[root];
    int wd = ri->sentinel_wd;
    ri->sentinel_wd = -1;
    free(ri->sentinel_path);
    ri->sentinel_path = NULL;
    drop_wd(b, wd);
}

/* Root `root` is not watched: watch the nearest existing ancestor of its path for it to
 * come back, or, if it exists again, watch it (reporting its files) and say so. */
static void sentinel_install(struct watch_backend *b, size_t root) {
    const char *path = watch_root(b->watch, root);
    struct root_info *ri = &b->roots[root];
    char dir[PATH_MAX];
    for (int tries = 0; tries < 64; tries++) {
        if (watch_nearest_dir(path, dir, sizeof(dir)) < 0)
            return;
        if (strcmp(dir, path) == 0) {
            char err[PATH_MAX + 256];
            size_t n_changed = 0;
            struct node *top = NULL;
            int r = walk_tree(b, WALK_REPORT, root, path, NULL, NULL, false, &n_changed, &top,
                              err, sizeof(err));
            if (r == -ENOENT || r == -ENOTDIR)
                continue;  /* gone again meanwhile */
            sentinel_clear(b, root);
            if (r < 0) {
                if (top)
                    forget_subtree(b, top, true);
                watch_note_root_state(b->watch, root, WATCH_ROOT_FAILED, err);
                return;
            }
            size_t n_dirs = 0, pos = 0;
            for (struct node *n; (n = ptrmap_next(&b->nodes, &pos));)
                if (n->root == root)
                    n_dirs++;
            watch_note_root_restored(b->watch, root, n_dirs);
            return;
        }
        if (ri->sentinel_path && strcmp(ri->sentinel_path, dir) == 0 && ri->sentinel_wd >= 0)
            return;
        int wd = inotify_add_watch(b->fd, dir, DIR_MASK);
        if (wd < 0) {
            char err[PATH_MAX + 256];
            watch_describe_error(errno, dir, err, sizeof(err));
            log_warn("watch: cannot wait for %s to reappear: %s", path, err);
            return;
        }
        char *copy = strdup(dir);
        if (!copy) {
            drop_wd(b, wd);
            return;
        }
        int old = ri->sentinel_wd;
        free(ri->sentinel_path);
        ri->sentinel_wd = wd;
        ri->sentinel_path = copy;
        if (old != wd)
            drop_wd(b, old);
        /* Created between our stat and our watch? Then look again. */
        char next[PATH_MAX];
        size_t dlen = strlen(dir);
        const char *rest = path + dlen + (dlen > 1 ? 1 : 0);
        size_t clen = strcspn(rest, "/");
        snprintf(next, sizeof(next), "%.*s", (int)(rest - path + clen), path);
        struct stat st;
        if (stat(next, &st) < 0)
            return;
    }
}

static void root_lost(struct watch_backend *b, size_t root) {
    if (root < b->n_roots && watch_root_state_of(b->watch, root) == WATCH_ROOT_LOST &&
        b->roots[root].sentinel_wd < 0)
        sentinel_install(b, root);
}

/* ---- events ----------------------------------------------------------------------- */

static void resolve_moves(struct watch_backend *b) {
    /* A MOVED_FROM without its MOVED_TO by now: the directory left the tree. */
    for (size_t i = 0; i < b->n_moves; i++) {
        struct node *n = map_get(&b->nodes, b->moves[i].wd);
        if (n) {
            char path[PATH_MAX];
            if (node_path(n, path, sizeof(path)) >= 0)
                log_debug("watch: %s moved out of the tree; its watches go", path);
            forget_subtree(b, n, true);
        }
    }
    b->n_moves = 0;
}

static int64_t now_coarse_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void rescan(struct watch_backend *b) {
    uint64_t started = uv_hrtime();
    b->gen++;
    size_t n_changed = 0;
    resolve_moves(b);
    for (size_t root = 0; root < watch_roots(b->watch); root++) {
        enum watch_root_state state = watch_root_state_of(b->watch, root);
        if (state == WATCH_ROOT_LOST) {
            root_lost(b, root);
            continue;
        }
        if (state != WATCH_ROOT_WATCHING)
            continue;
        char err[PATH_MAX + 256];
        const char *path = watch_root(b->watch, root);
        int r = walk_tree(b, WALK_RESCAN, root, path, NULL, NULL, false, &n_changed, NULL, err,
                          sizeof(err));
        if (r == -ENOENT || r == -ENOTDIR) {
            char message[PATH_MAX + 64];
            snprintf(message, sizeof(message), "watch root %s was deleted", path);
            watch_note_root_state(b->watch, root, WATCH_ROOT_LOST, message);
        } else if (r < 0) {
            watch_note_root_state(b->watch, root, WATCH_ROOT_FAILED, err);
        }
    }
    /* Nodes the walks did not reach: their directory is gone or left the tree. */
    struct node **stale = NULL;
    size_t n_stale = 0, cap = 0;
    size_t pos = 0;
    for (struct node *n; (n = ptrmap_next(&b->nodes, &pos));) {
        if (n->gen == b->gen)
            continue;
        if (n_stale == cap) {
            cap = cap ? cap * 2 : 64;
            struct node **grown = realloc(stale, cap * sizeof(*grown));
            if (!grown)
                break;
            stale = grown;
        }
        stale[n_stale++] = n;
    }
    for (size_t k = 0; k < n_stale; k++)
        ptrmap_remove(&b->nodes, stale[k]);
    for (size_t k = 0; k < n_stale; k++) {
        drop_wd(b, stale[k]->wd);
        if (stale[k]->parent)
            stale[k]->parent->n_children--;
    }
    for (size_t k = 0; k < n_stale; k++)
        node_free(stale[k]);
    free(stale);
    for (size_t root = 0; root < watch_roots(b->watch) && root < b->n_roots; root++)
        if (watch_root_state_of(b->watch, root) == WATCH_ROOT_LOST)
            root_lost(b, root);
    uint64_t took = uv_hrtime() - started;
    log_warn("watch: the inotify queue overflowed (fs.inotify.max_queued_events): rescanned "
             "%zu directories in %.1f ms, %zu files changed", b->nodes.len, (double)took / 1e6,
             n_changed);
    watch_note_rescan(b->watch, "overflow", n_changed, took);
}

static void handle_sentinel(struct watch_backend *b, const struct inotify_event *ev) {
    for (size_t root = 0; root < b->n_roots; root++) {
        struct root_info *ri = &b->roots[root];
        if (ri->sentinel_wd != ev->wd)
            continue;
        if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
            if (ev->mask & IN_IGNORED)
                ri->sentinel_wd = -1;
            sentinel_clear(b, root);
            sentinel_install(b, root);
            continue;
        }
        if (ev->len == 0 || !(ev->mask & (IN_CREATE | IN_MOVED_TO)))
            continue;
        const char *path = watch_root(b->watch, root);
        size_t dlen = strlen(ri->sentinel_path);
        const char *rest = path + dlen + (dlen > 1 ? 1 : 0);
        size_t clen = strcspn(rest, "/");
        if (strlen(ev->name) == clen && strncmp(ev->name, rest, clen) == 0)
            sentinel_install(b, root);
    }
}

static void handle_vcs(struct watch_backend *b, struct vcs_dir *v, const struct inotify_event *ev) {
    if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
        if (ev->mask & IN_IGNORED)
            v->wd = -1;
        vcs_drop(b, v);
        return;
    }
    if (ev->len == 0 || strcmp(ev->name, "index.lock") != 0)
        return;
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof(lock), "%s/index.lock", v->gitdir);
    if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
        v->locked = true;
        watch_note_vcs_lock(b->watch, lock, true);
    } else if (ev->mask & (IN_DELETE | IN_MOVED_FROM)) {
        v->locked = false;
        watch_note_vcs_lock(b->watch, lock, false);
    }
}

static void handle_dir_entry(struct watch_backend *b, struct node *d, const struct inotify_event *ev,
                             const char *path, const char *rel) {
    const struct watch_options *options = watch_get_options(b->watch);
    const struct filter *filter = options->filter;
    bool ignored = filter_ignores_dir(filter, rel, ev->name);
    if (ev->mask & IN_MOVED_FROM) {
        struct node *c = find_child(b, d, ev->name);
        if (!c)
            return;
        if (b->n_moves == b->cap_moves) {
            size_t cap = b->cap_moves ? b->cap_moves * 2 : 16;
            struct pending_move *moves = realloc(b->moves, cap * sizeof(*moves));
            if (!moves) {
                forget_subtree(b, c, true);
                return;
            }
            b->moves = moves;
            b->cap_moves = cap;
        }
        b->moves[b->n_moves++] = (struct pending_move){ev->cookie, c->wd};
        return;
    }
    if (ev->mask & IN_MOVED_TO) {
        for (size_t i = 0; i < b->n_moves; i++) {
            if (b->moves[i].cookie != ev->cookie)
                continue;
            struct node *c = map_get(&b->nodes, b->moves[i].wd);
            b->moves[i] = b->moves[--b->n_moves];
            if (!c)
                break;
            if (ignored) {
                forget_subtree(b, c, true);
                return;
            }
            if (c == d || is_descendant(d, c)) {
                forget_subtree(b, c, true);  /* cannot happen: the kernel refuses such a move */
                return;
            }
            if (node_rename(c, d, ev->name) < 0) {
                forget_subtree(b, c, true);
                return;
            }
            set_subtree_root(b, c, d->root);
            log_debug("watch: directory renamed to %s; its watches follow", path);
            return;
        }
    }
    if (ignored || !(ev->mask & (IN_CREATE | IN_MOVED_TO)))
        return;
    char err[PATH_MAX + 256];
    bool via_link = !(ev->mask & IN_ISDIR);
    int r = walk_tree(b, WALK_REPORT, d->root, path, d, ev->name, via_link, NULL, NULL, err,
                      sizeof(err));
    if (r == -ENOSPC)
        watch_note_root_state(b->watch, d->root, WATCH_ROOT_FAILED, err);
    else if (r < 0 && r != -ENOENT && r != -ENOTDIR)
        log_warn("watch: %s", err);
}

static void handle_event(struct watch_backend *b, const struct inotify_event *ev) {
    if (ev->mask & IN_Q_OVERFLOW) {
        b->overflowed = true;
        return;
    }
    struct vcs_dir *v = vcs_of(b, ev->wd);
    if (v)
        handle_vcs(b, v, ev);
    handle_sentinel(b, ev);
    struct node *d = map_get(&b->nodes, ev->wd);
    if (!d)
        return;
    if (ev->mask & IN_IGNORED) {
        bool top = d->parent == NULL;
        size_t root = d->root;
        forget_subtree(b, d, false);
        if (top && watch_root_state_of(b->watch, root) == WATCH_ROOT_WATCHING) {
            /* Dropped without IN_DELETE_SELF: its file system was unmounted. */
            char message[PATH_MAX + 64];
            snprintf(message, sizeof(message), "watch root %s is no longer watched (unmounted?)",
                     watch_root(b->watch, root));
            watch_note_root_state(b->watch, root, WATCH_ROOT_LOST, message);
        }
        if (top)
            root_lost(b, root);
        return;
    }
    if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        if (d->parent == NULL) {
            char message[PATH_MAX + 64];
            snprintf(message, sizeof(message), "watch root %s was %s", d->name,
                     (ev->mask & IN_DELETE_SELF) ? "deleted" : "moved away");
            size_t root = d->root;
            if (ev->mask & IN_MOVE_SELF)
                forget_subtree(b, d, true);
            watch_note_root_state(b->watch, root, WATCH_ROOT_LOST, message);
            if (ev->mask & IN_MOVE_SELF)
                root_lost(b, root);
        }
        return;
    }
    if (ev->len == 0)
        return;

    char path[PATH_MAX];
    int len = node_path(d, path, sizeof(path));
    size_t nlen = strlen(ev->name);
    if (len < 0 || (size_t)len + 1 + nlen + 1 > sizeof(path))
        return;
    path[len] = '/';
    memcpy(path + len + 1, ev->name, nlen + 1);
    const char *rel = relative_to_root(path, strlen(watch_root(b->watch, d->root)));
    const struct watch_options *options = watch_get_options(b->watch);
    const struct filter *filter = options->filter;

    bool is_dir = (ev->mask & IN_ISDIR) != 0;
    if (!is_dir && options->follow_symlinks && (ev->mask & (IN_CREATE | IN_MOVED_TO))) {
        struct stat st;
        struct stat lst;
        if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode) && stat(path, &st) == 0 &&
            S_ISDIR(st.st_mode)) {
            handle_dir_entry(b, d, ev, path, rel);
            return;
        }
    }
    if (is_dir) {
        handle_dir_entry(b, d, ev, path, rel);
        return;
    }
    if (!filter_accepts_file(filter, rel, ev->name))
        return;
    if (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO))
        watch_note_change(b->watch, path);
    else if (ev->mask & (IN_DELETE | IN_MOVED_FROM))
        watch_note_gone(b->watch, path);
    else if (ev->mask & (IN_CREATE | IN_MODIFY))
        watch_note_writing(b->watch, path);
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
            break;
        }
        if (len == 0)
            break;
        for (char *p = buf; p < buf + len;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(b, ev);
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
    resolve_moves(b);
    if (b->overflowed) {
        b->overflowed = false;
        rescan(b);
    }
    b->synced_ns = now_coarse_ns();
    watch_note_drained(b->watch);
}

/* ---- the backend interface ---------------------------------------------------------- */

static int inotify_create(struct watch *watch, uv_loop_t *loop, struct watch_backend **out,
                          char *err, size_t errlen) {
    struct watch_backend *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    b->watch = watch;
    ptrmap_init(&b->nodes, MAP_MIN_SLOTS, node_hash);
    b->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (b->fd < 0) {
        int e = errno;
        if (e == EMFILE || e == ENFILE)
            snprintf(err, errlen, "cannot create an inotify instance: the limit is reached; raise "
                                  "the sysctl fs.inotify.max_user_instances (e.g. sysctl "
                                  "fs.inotify.max_user_instances=1024), or the open-files limit");
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
    b->synced_ns = now_coarse_ns();
    uv_poll_start(&b->poll, UV_READABLE, on_readable);
    *out = b;
    return 0;
}

static int inotify_add_root(struct watch_backend *b, size_t root, char *err, size_t errlen) {
    if (root >= b->n_roots) {
        struct root_info *roots = realloc(b->roots, (root + 1) * sizeof(*roots));
        if (!roots) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        for (size_t i = b->n_roots; i <= root; i++)
            roots[i] = (struct root_info){-1, NULL};
        b->roots = roots;
        b->n_roots = root + 1;
    }
    struct node *top = NULL;
    int r = walk_tree(b, WALK_INITIAL, root, watch_root(b->watch, root), NULL, NULL, false, NULL,
                      &top, err, errlen);
    if (r < 0 && top && top->root == root) {
        /* A failed root holds no watches: what it took goes back to the other roots. */
        forget_subtree(b, top, true);
    }
    return r;
}

static int inotify_add_vcs(struct watch_backend *b, const char *gitdir, char *err, size_t errlen) {
    int wd = inotify_add_watch(b->fd, gitdir, DIR_MASK);
    if (wd < 0)
        return watch_describe_error(errno, gitdir, err, errlen);
    struct vcs_dir *vcs = realloc(b->vcs, (b->n_vcs + 1) * sizeof(*vcs));
    char *copy = strdup(gitdir);
    if (!vcs || !copy) {
        free(copy);
        if (vcs)
            b->vcs = vcs;
        drop_wd(b, wd);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    b->vcs = vcs;
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof(lock), "%s/index.lock", gitdir);
    vcs[b->n_vcs++] = (struct vcs_dir){wd, copy, access(lock, F_OK) == 0};
    return 0;
}

static size_t inotify_dir_count(const struct watch_backend *b) {
    return b->nodes.len;
}

static void on_poll_closed(uv_handle_t *handle) {
    struct watch_backend *b = handle->data;
    void (*cb)(void *) = b->close_cb;
    void *data = b->close_data;
    size_t pos = 0;
    for (struct node *n; (n = ptrmap_next(&b->nodes, &pos));)
        node_free(n);
    ptrmap_clear(&b->nodes);
    for (size_t i = 0; i < b->n_vcs; i++)
        free(b->vcs[i].gitdir);
    free(b->vcs);
    for (size_t i = 0; i < b->n_roots; i++)
        free(b->roots[i].sentinel_path);
    free(b->roots);
    free(b->moves);
    close(b->fd);
    free(b);
    if (cb)
        cb(data);
}

static void inotify_close(struct watch_backend *b, void (*close_cb)(void *data), void *data) {
    b->close_cb = close_cb;
    b->close_data = data;
    uv_close((uv_handle_t *)&b->poll, on_poll_closed);
}

static void inotify_remove_root(struct watch_backend *b, size_t root) {
    if (root < b->n_roots)
        sentinel_clear(b, root);
    size_t pos = 0;
    for (struct node *n; (n = ptrmap_next(&b->nodes, &pos));) {
        if (n->root == root && n->parent == NULL) {
            forget_subtree(b, n, true);
            pos = 0; /* the map changed under the scan: start again */
        }
    }
}

const struct watch_backend_ops watch_inotify_ops = {
    .name = "inotify",
    .reports_completion = true,
    .create = inotify_create,
    .add_root = inotify_add_root,
    .add_vcs = inotify_add_vcs,
    .dir_count = inotify_dir_count,
    .remove_root = inotify_remove_root,
    .close = inotify_close,
};
