#ifndef PYHOT_WATCH_BACKEND_H
#define PYHOT_WATCH_BACKEND_H

/*
 * The contract between watch.c (roots, settle, batches) and a backend (watch_inotify.c on
 * Linux). Internal to the watch component.
 */
#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

struct watch;
struct watch_backend;

/* Backend -> watch.c: an accepted file changed (path is absolute; copied). */
void watch_note_change(struct watch *watch, const char *path);

/* Backend -> watch.c: every event available now has been read. With a settle window of
 * 0 the pending batch goes out at once, without a timer's extra loop turn. */
void watch_note_drained(struct watch *watch);

/* Backend -> watch.c: root i stopped being watched (deleted or moved away). */
void watch_note_root_lost(struct watch *watch, size_t root, const char *message);

/* Backend -> watch.c: the filter (for directory and file decisions). */
const struct filter *watch_filter(const struct watch *watch);

/* Backend -> watch.c: the path of root i. */
const char *watch_root(const struct watch *watch, size_t root);

int watch_backend_new(struct watch *watch, uv_loop_t *loop, struct watch_backend **out,
                      char *err, size_t errlen);

/* Watches root i's tree. Returns 0 or a negative errno with a message in err. */
int watch_backend_add_root(struct watch_backend *backend, size_t root, char *err,
                           size_t errlen);

/* Drops root i's watches, and renumbers the directories of roots after it (i + 1 becomes
 * i, ...): watch.c removes the root from its list right after. */
void watch_backend_remove_root(struct watch_backend *backend, size_t root);

size_t watch_backend_dir_count(const struct watch_backend *backend);

/* Closes the backend's handles; close_cb(data) runs once its memory is released. */
void watch_backend_close(struct watch_backend *backend, void (*close_cb)(void *data),
                         void *data);

#endif
