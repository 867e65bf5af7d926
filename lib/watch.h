#ifndef PYHOT_WATCH_H
#define PYHOT_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "filter.h"

/*
 * Recursive directory watching on the loop thread, settled into batches
 * (docs/watching.md is the user's version).
 *
 * Every change to an accepted file (filter.h) under a root adds its path to the pending
 * set. The settle is adaptive: once the backend's queue is drained, the pending set goes
 * out at once when every path in it has seen its completing event (on Linux
 * IN_CLOSE_WRITE or IN_MOVED_TO, inotify(7); a poll's finished comparison), no accepted
 * file is open for writing (created, truncated or modified and not yet closed), the set
 * is small (at most WATCH_FAST_MAX_PATHS) and files are not changing in numbers (fewer
 * than WATCH_STORM_CHANGES within WATCH_STORM_WINDOW_MS). Otherwise it goes out when
 * settle_ms pass with no further change. A half-written file is never batched on
 * IN_MODIFY alone, and a batch waits while one of its paths has been created or written
 * but not yet closed (an editor that renames the original away and writes a new file),
 * at most WATCH_HOLD_WRITES_MS.
 *
 * Each root is watched by inotify, by polling, or by both (watch_poll.c): polling where
 * changes can come from elsewhere than this kernel (NFS, SMB, FUSE, 9p, ...; decided per
 * root and per mount inside a root), or where the options ask for it.
 * New directories are watched and scanned at once, so files created in them before their
 * watch landed are batched too.
 *
 * Batches are held (pending paths accumulate, nothing goes out) while any hold is set:
 * the pause command, a reload job of the previous batch still running (the daemon's
 * hold), or a version-control lock (`.git/index.lock` of a root's repository) for at
 * most defer_vcs_ms. When the last hold goes, everything pending goes out as one batch.
 */
struct watch;

/* Longest time a batch waits for a file that was created and not yet closed, ms. */
#define WATCH_HOLD_WRITES_MS 2000

/* The adaptive settle's limits: a pending set larger than this, or this many changes
 * within the window, waits the settle window (a checkout, a generator, a storm). */
#define WATCH_FAST_MAX_PATHS 8
#define WATCH_STORM_CHANGES 16
#define WATCH_STORM_WINDOW_MS 100

/* Default poll interval, ms (watchfiles polls every 300 ms, chokidar's binary-file
 * interval is 300 ms, watchdog's PollingObserver every 1000 ms). */
#define WATCH_POLL_INTERVAL_MS 300

/* Polled trees list their directories (new and removed files and directories) every this
 * many intervals, and compare every accepted file, loaded or not, every
 * WATCH_POLL_SCAN_EVERY * WATCH_POLL_FULL_EVERY intervals. */
#define WATCH_POLL_SCAN_EVERY 4
#define WATCH_POLL_FULL_EVERY 4

struct watch_batch {
    char **paths;            /* absolute paths, each once, in the order first seen (owned) */
    size_t n_paths;
    uint64_t first_event_ns; /* uv_hrtime() of the batch's first file event */
};

/* Called on the loop thread with a batch the callee now owns (release with
 * watch_batch_free). */
typedef void (*watch_batch_cb)(struct watch *watch, struct watch_batch *batch, void *data);

/* Called on the loop thread when a root cannot be watched, or stops being watched (it
 * was deleted or moved away, or a kernel limit was hit); message is a full sentence,
 * valid during the call. */
typedef void (*watch_error_cb)(struct watch *watch, const char *root, const char *message,
                               void *data);

enum watch_notice_kind {
    WATCH_NOTICE_RESTORED,  /* a lost root is back and watched again: root, n_dirs */
    WATCH_NOTICE_RESCAN,    /* the roots were rescanned: reason, n_changed, n_dirs, duration_ns */
    WATCH_NOTICE_HELD,      /* batches are held from now on: reason, path (the lock) or NULL */
    WATCH_NOTICE_RELEASED,  /* a hold ended: reason, n_pending (paths about to go out) */
};

