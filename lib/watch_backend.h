#ifndef PYHOT_WATCH_BACKEND_H
#define PYHOT_WATCH_BACKEND_H

/*
 * The contract between watch.c (roots, settle, holds, batches) and a backend
 * (watch_inotify.c on Linux, watch_uv.c anywhere libuv runs). Internal to the watch
 * component; everything here runs on the loop thread.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "watch.h"

struct watch;
struct watch_backend;

/* ---- backend -> watch.c --------------------------------------------------------- */

/* An accepted file finished changing (written and closed, or moved into place). path is
 * absolute; copied. */
void watch_note_change(struct watch *watch, const char *path);

/* An accepted file was found by a walk (a new directory listed, a rescan): reported like
 * a change, but its write may not be finished and its own completing event may follow, so
 * its batch waits the settle window rather than leaving when the queue is drained. */
void watch_note_found(struct watch *watch, const char *path);

/* An accepted file was deleted or moved away (it may come back at once: a batch waits a
 * little for a missing path to reappear). */
void watch_note_gone(struct watch *watch, const char *path);

/* An accepted file was created, truncated or written and is not closed yet: a batch
 * holding its path waits for its watch_note_change (at most WATCH_HOLD_WRITES_MS), and no
 * batch leaves before the settle window meanwhile. */
void watch_note_writing(struct watch *watch, const char *path);

/* Every event available now has been read. With a settle window of 0 the pending batch
 * goes out at once, without a timer's extra loop turn. */
void watch_note_drained(struct watch *watch);

/* Root i stopped being watched: WATCH_ROOT_LOST (deleted or moved away; the backend
 * watches for it to come back) or WATCH_ROOT_FAILED (a limit or an error; message says
 * which). Reported through on_error once per change of state. */
void watch_note_root_state(struct watch *watch, size_t root, enum watch_root_state state,
                           const char *message);

/* Root i is watched again (it reappeared); n_dirs directories were watched. */
void watch_note_root_restored(struct watch *watch, size_t root, size_t n_dirs);

/* The backend rescanned its roots (reason: "overflow"); n_changed files were reported
 * with watch_note_change. */
void watch_note_rescan(struct watch *watch, const char *reason, size_t n_changed,
                       uint64_t duration_ns);

/* The version-control lock file lock_path appeared (present) or went away. */
void watch_note_vcs_lock(struct watch *watch, const char *lock_path, bool present);

/* The filter (for directory and file decisions), the options, the path of root i, the
 * number of roots and whether root i is being watched. */
const struct filter *watch_filter(const struct watch *watch);
const struct watch_options *watch_get_options(const struct watch *watch);
const char *watch_root(const struct watch *watch, size_t root);
size_t watch_roots(const struct watch *watch);
enum watch_root_state watch_root_state_of(const struct watch *watch, size_t root);

/* ---- watch.c -> backend --------------------------------------------------------- */

struct watch_backend_ops {
    const char *name;
    /* The backend reports a file only once its write is finished (watch_note_change means
     * complete), so a drained queue may send a batch before the settle window. */
    bool reports_completion;

    /* Creates the backend. Returns 0 and sets *out, or a negative errno with a message in
     * err (the watcher then reports that error for every root). */
    int (*create)(struct watch *watch, uv_loop_t *loop, struct watch_backend **out,
                  char *err, size_t errlen);

    /* Watches root i's tree (its initial walk reports no files). Returns 0 or a negative
     * errno with a message in err; on failure the root holds no watches. */
    int (*add_root)(struct watch_backend *backend, size_t root, char *err, size_t errlen);

    /* Watches the directory gitdir non-recursively and reports its index.lock through
     * watch_note_vcs_lock. Returns 0 or a negative errno (the watcher then just does not
     * defer batches for that repository). */
    int (*add_vcs)(struct watch_backend *backend, const char *gitdir, char *err,
                   size_t errlen);

    size_t (*dir_count)(const struct watch_backend *backend);

    /* Stops watching root i: every watch of its tree, and of its sentinel when it is lost,
     * is removed; nothing under it is reported any more. */
    void (*remove_root)(struct watch_backend *backend, size_t root);

