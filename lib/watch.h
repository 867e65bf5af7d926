#ifndef PYHOT_WATCH_H
#define PYHOT_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "filter.h"

/*
 * Recursive directory watching on the loop thread, settled into batches.
 *
 * Every change to an accepted file (filter.h) under a root adds its path to the pending
 * set and restarts the settle timer; when settle_ms pass with no further change, the
 * pending set goes out as one batch. On Linux a finished write is IN_CLOSE_WRITE or
 * IN_MOVED_TO (inotify(7)); a half-written file is never batched on IN_MODIFY alone.
 * New directories are watched and scanned at once, so files created in them before their
 * watch landed are batched too.
 */
struct watch;

struct watch_batch {
    char **paths;            /* absolute paths, each once, in the order first seen (owned) */
    size_t n_paths;
    uint64_t first_event_ns; /* uv_hrtime() of the batch's first file event */
};

/* Called on the loop thread with a batch the callee now owns (release with
 * watch_batch_free). */
typedef void (*watch_batch_cb)(struct watch *watch, struct watch_batch *batch, void *data);

/* Called on the loop thread when a root cannot be watched, or stops being watched (e.g.
 * deleted); message is a full sentence, valid during the call. */
typedef void (*watch_error_cb)(struct watch *watch, const char *root, const char *message,
                               void *data);

struct watch_options {
    unsigned settle_ms;           /* quiet time that closes a batch, ms; 0 = next loop turn */
    const struct filter *filter;  /* borrowed; must outlive the watch */
    watch_batch_cb on_batch;
    watch_error_cb on_error;      /* may be NULL */
    void *data;
};

/* Creates a watcher on loop (inotify on Linux). Returns 0 and sets *out, or a negative
 * errno (-EMFILE when the inotify instance limit fs.inotify.max_user_instances is hit)
 * with a message in err. */
int watch_new(uv_loop_t *loop, const struct watch_options *options, struct watch **out,
              char *err, size_t errlen);

/* Watches the directory at path (absolute, already realpath'd) and every directory below
 * it that the filter does not ignore. Returns 0, or a negative errno with a message in
 * err: -ENOSPC names the sysctl fs.inotify.max_user_watches; -ENOENT, -ENOTDIR, -EACCES
 * name the path. Directories below the root that fail are logged and skipped. */
int watch_add_root(struct watch *watch, const char *path, char *err, size_t errlen);

/* Stops watching the root at path (as given to watch_add_root; trailing slashes are
 * ignored): its directory watches are removed (inotify_rm_watch(2)) and it leaves the
 * list of roots, so the indices of later roots shift down by one. Changes already
 * pending stay in the next batch. Returns 0, or -ENOENT with a message in err when path
 * is not a root. */
int watch_remove_root(struct watch *watch, const char *path, char *err, size_t errlen);

/* Changes the settle window (ms) for batches that start after the call. */
void watch_set_settle(struct watch *watch, unsigned settle_ms);

/* Number of directories currently watched. */
size_t watch_dir_count(const struct watch *watch);

/* Number of roots and the path of root i (borrowed) and whether it is watched. */
size_t watch_root_count(const struct watch *watch);
const char *watch_root_path(const struct watch *watch, size_t i, bool *watching);

/* Stops watching and closes the libuv handles; close_cb(data) runs from the loop once
 * they are closed and the watcher's memory is released. Pending changes are dropped. */
void watch_close(struct watch *watch, void (*close_cb)(void *data), void *data);

/* Frees a batch and its paths. NULL is allowed. */
void watch_batch_free(struct watch_batch *batch);

#endif