/* Holds that the daemon or a user sets (watch_hold); the version-control hold is the
 * watcher's own. */
enum watch_hold {
    WATCH_HOLD_PAUSE = 1,   /* the pause command */
    WATCH_HOLD_BUSY = 2,    /* the previous batch's reload job is still running */
    WATCH_HOLD_VCS = 4,     /* a .git/index.lock exists (internal; reported in status) */
};

struct watch_notice {
    enum watch_notice_kind kind;
    const char *root;       /* RESTORED */
    const char *reason;     /* RESCAN: "overflow"; HELD/RELEASED: "pause", "vcs" */
    const char *path;       /* HELD for "vcs": the lock file */
    size_t n_dirs;          /* RESTORED: dirs of the root; RESCAN: dirs watched after it */
    size_t n_changed;       /* RESCAN: paths it found changed */
    size_t n_pending;       /* RELEASED */
    uint64_t duration_ns;   /* RESCAN */
};

/* Called on the loop thread for what is neither a batch nor an error; the notice and its
 * strings are valid during the call. */
typedef void (*watch_notice_cb)(struct watch *watch, const struct watch_notice *notice,
                                void *data);

enum watch_backend_kind {
    WATCH_BACKEND_INOTIFY = 0,  /* Linux: one inotify fd, overflow detected and rescanned */
    WATCH_BACKEND_UV = 1,       /* uv_fs_event: kqueue, FSEvents, inotify; no overflow */
    WATCH_BACKEND_POLL = 2,     /* every root polled, no event backend at all */
};

struct watch_options {
    unsigned settle_ms;           /* quiet time that closes a batch, ms; 0 = next loop turn */
    const struct filter *filter;  /* borrowed; must outlive the watch */
    enum watch_backend_kind backend;
    bool follow_symlinks;         /* watch directories reached through symlinks too */
    unsigned defer_vcs_ms;        /* longest hold while .git/index.lock exists; 0 = no hold */
    unsigned poll_interval_ms;    /* polled roots: loaded files compared every interval, ms;
                                   * directories every WATCH_POLL_SCAN_EVERY intervals;
                                   * 0 = WATCH_POLL_INTERVAL_MS */
    const char *const *poll_dirs; /* roots at or below these are polled beside inotify;
                                   * copied by watch_new */
    size_t n_poll_dirs;
    watch_batch_cb on_batch;
    watch_error_cb on_error;      /* may be NULL */
    watch_notice_cb on_notice;    /* may be NULL */
    void *data;
};

/* Creates a watcher on loop. Returns 0 and sets *out, or -ENOMEM / -EINVAL (a backend
 * this platform lacks) with a message in err. A backend that cannot start (on Linux,
 * -EMFILE: the inotify instance limit fs.inotify.max_user_instances) does not fail
 * this call: every watch_add_root then fails with that error and its message. */
int watch_new(uv_loop_t *loop, const struct watch_options *options, struct watch **out,
              char *err, size_t errlen);

/* Watches the directory at path (absolute, already realpath'd) and every directory below
 * it that the filter does not ignore, and the repository's `.git` directory (the nearest
 * one at or above path, non-recursively) for index.lock. The root is recorded either way
 * (status lists it as failed). Returns 0, or a negative errno with a message in err:
 * -ENOSPC names the sysctl fs.inotify.max_user_watches (the root's watches are released,
 * so the other roots keep theirs); -EMFILE names fs.inotify.max_user_instances;
 * -ENOENT, -ENOTDIR, -EACCES name the path. Directories below the root that vanish or
 * cannot be read while it is walked are skipped (logged). */
int watch_add_root(struct watch *watch, const char *path, char *err, size_t errlen);

/* Stops watching the root at path (as given to watch_add_root): its directories' watches
 * are removed and no change under it is reported any more. Returns 0, or -ENOENT with a
 * message in err when no such root is watched. */
int watch_remove_root(struct watch *watch, const char *path, char *err, size_t errlen);