    /* Closes the backend's handles; close_cb(data) runs once its memory is released. */
    void (*close)(struct watch_backend *backend, void (*close_cb)(void *data), void *data);
};

extern const struct watch_backend_ops watch_inotify_ops;
extern const struct watch_backend_ops watch_uv_ops;

/* ---- polling (watch_poll.c) ------------------------------------------------------ */

/*
 * Polled trees: a root, or a mount inside a root, whose changes inotify may not see. Each
 * interval the loaded modules' files in them are compared (stat, then a content hash when
 * the stat differs or is too recent to trust); every WATCH_POLL_SCAN_EVERY intervals
 * their directories are compared and those that changed are listed again (new and removed
 * files and directories). Findings go through watch_note_change / watch_note_gone /
 * watch_note_drained like any backend's.
 */
struct watch_poll;

/* Creates the poller (its timer starts with the first tree). Returns 0 or -ENOMEM. */
int watch_poll_new(struct watch *watch, uv_loop_t *loop, unsigned interval_ms,
                   struct watch_poll **out);

/* Polls the tree at top (absolute; root i's path or a directory below it) as part of root
 * i; why is kept for status. Its initial walk reports nothing. Returns 0, or a negative
 * errno with a message in err (-ENOENT, -EACCES, -ESTALE, -ENOMEM). */
int watch_poll_add_tree(struct watch_poll *poll, size_t root, const char *top, const char *why,
                        char *err, size_t errlen);

/* Stops polling root i's trees. */
void watch_poll_remove_root(struct watch_poll *poll, size_t root);

/* Polls gitdir/index.lock every interval (roots without inotify) and reports it through
 * watch_note_vcs_lock. Returns 0 or -ENOMEM. */
int watch_poll_add_vcs(struct watch_poll *poll, const char *gitdir);

/* The loaded modules' files (copied into the poller's own entries; files of no polled
 * tree are ignored). */
void watch_poll_set_loaded(struct watch_poll *poll, const char *const *paths, size_t n);

/* A batch is about to carry path. Returns true when path lies in a polled tree and its
 * content is the same as when it last went out in a batch (inotify and the poll both saw
 * one change): the caller drops it. Otherwise records its stat and content hash, so the
 * poll does not report this change again, and returns false. */
bool watch_poll_is_repeat(struct watch_poll *poll, const char *path);

/* Root i's polled trees: count, and tree k's top, why and problem (NULL when fine). */
size_t watch_poll_tree_count(const struct watch_poll *poll, size_t root);
const char *watch_poll_tree(const struct watch_poll *poll, size_t root, size_t k,
                            const char **why, const char **problem);

void watch_poll_get_stats(const struct watch_poll *poll, struct watch_stats *out);

/* Closes the timer; close_cb(data) runs once the poller's memory is released. */
void watch_poll_close(struct watch_poll *poll, void (*close_cb)(void *data), void *data);

/* A polled tree cannot be read (top is root i's path or a mount inside it; message says
 * why: unmounted, stale NFS handle, permission denied), or can again (message NULL). The
 * watcher reports it through on_error / on_notice; the other roots are not affected. */
void watch_note_poll_problem(struct watch *watch, size_t root, const char *top,
                             const char *message, bool lost);
void watch_note_poll_restored(struct watch *watch, size_t root, const char *top,
                              size_t n_dirs);

/* The file system types whose changes inotify may miss (they can come from another
 * machine, another mount or a userspace server): by statfs(2) f_type, and by the type
 * name of /proc/self/mounts (e.g. "nfs4", "fuse.sshfs", "9p"). */
bool watch_fs_magic_is_remote(long f_type);
bool watch_fs_name_is_remote(const char *fstype);

/* ---- helpers shared by the backends (watch.c) -------------------------------------- */

/* The message of a failed watch of path with errno e: ENOSPC names the sysctl
 * fs.inotify.max_user_watches, EMFILE fs.inotify.max_user_instances. Returns -e. */
int watch_describe_error(int e, const char *path, char *err, size_t errlen);

/* The nearest existing directory at or above path (absolute), written into dir (len
 * bytes): where a lost root is waited for. Returns 0, or -ENOENT for a relative path. */
int watch_nearest_dir(const char *path, char *dir, size_t len);

#endif
