#ifndef PYHOT_PLUGINS_H
#define PYHOT_PLUGINS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "metrics.h"
#include "server.h"
#include "watch.h"

/*
 * Plugin directories, the loop thread's half (docs/plugins.md; the Python half is
 * lib/py_plugins.py). It knows which paths are plugin files (a file directly inside a
 * plugin directory whose name matches the pattern), turns each into a PY_JOB_PLUGIN job
 * with the reload deadline (one job per file, so a plugin that hangs is interrupted alone
 * and the others keep their state), publishes the `plugin` event of each finished job and
 * keeps what the `plugins` command lists. Loop thread only; no PyObject here.
 */
struct plugins;

struct plugins_options {
    const char *const *dirs;     /* plugin directories, absolute and realpath'd */
    size_t n_dirs;
    const char *const *roots;    /* the watch roots at start: a plugin directory inside one
                                    shares its batches with the reload engine */
    size_t n_roots;
    const char *pattern;         /* fnmatch(3) glob for file names, e.g. "plugin_*.py" */
    const char *api;             /* "MODULE:ATTR" or NULL */
    unsigned timeout_ms;         /* deadline of one plugin's load, ms */
    struct server *server;       /* borrowed: jobs go to its host, events to its bus */
};

/* Copies options (the strings too). Returns 0 and sets *out, or -ENOMEM. */
int plugins_new(const struct plugins_options *options, struct plugins **out);

/* Frees what plugins_new allocated. Call after the python host stopped: jobs still in
 * flight point at it. NULL is allowed. */
void plugins_free(struct plugins *plugins);

/* Queues a load of every matching file of every plugin directory, in name order (file
 * names compared bytewise; for equal names, directories in the order given). Returns the
 * number of files queued, or a negative errno (-ESHUTDOWN: the host is stopping). A
 * directory that cannot be read is logged and skipped. */
int plugins_load_all(struct plugins *plugins);

/* Whether the directory at path (absolute, realpath'd) is a plugin directory that is not
 * inside a watch root: the daemon watches it as a root of its own. */
bool plugins_needs_watch(const struct plugins *plugins, const char *path);

/* Takes the paths of batch that belong to the plugin host out of it and queues a load for
 * each plugin file among them; paths of a plugin directory that are not plugin files are
 * dropped unless the directory lies inside a watch root (then they stay, for the reload
 * engine). The batch keeps its other paths, in their order. Returns the number of loads
 * queued. */
size_t plugins_take_batch(struct plugins *plugins, struct watch_batch *batch);

/* The plugins command's result: {"plugins": [{name, path, state, exports, loaded_at,
 * error}, ...]} sorted by name, "dirs" and "pattern". New reference, NULL on ENOMEM. */
json_t *plugins_list(const struct plugins *plugins);

/* Plugin events published so far, by result. */
void plugins_get_counts(const struct plugins *plugins, struct metrics_plugin_results *out);

#endif