/* Tells the watcher which files are loaded modules (absolute paths, as the index holds
 * them; copied): polled roots compare these every interval, the others only on the slower
 * directory cycle. Replaces the previous list. Returns 0 or -ENOMEM (the old list stays). */
int watch_set_loaded(struct watch *watch, const char *const *paths, size_t n);

/* Changes the settle window (ms) for batches that start after the call. */
void watch_set_settle(struct watch *watch, unsigned settle_ms);

/* Sets (hold) or clears (release) one of WATCH_HOLD_PAUSE, WATCH_HOLD_BUSY. Releasing the
 * last hold sends everything pending as one batch (after the write hold above). Setting a
 * hold that is set, or releasing one that is not, does nothing. Pause and its release
 * are reported through on_notice. */
void watch_hold(struct watch *watch, enum watch_hold hold);
void watch_release(struct watch *watch, enum watch_hold hold);

enum watch_root_state {
    WATCH_ROOT_WATCHING = 0,
    WATCH_ROOT_FAILED = 1,   /* could not be watched (limit, permissions); see message */
    WATCH_ROOT_LOST = 2,     /* deleted or moved away; watched again when it reappears */
};

/* How root i is watched: "inotify", "uv", "inotify+poll" or "poll", and why (a sentence
 * fragment such as "nfs4 file system", "backend = poll", "local ext4 file system";
 * borrowed, valid until the root is removed). */
const char *watch_root_method(const struct watch *watch, size_t i, const char **why);

/* "inotify+poll (nfs4 file system)": root i's watch_root_method and why, for the log,
 * written into buf (len bytes). Returns buf. */
const char *watch_root_describe(const struct watch *watch, size_t i, char *buf, size_t len);

/* The polled trees below root i that are not the root itself (mounts of network or FUSE
 * file systems inside it): their count, and tree k's top path, why it is polled and,
 * when polling it fails, the message (else NULL). Borrowed. */
size_t watch_root_polled_count(const struct watch *watch, size_t i);
const char *watch_root_polled(const struct watch *watch, size_t i, size_t k, const char **why,
                              const char **problem);

/* What status reports about the watcher. Strings are borrowed from the watcher and valid
 * until the next call into it. */
struct watch_stats {
    const char *backend;     /* "inotify" or "uv" */
    size_t dirs;             /* directories watched */
    uint64_t rescans;        /* rescans since start (after queue overflows) */
    uint64_t batches;        /* batches sent */
    size_t pending;          /* paths waiting for the next batch */
    unsigned holds;          /* WATCH_HOLD_* bits set now */
    const char *vcs_lock;    /* one lock file holding batches now, or NULL */
    uint64_t setup_ns;       /* time the roots' initial walks took, summed */
    unsigned poll_interval_ms;
    size_t polled_dirs;      /* directories of polled trees */
    size_t polled_files;     /* accepted files of polled trees */
    size_t polled_loaded;    /* of them, loaded modules (compared every interval) */
    uint64_t poll_cycles;    /* intervals polled since start */
    uint64_t fast_batches;   /* batches that left before the settle window (adaptive) */
};
void watch_get_stats(const struct watch *watch, struct watch_stats *out);

/* Number of directories currently watched. */
size_t watch_dir_count(const struct watch *watch);

/* Number of root slots; the path of root i (borrowed), or NULL for a slot whose root was
 * removed (watch_root_state tells whether it is watched). */
size_t watch_root_count(const struct watch *watch);
const char *watch_root_path(const struct watch *watch, size_t i);

/* Root i's state and, when not watching, the message that says why (borrowed, or NULL). */
enum watch_root_state watch_root_state(const struct watch *watch, size_t i,
                                       const char **message);

/* Stops watching and closes the libuv handles; close_cb(data) runs from the loop once
 * they are closed and the watcher's memory is released. Pending changes are dropped. */
void watch_close(struct watch *watch, void (*close_cb)(void *data), void *data);

/* Frees a batch and its paths. NULL is allowed. */
void watch_batch_free(struct watch_batch *batch);

#endif
