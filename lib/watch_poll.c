/*
 * Polling, for the trees inotify is blind on: a root on NFS, SMB/CIFS, FUSE (sshfs,
 * bindfs, Docker Desktop's and virtiofs' shares), 9p (WSL2's /mnt/c), vboxsf, ..., where
 * changes made on the server, on the host or through another mount never reach this
 * kernel's inotify; a mount of such a file system inside a root; and every root under
 * `[watch] backend = poll`. See docs/watching.md.
 *
 * One uv_timer_t ticks every interval. What a tick costs follows what can be reloaded:
 * - every tick, the files of loaded modules (watch_poll_set_loaded; the daemon learns them
 *   from the reload engine's index) are stat'ed; a file whose stat differs from the last
 *   one, or whose stat is too recent to trust (file times come from a coarse clock, so a
 *   second write within the same tick keeps them), is read and hashed, and reported only
 *   when its content changed;
 * - every WATCH_POLL_SCAN_EVERY ticks, every directory is stat'ed, and those whose stat
 *   changed are listed again: new files and directories are reported (new directories
 *   are walked), removed ones reported gone;
 * - every WATCH_POLL_FULL_EVERY such scans, every accepted file is compared too (a module
 *   loaded by an app thread since the last index refresh is then still caught).
 * Each tick ends with watch_note_drained: a change found by the poll is complete, so the
 * adaptive settle sends it at once.
 *
 * The top of each tree is stat'ed every tick: deleted (ENOENT), unmounted (a mount point
 * whose device became its parent's), a stale NFS handle (ESTALE), a FUSE server gone
 * (ENOTCONN), permission denied (EACCES) or EIO are reported once through
 * watch_note_poll_problem; the tree is walked again and reported when it can be read.
 *
 * Inotify and the poll may both see a local edit of a tree watched by both: the watcher
 * asks watch_poll_is_repeat for every path of a batch, which drops the path when its
 * content hash is the one that last went out, and otherwise records its stat and hash, so
 * the poll does not find the change again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "ptrmap.h"
#include "strset.h"
#include "watch_backend.h"

/* A stat time this close to (or after) the moment the stat was read is not trusted: the
 * file system's clock is coarse (a jiffy, or a server's second), so a write within the
 * same tick leaves it unchanged, ns. */
#define RACY_NS (50 * 1000000LL)

/* The most files and directories all polled trees hold together (about 200 bytes each):
 * beyond it, what a walk finds is not polled, and the log says so once. */
#define MAX_ENTRIES 2000000

/* The first slot array of the entry and orphan maps (2 KiB); it doubles past 3/4 full. */
#define MAP_MIN_SLOTS 256

/* Files larger than this are compared by stat alone, bytes. */
#define MAX_HASH_BYTES (16u << 20)

struct stamp {
    int64_t mtime_ns;
    int64_t ctime_ns;
    int64_t size;
    ino_t ino;
    dev_t dev;
};

struct tree;

struct entry {
    struct entry *parent;        /* its directory; NULL for a tree's top */
    struct entry *first_child;   /* directories: their entries */
    struct entry *next_sibling;
    struct tree *tree;
    uint64_t key;                /* hash of path */
    uint32_t gen;                /* the listing of its directory that last saw it */
    bool is_dir;
    bool loaded;                 /* a loaded module's file: compared every tick */
    bool missing;                /* stat found it gone; reported once */
    bool racy;                   /* its stat was too recent to trust */
    bool hashed;                 /* hash holds its content */
    bool sent;                   /* sent_hash holds the content a batch last carried */
    bool sent_gone;              /* a batch carried it as gone, and it still is */
    struct stamp stamp;
    uint64_t hash;
    uint64_t sent_hash;
    char path[];
};

struct tree {
    size_t root;
    char *top;
    char *why;
    char *problem;               /* why it cannot be read now, or NULL */
    bool mountpoint;             /* top's device differed from its parent's */
    dev_t parent_dev;
    struct entry *top_entry;
    size_t root_len;             /* of its root's path: relative paths for the filter */
};

struct vcs_lock {
    char *lock;                  /* gitdir/index.lock */
    bool present;
};

struct watch_poll {
    struct watch *watch;
    uv_timer_t timer;
    unsigned interval_ms;
    struct tree **trees;
    size_t n_trees;
    struct ptrmap entries;       /* path -> entry */
    struct ptrmap orphans;       /* sent in a batch before the poll knew their directory
                                  * (a new one): path and sent_hash only; cleared after
                                  * every directory cycle */
    struct strset loaded_paths;
    struct entry **loaded;       /* entries with loaded set, rebuilt when loaded_dirty */
    size_t n_loaded;
    bool loaded_dirty;
    struct vcs_lock *locks;
    size_t n_locks;
    size_t n_dirs, n_files;
    uint32_t gen;
    uint64_t ticks;
    bool full_warned;            /* MAX_ENTRIES was reached and logged */
    void (*close_cb)(void *data);
    void *close_data;
};

/* ---- file system types ------------------------------------------------------------ */

bool watch_fs_magic_is_remote(long f_type) {
    switch ((unsigned long)f_type & 0xffffffffUL) {
    case 0x6969:        /* NFS_SUPER_MAGIC */
    case 0x517b:        /* SMB_SUPER_MAGIC */
    case 0xff534d42:    /* CIFS_SUPER_MAGIC */
    case 0xfe534d42:    /* SMB2_SUPER_MAGIC */
    case 0x65735546:    /* FUSE_SUPER_MAGIC: sshfs, bindfs, virtiofs, gcsfuse, ... */
    case 0x01021997:    /* V9FS_MAGIC: WSL2 drvfs, QEMU shares */
    case 0x786f4256:    /* vboxsf */
    case 0x00c36400:    /* CEPH_SUPER_MAGIC */
    case 0x5346414f:    /* AFS_FS_MAGIC */
    case 0x6b414653:    /* kAFS */
    case 0x73757245:    /* CODA_SUPER_MAGIC */
    case 0x564c:        /* NCP_SUPER_MAGIC */
    case 0x0bd00bd0:    /* Lustre */
    case 0x01161970:    /* GFS2 */
    case 0x7461636f:    /* OCFS2 */
    case 0x19830326:    /* fhgfs / BeeGFS */
    case 0x47504653:    /* GPFS */
    case 0x19920823:    /* orangefs */
        return true;
    default:
        return false;
    }
}

bool watch_fs_name_is_remote(const char *type) {
    static const char *const remote[] = {
        "nfs", "nfs4", "smb", "smb3", "smbfs", "cifs", "9p", "virtiofs", "vboxsf", "ceph",
        "afs", "coda", "ncpfs", "lustre", "gfs2", "ocfs2", "glusterfs", "beegfs", "gpfs",
        "pvfs2", "davfs", "prl_fs", "vmhgfs", "drvfs", "fuse",
    };
    if (strncmp(type, "fuse.", 5) == 0)
        return true;   /* fuse.sshfs, fuse.bindfs, fuse.vmhgfs-fuse, ...; not fuseblk */
    for (size_t i = 0; i < sizeof(remote) / sizeof(remote[0]); i++)
        if (strcmp(type, remote[i]) == 0)
            return true;
    return false;
}

/* ---- the entry map ----------------------------------------------------------------- */

static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t len) {
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t path_key(const char *path) {
    return hash_bytes(14695981039346656037ULL, (const unsigned char *)path, strlen(path));
}

/* An entry's hash, cached in it: the map asks for it on every insert, growth and delete. */
static uint64_t entry_hash(const void *item) {
    return ((const struct entry *)item)->key;
}

struct entry_key {
    uint64_t key;
    const char *path;
};

static bool entry_matches(const void *item, const void *key) {
    const struct entry *e = item;
    const struct entry_key *k = key;
    return e->key == k->key && strcmp(e->path, k->path) == 0;
}

static struct entry *map_get(const struct ptrmap *m, const char *path) {
    struct entry_key k = {path_key(path), path};
    return ptrmap_find(m, k.key, entry_matches, &k);
}

/* ---- stamps and content ------------------------------------------------------------ */

/* fstatat(2) that asks network and FUSE file systems for fresh attributes
 * (AT_STATX_FORCE_SYNC, statx(2): NFS revalidates with the server, FUSE asks its server)
 * rather than what the kernel cached (attr_timeout, acregmin: up to seconds). On local file
 * systems it is a plain stat. Returns 0 or -1 with errno set. */
static int stat_fresh(int dirfd, const char *path, int flags, struct stat *st) {
    struct statx sx;
    if (statx(dirfd, path, flags | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &sx) < 0)
        return -1;
    memset(st, 0, sizeof(*st));
    st->st_mode = sx.stx_mode;
    st->st_size = (off_t)sx.stx_size;
    st->st_ino = (ino_t)sx.stx_ino;
    st->st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    st->st_mtim.tv_sec = sx.stx_mtime.tv_sec;
    st->st_mtim.tv_nsec = sx.stx_mtime.tv_nsec;
    st->st_ctim.tv_sec = sx.stx_ctime.tv_sec;
    st->st_ctim.tv_nsec = sx.stx_ctime.tv_nsec;
    return 0;
}

static int64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct stamp stamp_of(const struct stat *st) {
    return (struct stamp){
        .mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
        .ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec,
        .size = (int64_t)st->st_size,
        .ino = st->st_ino,
        .dev = st->st_dev,
    };
}

static bool stamp_equal(const struct stamp *a, const struct stamp *b) {
    return a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns && a->size == b->size &&
           a->ino == b->ino && a->dev == b->dev;
}

static bool stamp_racy(const struct stamp *s, int64_t read_ns) {
    return s->mtime_ns >= read_ns - RACY_NS || s->ctime_ns >= read_ns - RACY_NS;
}

/* Hashes the file at path (FNV-1a, 64 bits). Returns 0, or a negative errno (-EFBIG for a
 * file larger than MAX_HASH_BYTES). */
static int hash_file(const char *path, uint64_t *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    uint64_t h = 14695981039346656037ULL;
    unsigned char buf[16384];
    size_t total = 0;
    for (;;) {
        ssize_t got = read(fd, buf, sizeof(buf));
        if (got < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            return e;
        }
        if (got == 0)
            break;
        total += (size_t)got;
        if (total > MAX_HASH_BYTES) {
            close(fd);
            return -EFBIG;
        }
        h = hash_bytes(h, buf, (size_t)got);
    }
    close(fd);
    *out = h;
    return 0;
}

/* ---- entries ----------------------------------------------------------------------- */

static struct entry *entry_new(struct watch_poll *p, struct tree *tree, struct entry *parent,
                               const char *path, bool is_dir, const struct stat *st,
                               int64_t read_ns) {
    if (p->entries.len >= MAX_ENTRIES) {
        if (!p->full_warned)
            log_warn("watch: the polled trees hold %d files and directories, the most pyhotd "
                     "polls; %s and what else is new is not polled (exclude what need not be "
                     "watched)", MAX_ENTRIES, path);
        p->full_warned = true;
        return NULL;
    }
    size_t len = strlen(path);
    struct entry *e = calloc(1, sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    memcpy(e->path, path, len + 1);
    e->key = path_key(path);
    e->tree = tree;
    e->is_dir = is_dir;
    e->stamp = stamp_of(st);
    e->racy = stamp_racy(&e->stamp, read_ns);
    if (ptrmap_insert(&p->entries, e) < 0) {
        free(e);
        return NULL;
    }
    if (parent) {
        e->parent = parent;
        e->next_sibling = parent->first_child;
        parent->first_child = e;
    }
    if (is_dir) {
        p->n_dirs++;
    } else {
        p->n_files++;
        if (strset_contains(&p->loaded_paths, path)) {
            e->loaded = true;
            p->loaded_dirty = true;
        }
    }
    return e;
}

/* Forgets e and everything below it; report: files are reported gone. */
static void entry_remove(struct watch_poll *p, struct entry *e, bool report) {
    while (e->first_child)
        entry_remove(p, e->first_child, report);
    if (e->parent) {
        struct entry **link = &e->parent->first_child;
        while (*link && *link != e)
            link = &(*link)->next_sibling;
        if (*link)
            *link = e->next_sibling;
    }
    if (report && !e->is_dir && !e->missing)
        watch_note_gone(p->watch, e->path);
    if (e->loaded)
        p->loaded_dirty = true;
    if (e->is_dir)
        p->n_dirs--;
    else
        p->n_files--;
    ptrmap_remove(&p->entries, e);
    free(e);
}

/* Compares file e with its stat st (read at read_ns) and reports it when its content
 * changed (report) or just records it. */
static void file_compare(struct watch_poll *p, struct entry *e, const struct stat *st,
                         int64_t read_ns, bool report) {
    struct stamp now = stamp_of(st);
    bool same = stamp_equal(&now, &e->stamp);
    bool was_missing = e->missing;
    e->missing = false;
    e->sent_gone = false;
    if (same && !e->racy && !was_missing)
        return;
    e->stamp = now;
    e->racy = stamp_racy(&now, read_ns);
    uint64_t h;
    int r = hash_file(e->path, &h);
    if (r == -ENOENT) {
        e->missing = true;
        if (report && !was_missing)
            watch_note_gone(p->watch, e->path);
        return;
    }
    bool changed;
    if (r < 0)
        changed = !same;  /* too big or unreadable: the stat decides */
    else if (!e->hashed)
        changed = !same || was_missing;  /* no content on record: a racy stat is a baseline */
    else
        changed = h != e->hash || was_missing;
    if (r == 0) {
        e->hash = h;
        e->hashed = true;
    }
    if (changed && report)
        watch_note_change(p->watch, e->path);
}

/* Whether the directory with stat st is d or one above it (a symlink or a bind mount that
 * loops back): walking into it would not end. */
static bool is_ancestor(const struct entry *d, const struct stat *st) {
    for (const struct entry *a = d; a; a = a->parent)
        if (a->stamp.ino == st->st_ino && a->stamp.dev == st->st_dev)
            return true;
    return false;
}

/* The polled tree path lies in, or NULL. */
static struct tree *tree_of(const struct watch_poll *p, const char *path) {
    for (size_t i = 0; i < p->n_trees; i++) {
        size_t len = strlen(p->trees[i]->top);
        if (strncmp(path, p->trees[i]->top, len) == 0 && path[len] == '/')
            return p->trees[i];
    }
    return NULL;
}

/* The relative path of path within its root, for the filter. */
static const char *relative(const struct tree *tree, const char *path) {
    return strlen(path) <= tree->root_len ? "" : path + tree->root_len + 1;
}

static void tree_problem(struct watch_poll *p, struct tree *tree, const char *message, bool lost);

/*
 * Lists directory d and brings its children up to date: new entries are added (new
 * directories walked through the stack), and with report, new files are reported changed,
 * changed files changed and vanished ones gone. Returns 0, or a negative errno when the
 * directory cannot be listed (-ENOENT: it is gone; its parent's listing will say so).
 */
static int dir_list(struct watch_poll *p, struct entry *d, bool report, struct entry ***stack,
                    size_t *n_stack, size_t *cap_stack) {
    const struct watch_options *options = watch_get_options(p->watch);
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (options->follow_symlinks ? 0 : O_NOFOLLOW);
    int64_t read_ns = realtime_ns();
    int fd = open(d->path, flags);
    if (fd < 0)
        return -errno;
    struct stat dst;
    if (stat_fresh(fd, "", AT_EMPTY_PATH, &dst) == 0) {
        d->stamp = stamp_of(&dst);
        d->racy = stamp_racy(&d->stamp, read_ns);
    }
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int e = -errno;
        close(fd);
        return e;
    }
    uint32_t gen = ++p->gen;
    size_t plen = strlen(d->path);
    char path[PATH_MAX];
    struct dirent *de;
    bool complete = true;  /* every entry was seen: the unseen children are gone */
    for (;;) {
        errno = 0;
        if (!(de = readdir(dir)))
            break;
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
            continue;
        size_t nlen = strlen(name);
        if (plen + 1 + nlen + 1 > sizeof(path))
            continue;
        memcpy(path, d->path, plen);
        path[plen] = '/';
        memcpy(path + plen + 1, name, nlen + 1);
        struct stat st;
        if (stat_fresh(fd, name, AT_SYMLINK_NOFOLLOW, &st) < 0)
            continue;
        if (S_ISLNK(st.st_mode) && stat_fresh(fd, name, 0, &st) < 0)
            continue;
        bool is_dir = S_ISDIR(st.st_mode);
        if (is_dir && !options->follow_symlinks) {
            struct stat lst;
            if (stat_fresh(fd, name, AT_SYMLINK_NOFOLLOW, &lst) == 0 && S_ISLNK(lst.st_mode))
                continue;
        }
        const char *rel = relative(d->tree, path);
        if (is_dir ? filter_ignores_dir(options->filter, rel, name)
                   : !S_ISREG(st.st_mode) || !filter_accepts_file(options->filter, rel, name))
            continue;
        struct entry *e = map_get(&p->entries, path);
        if (e && e->is_dir != is_dir) {
            entry_remove(p, e, report);
            e = NULL;
        }
        if (e) {
            e->gen = gen;
            if (!is_dir && report)
                file_compare(p, e, &st, read_ns, true);
            continue;
        }
        if (is_dir && is_ancestor(d, &st)) {
            log_debug("watch: %s leads back to a directory above it; not descending", path);
            continue;
        }
        e = entry_new(p, d->tree, d, path, is_dir, &st, read_ns);
        if (!e) {
            if (!p->full_warned)
                log_error("watch: out of memory polling %s", d->path);
            complete = false;
            break;
        }
        e->gen = gen;
        if (is_dir) {
            if (*n_stack == *cap_stack) {
                size_t cap = *cap_stack ? *cap_stack * 2 : 64;
                struct entry **grown = realloc(*stack, cap * sizeof(*grown));
                if (!grown) {
                    entry_remove(p, e, false);
                    complete = false;
                    break;
                }
                *stack = grown;
                *cap_stack = cap;
            }
            (*stack)[(*n_stack)++] = e;
        } else if (report) {
            if (hash_file(e->path, &e->hash) == 0)
                e->hashed = true;
            struct entry *sent = map_get(&p->orphans, e->path);
            if (sent && e->hashed && sent->sent_hash == e->hash) {
                e->sent = true;  /* inotify saw it and it went out already */
                e->sent_hash = e->hash;
            } else {
                watch_note_found(p->watch, e->path);
            }
        } else if (e->racy && hash_file(e->path, &e->hash) == 0) {
            e->hashed = true;
        }
    }
    if (complete && de == NULL && errno != 0) {
        complete = false;  /* readdir(3) failed midway (EIO from a server) */
        log_warn("watch: cannot list %s: %s", d->path, strerror(errno));
    }
    closedir(dir);
    for (struct entry *c = d->first_child, *next; complete && c; c = next) {
        next = c->next_sibling;
        if (c->gen != gen)
            entry_remove(p, c, report);
    }
    return 0;
}

/* Lists d and every directory found below it. Returns dir_list's result for d. */
static int walk(struct watch_poll *p, struct entry *d, bool report) {
    struct entry **stack = NULL;
    size_t n = 0, cap = 0;
    int r = dir_list(p, d, report, &stack, &n, &cap);
    while (n > 0) {
        struct entry *sub = stack[--n];
        int e = dir_list(p, sub, report, &stack, &n, &cap);
        if (e < 0 && e != -ENOENT && e != -ENOTDIR)
            log_warn("watch: cannot list %s: %s", sub->path, strerror(-e));
    }
    free(stack);
    return r;
}

/* ---- ticks ------------------------------------------------------------------------- */

static const char *describe_errno(int e) {
    switch (e) {
    case ENOENT:
        return "it is gone (deleted, or its file system unmounted)";
    case ESTALE:
        return "stale file handle: the NFS server no longer knows it (deleted or exported "
               "again there)";
    case EACCES:
    case EPERM:
        return "permission denied";
    case ENOTCONN:
        return "its file system does not answer (ENOTCONN: the FUSE server exited?)";
    case EIO:
        return "I/O error (the server or the device does not answer)";
    default:
        return strerror(e);
    }
}

static void tree_problem(struct watch_poll *p, struct tree *tree, const char *message, bool lost) {
    if (tree->problem && strcmp(tree->problem, message) == 0)
        return;
    free(tree->problem);
    tree->problem = strdup(message);
    char full[PATH_MAX + 256];
    snprintf(full, sizeof(full), "cannot poll %s: %s; polling resumes when it can be read",
             tree->top, message);
    watch_note_poll_problem(p->watch, tree->root, tree->top, full, lost);
}

/* Checks that tree's top can be read. Returns true when it can; a tree that could not
 * before is walked again, its changes reported, and said to be back. */
static bool tree_check(struct watch_poll *p, struct tree *tree) {
    struct stat st;
    if (stat_fresh(AT_FDCWD, tree->top, 0, &st) < 0) {
        int e = errno;
        tree_problem(p, tree, describe_errno(e), e == ENOENT);
        return false;
    }
    if (!S_ISDIR(st.st_mode)) {
        tree_problem(p, tree, "it is no longer a directory", true);
        return false;
    }
    if (tree->mountpoint && st.st_dev == tree->parent_dev) {
        tree_problem(p, tree, "the file system mounted there is gone (unmounted)", true);
        return false;
    }
    if (!tree->problem)
        return true;
    int r = walk(p, tree->top_entry, true);
    if (r < 0) {
        tree_problem(p, tree, describe_errno(-r), r == -ENOENT);
        return false;
    }
    free(tree->problem);
    tree->problem = NULL;
    size_t n_dirs = 0;
    size_t pos = 0;
    for (struct entry *e; (e = ptrmap_next(&p->entries, &pos));)
        if (e->is_dir && e->tree == tree)
            n_dirs++;
    watch_note_poll_restored(p->watch, tree->root, tree->top, n_dirs);
    return true;
}

static void rebuild_loaded(struct watch_poll *p) {
    p->loaded_dirty = false;
    size_t n = 0, pos = 0;
    for (struct entry *e; (e = ptrmap_next(&p->entries, &pos));)
        if (e->loaded)
            n++;
    struct entry **loaded = n ? malloc(n * sizeof(*loaded)) : NULL;
    if (n && !loaded) {
        p->loaded_dirty = true;
        return;
    }
    n = 0, pos = 0;
    for (struct entry *e; (e = ptrmap_next(&p->entries, &pos));)
        if (e->loaded)
            loaded[n++] = e;
    free(p->loaded);
    p->loaded = loaded;
    p->n_loaded = n;
}

/* Stats every directory of tree (every file too with full) and lists again those that
 * changed. */
static void tree_scan(struct watch_poll *p, struct tree *tree, bool full) {
    struct entry **stack = NULL;
    size_t n = 0, cap = 0;
    struct entry **todo = malloc(sizeof(*todo));
    if (!todo)
        return;
    todo[0] = tree->top_entry;
    size_t n_todo = 1, cap_todo = 1;
    while (n_todo > 0) {
        struct entry *d = todo[--n_todo];
        struct stat st;
        if (stat_fresh(AT_FDCWD, d->path, 0, &st) == 0) {
            struct stamp now = stamp_of(&st);
            if (!stamp_equal(&now, &d->stamp) || d->racy) {
                int r = dir_list(p, d, true, &stack, &n, &cap);
                if (r < 0 && r != -ENOENT && r != -ENOTDIR)
                    log_warn("watch: cannot list %s: %s", d->path, strerror(-r));
                /* New directories found there are walked, reporting their files. */
                while (n > 0) {
                    struct entry *sub = stack[--n];
                    dir_list(p, sub, true, &stack, &n, &cap);
                }
            }
        }
        for (struct entry *c = d->first_child; c; c = c->next_sibling) {
            if (c->is_dir) {
                if (n_todo == cap_todo) {
                    struct entry **grown = realloc(todo, cap_todo * 2 * sizeof(*grown));
                    if (!grown)
                        break;
                    todo = grown;
                    cap_todo *= 2;
                }
                todo[n_todo++] = c;
            } else if (full && !c->loaded) {
                struct stat fst;
                int64_t fread_ns = realtime_ns();
                if (stat_fresh(AT_FDCWD, c->path, 0, &fst) == 0)
                    file_compare(p, c, &fst, fread_ns, true);
            }
        }
    }
    free(todo);
    free(stack);
}

static void forget_orphans(struct watch_poll *p);

static void on_tick(uv_timer_t *timer) {
    struct watch_poll *p = timer->data;
    p->ticks++;
    bool scan = p->ticks % WATCH_POLL_SCAN_EVERY == 0;
    bool full = p->ticks % (WATCH_POLL_SCAN_EVERY * WATCH_POLL_FULL_EVERY) == 0;
    for (size_t i = 0; i < p->n_trees; i++)
        tree_check(p, p->trees[i]);
    if (p->loaded_dirty)
        rebuild_loaded(p);
    for (size_t i = 0; i < p->n_loaded; i++) {
        struct entry *e = p->loaded[i];
        if (e->tree->problem)
            continue;
        struct stat st;
        int64_t read_ns = realtime_ns();
        if (stat_fresh(AT_FDCWD, e->path, 0, &st) == 0) {
            file_compare(p, e, &st, read_ns, true);
        } else if (errno == ENOENT && !e->missing) {
            e->missing = true;
            watch_note_gone(p->watch, e->path);
        }
    }
    if (scan) {
        for (size_t i = 0; i < p->n_trees; i++)
            if (!p->trees[i]->problem)
                tree_scan(p, p->trees[i], full);
        forget_orphans(p);
    }
    for (size_t i = 0; i < p->n_locks; i++) {
        bool present = access(p->locks[i].lock, F_OK) == 0;
        if (present != p->locks[i].present) {
            p->locks[i].present = present;
            watch_note_vcs_lock(p->watch, p->locks[i].lock, present);
        }
    }
    watch_note_drained(p->watch);
}

/* ---- the interface ------------------------------------------------------------------ */

int watch_poll_new(struct watch *watch, uv_loop_t *loop, unsigned interval_ms,
                   struct watch_poll **out) {
    struct watch_poll *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->watch = watch;
    p->interval_ms = interval_ms ? interval_ms : WATCH_POLL_INTERVAL_MS;
    ptrmap_init(&p->entries, MAP_MIN_SLOTS, entry_hash);
    ptrmap_init(&p->orphans, MAP_MIN_SLOTS, entry_hash);
    strset_init(&p->loaded_paths);
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    *out = p;
    return 0;
}

static void tree_free(struct tree *tree) {
    free(tree->top);
    free(tree->why);
    free(tree->problem);
    free(tree);
}

int watch_poll_add_tree(struct watch_poll *p, size_t root, const char *top, const char *why,
                        char *err, size_t errlen) {
    struct stat st;
    int64_t read_ns = realtime_ns();
    if (stat_fresh(AT_FDCWD, top, 0, &st) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot poll %s: %s", top, describe_errno(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "cannot poll %s: not a directory", top);
        return -ENOTDIR;
    }
    struct tree **trees = realloc(p->trees, (p->n_trees + 1) * sizeof(*trees));
    if (!trees) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->trees = trees;
    struct tree *tree = calloc(1, sizeof(*tree));
    if (!tree || !(tree->top = strdup(top)) || !(tree->why = strdup(why))) {
        if (tree)
            tree_free(tree);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    tree->root = root;
    tree->root_len = strlen(watch_root(p->watch, root));
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", top);
    char *slash = strrchr(parent, '/');
    if (slash)
        slash[slash == parent ? 1 : 0] = '\0';
    struct stat pst;
    if (slash && strcmp(top, "/") != 0 && stat_fresh(AT_FDCWD, parent, 0, &pst) == 0) {
        tree->parent_dev = pst.st_dev;
        tree->mountpoint = pst.st_dev != st.st_dev;
    }
    struct entry *existing = map_get(&p->entries, top);
    if (existing) {
        snprintf(err, errlen, "cannot poll %s: it is polled already", top);
        tree_free(tree);
        return -EEXIST;
    }
    tree->top_entry = entry_new(p, tree, NULL, top, true, &st, read_ns);
    if (!tree->top_entry) {
        tree_free(tree);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->trees[p->n_trees++] = tree;
    int r = walk(p, tree->top_entry, false);
    if (r < 0) {
        snprintf(err, errlen, "cannot poll %s: %s", top, describe_errno(-r));
        entry_remove(p, tree->top_entry, false);
        p->n_trees--;
        tree_free(tree);
        return r;
    }
    if (!uv_is_active((uv_handle_t *)&p->timer))
        uv_timer_start(&p->timer, on_tick, p->interval_ms, p->interval_ms);
    return 0;
}

void watch_poll_remove_root(struct watch_poll *p, size_t root) {
    size_t kept = 0;
    for (size_t i = 0; i < p->n_trees; i++) {
        struct tree *tree = p->trees[i];
        if (tree->root != root) {
            p->trees[kept++] = tree;
            continue;
        }
        entry_remove(p, tree->top_entry, false);
        tree_free(tree);
    }
    p->n_trees = kept;
    if (p->loaded_dirty)
        rebuild_loaded(p);
    if (p->n_trees == 0 && p->n_locks == 0)
        uv_timer_stop(&p->timer);
}

int watch_poll_add_vcs(struct watch_poll *p, const char *gitdir) {
    struct vcs_lock *locks = realloc(p->locks, (p->n_locks + 1) * sizeof(*locks));
    if (!locks)
        return -ENOMEM;
    p->locks = locks;
    char lock[PATH_MAX + 16];
    snprintf(lock, sizeof(lock), "%s/index.lock", gitdir);
    char *copy = strdup(lock);
    if (!copy)
        return -ENOMEM;
    locks[p->n_locks++] = (struct vcs_lock){copy, false};
    if (!uv_is_active((uv_handle_t *)&p->timer))
        uv_timer_start(&p->timer, on_tick, p->interval_ms, p->interval_ms);
    return 0;
}

void watch_poll_set_loaded(struct watch_poll *p, const char *const *paths, size_t n) {
    size_t pos = 0;
    for (struct entry *e; (e = ptrmap_next(&p->entries, &pos));)
        e->loaded = false;
    strset_clear(&p->loaded_paths);
    for (size_t i = 0; i < n; i++) {
        if (strset_add(&p->loaded_paths, paths[i]) < 0)
            break;
        struct entry *e = map_get(&p->entries, paths[i]);
        if (e && !e->is_dir) {
            e->loaded = true;
            /* Its content now is the baseline a later change is compared with. */
            if (!e->hashed && hash_file(e->path, &e->hash) == 0)
                e->hashed = true;
        }
    }
    rebuild_loaded(p);
}

/* Records that a batch carried path with content h, for the directory cycle that finds
 * its new directory. Only paths under a polled tree; at most 65536 are kept. */
static void remember_orphan(struct watch_poll *p, const char *path, uint64_t h) {
    if (p->orphans.len >= 65536)
        return;
    struct entry *o = map_get(&p->orphans, path);
    if (!o) {
        size_t len = strlen(path);
        o = calloc(1, sizeof(*o) + len + 1);
        if (!o)
            return;
        memcpy(o->path, path, len + 1);
        o->key = path_key(path);
        if (ptrmap_insert(&p->orphans, o) < 0) {
            free(o);
            return;
        }
    }
    o->sent_hash = h;
}

static void forget_orphans(struct watch_poll *p) {
    size_t pos = 0;
    for (struct entry *o; (o = ptrmap_next(&p->orphans, &pos));)
        free(o);
    ptrmap_clear(&p->orphans);
}

bool watch_poll_is_repeat(struct watch_poll *p, const char *path) {
    struct entry *e = map_get(&p->entries, path);
    if (e ? e->is_dir : !tree_of(p, path))
        return false;  /* not a polled file: nothing to compare (and nothing to read) */
    int64_t read_ns = realtime_ns();
    struct stat st;
    uint64_t h;
    if (stat_fresh(AT_FDCWD, path, 0, &st) < 0) {
        if (errno != ENOENT || !e)
            return false;
        if (e->missing && e->sent_gone)
            return true;
        e->missing = true;
        e->sent_gone = true;
        return false;
    }
    if (!S_ISREG(st.st_mode) || hash_file(path, &h) < 0)
        return false;
    if (!e) {
        /* New in a polled directory (inotify saw it first): the poll is to find it known. */
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir)
            return false;
        *slash = '\0';
        struct entry *d = map_get(&p->entries, dir);
        if (!d || !d->is_dir) {
            remember_orphan(p, path, h);
            return false;
        }
        if (!(e = entry_new(p, d->tree, d, path, false, &st, read_ns)))
            return false;
    }
    e->sent_gone = false;
    if (e->sent && e->sent_hash == h)
        return true;
    e->sent = true;
    e->sent_hash = h;
    e->hash = h;
    e->hashed = true;
    e->missing = false;
    e->stamp = stamp_of(&st);
    e->racy = stamp_racy(&e->stamp, read_ns);
    return false;
}

size_t watch_poll_tree_count(const struct watch_poll *p, size_t root) {
    size_t n = 0;
    for (size_t i = 0; i < p->n_trees; i++)
        if (p->trees[i]->root == root)
            n++;
    return n;
}

const char *watch_poll_tree(const struct watch_poll *p, size_t root, size_t k, const char **why,
                            const char **problem) {
    for (size_t i = 0; i < p->n_trees; i++) {
        if (p->trees[i]->root != root || k-- > 0)
            continue;
        if (why)
            *why = p->trees[i]->why;
        if (problem)
            *problem = p->trees[i]->problem;
        return p->trees[i]->top;
    }
    return NULL;
}

void watch_poll_get_stats(const struct watch_poll *p, struct watch_stats *out) {
    out->polled_dirs = p->n_dirs;
    out->polled_files = p->n_files;
    out->polled_loaded = p->n_loaded;
    out->poll_cycles = p->ticks;
}

static void on_timer_closed(uv_handle_t *handle) {
    struct watch_poll *p = handle->data;
    void (*cb)(void *) = p->close_cb;
    void *data = p->close_data;
    size_t pos = 0;
    for (struct entry *e; (e = ptrmap_next(&p->entries, &pos));)
        free(e);
    ptrmap_clear(&p->entries);
    forget_orphans(p);
    for (size_t i = 0; i < p->n_trees; i++)
        tree_free(p->trees[i]);
    free(p->trees);
    for (size_t i = 0; i < p->n_locks; i++)
        free(p->locks[i].lock);
    free(p->locks);
    free(p->loaded);
    strset_clear(&p->loaded_paths);
    free(p);
    if (cb)
        cb(data);
}

void watch_poll_close(struct watch_poll *p, void (*close_cb)(void *data), void *data) {
    p->close_cb = close_cb;
    p->close_data = data;
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
}
