#include "plugins.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "protocol.h"

struct plugin_dir {
    char *path;
    bool inside_root;  /* lies inside a watch root: its other files are the engine's */
};

struct plugins {
    struct plugin_dir *dirs;
    size_t n_dirs;
    char *pattern;
    char *api;
    unsigned timeout_ms;
    struct server *server;
    json_t *state;                 /* name -> the plugin's state, as py_plugins.py describes it */
    struct metrics_plugin_results counts;
};

static bool path_under(const char *path, const char *root) {
    size_t n = strlen(root);
    return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/' || (n == 1 && root[0] == '/'));
}

int plugins_new(const struct plugins_options *options, struct plugins **out) {
    struct plugins *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->dirs = calloc(options->n_dirs ? options->n_dirs : 1, sizeof(*p->dirs));
    p->pattern = strdup(options->pattern);
    p->api = options->api ? strdup(options->api) : NULL;
    p->state = json_object();
    if (!p->dirs || !p->pattern || (options->api && !p->api) || !p->state) {
        plugins_free(p);
        return -ENOMEM;
    }
    for (size_t i = 0; i < options->n_dirs; i++) {
        struct plugin_dir *d = &p->dirs[p->n_dirs];
        if (!(d->path = strdup(options->dirs[i]))) {
            plugins_free(p);
            return -ENOMEM;
        }
        p->n_dirs++;
        for (size_t r = 0; r < options->n_roots; r++)
            d->inside_root |= path_under(d->path, options->roots[r]);
    }
    p->timeout_ms = options->timeout_ms;
    p->server = options->server;
    *out = p;
    return 0;
}

void plugins_free(struct plugins *p) {
    if (!p)
        return;
    for (size_t i = 0; i < p->n_dirs; i++)
        free(p->dirs[i].path);
    free(p->dirs);
    free(p->pattern);
    free(p->api);
    json_decref(p->state);
    free(p);
}

/* The plugin directory path lies directly in, or NULL. */
static const struct plugin_dir *dir_of(const struct plugins *p, const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return NULL;
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    for (size_t i = 0; i < p->n_dirs; i++)
        if (strlen(p->dirs[i].path) == n && strncmp(p->dirs[i].path, path, n) == 0)
            return &p->dirs[i];
    return NULL;
}

/* Under a plugin directory at any depth (its subdirectories are watched with it). */
static const struct plugin_dir *dir_above(const struct plugins *p, const char *path) {
    for (size_t i = 0; i < p->n_dirs; i++)
        if (path_under(path, p->dirs[i].path))
            return &p->dirs[i];
    return NULL;
}

static bool is_plugin_file(const struct plugins *p, const char *path) {
    return dir_of(p, path) && fnmatch(p->pattern, strrchr(path, '/') + 1, FNM_PERIOD) == 0;
}

bool plugins_needs_watch(const struct plugins *p, const char *path) {
    for (size_t i = 0; i < p->n_dirs; i++)
        if (strcmp(p->dirs[i].path, path) == 0)
            return !p->dirs[i].inside_root;
    return false;
}

/* ---- a plugin job's end: the event and the state ------------------------------------ */

static void count(struct plugins *p, const char *result) {
    if (strcmp(result, "loaded") == 0)
        p->counts.loaded++;
    else if (strcmp(result, "reloaded") == 0)
        p->counts.reloaded++;
    else if (strcmp(result, "removed") == 0)
        p->counts.removed++;
    else
        p->counts.error++;
}

static void publish(struct plugins *p, json_t *event) {
    const char *name = json_string_value(json_object_get(event, "name"));
    const char *path = json_string_value(json_object_get(event, "path"));
    const char *result = json_string_value(json_object_get(event, "result"));
    if (!name || !path || !result) {
        json_decref(event);
        return;
    }
    count(p, result);
    json_t *error = json_object_get(event, "error");
    if (json_is_object(error))
        log_warn("plugin %s (%s) failed: %s: %s (%s:%lld)", name, path,
                 json_string_value(json_object_get(error, "type")),
                 json_string_value(json_object_get(error, "message")),
                 json_string_value(json_object_get(error, "file")),
                 json_integer_value(json_object_get(error, "line")));
    else
        log_info("plugin %s %s (%.1f ms)", name, result,
                 json_number_value(json_object_get(event, "duration_ms")));
    events_publish(p->server->events, "plugin", event);
}

static void on_plugin_job_done(struct py_job *job, void *data) {
    struct plugins *p = data;
    const char *path = json_string_value(json_object_get(job->input, "path"));
    if (job->ok) {
        json_t *event = json_object_get(job->output, "event");
        json_t *plugin = json_object_get(job->output, "plugin");
        const char *name = json_string_value(json_object_get(json_is_object(plugin) ? plugin : event, "name"));
        if (json_is_object(plugin) && name)
            json_object_set(p->state, name, plugin);
        else if (json_is_object(event) && name &&
                 strcmp(json_string_value(json_object_get(event, "result")), "removed") == 0)
            json_object_del(p->state, name);
        if (json_is_object(event))
            publish(p, json_incref(event));
    } else if (path && strcmp(json_string_value(json_object_get(job->output, "code")) ?: "",
                              PROTOCOL_E_SHUTTING_DOWN) != 0) {
        /* The host failed around the plugin's run (its deadline passed outside the run,
         * say): reported as the plugin's error; its state stays as it was. */
        const char *base = strrchr(path, '/') + 1;
        const char *dot = strrchr(base, '.');
        json_t *error = json_deep_copy(job->output);
        json_object_del(error, "code");
        publish(p, json_pack("{s:s%, s:s, s:s, s:f, s:o}", "name", base, dot ? (size_t)(dot - base) : strlen(base),
                             "path", path, "result", "error", "duration_ms",
                             (double)(job->finished_ns - job->started_ns) / 1e6, "error", error));
    }
    py_job_free(job);
}

static int submit_load(struct plugins *p, const char *path) {
    json_t *input = json_pack("{s:s, s:o}", "path", path, "api", p->api ? json_string(p->api) : json_null());
    return server_submit(p->server, PY_JOB_PLUGIN, input, p->timeout_ms, on_plugin_job_done, p);
}

/* ---- which files ----------------------------------------------------------------------- */

struct found {
    char *name;        /* the file name */
    size_t dir;        /* index into dirs */
};

static int found_cmp(const void *a, const void *b) {
    const struct found *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->dir > y->dir) - (x->dir < y->dir);
}

int plugins_load_all(struct plugins *p) {
    struct found *found = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    for (size_t i = 0; i < p->n_dirs && r == 0; i++) {
        DIR *dir = opendir(p->dirs[i].path);
        if (!dir) {
            log_warn("plugin directory %s: %s", p->dirs[i].path, strerror(errno));
            continue;
        }
        struct dirent *entry;
        while (r == 0 && (entry = readdir(dir))) {
            if (fnmatch(p->pattern, entry->d_name, FNM_PERIOD) != 0)
                continue;
            if (entry->d_type != DT_REG && entry->d_type != DT_LNK && entry->d_type != DT_UNKNOWN)
                continue;
            if (n == cap) {
                struct found *grown = realloc(found, (cap = cap ? 2 * cap : 16) * sizeof(*found));
                if (!grown) {
                    r = -ENOMEM;
                    break;
                }
                found = grown;
            }
            if (!(found[n].name = strdup(entry->d_name))) {
                r = -ENOMEM;
                break;
            }
            found[n++].dir = i;
        }
        closedir(dir);
    }
    if (n > 0)
        qsort(found, n, sizeof(*found), found_cmp);
    size_t queued = 0;
    for (size_t i = 0; i < n; i++) {
        if (r == 0) {
            char *path = NULL;
            if (asprintf(&path, "%s/%s", p->dirs[found[i].dir].path, found[i].name) < 0)
                r = -ENOMEM;
            else if ((r = submit_load(p, path)) == 0)
                queued++;
            free(path);
        }
        free(found[i].name);
    }
    free(found);
    return r < 0 ? r : (int)queued;
}

size_t plugins_take_batch(struct plugins *p, struct watch_batch *batch) {
    size_t kept = 0, queued = 0;
    for (size_t i = 0; i < batch->n_paths; i++) {
        char *path = batch->paths[i];
        const struct plugin_dir *dir = dir_above(p, path);
        if (dir && is_plugin_file(p, path)) {
            int r = submit_load(p, path);
            if (r < 0 && r != -ESHUTDOWN)
                log_error("cannot queue the plugin %s: %s", path, strerror(-r));
            queued += r == 0;
            free(path);
        } else if (dir && !dir->inside_root) {
            free(path);
        } else {
            batch->paths[kept++] = path;
        }
    }
    batch->n_paths = kept;
    return queued;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

json_t *plugins_list(const struct plugins *p) {
    json_t *list = json_array();
    json_t *dirs = json_array();
    const char **names = calloc(json_object_size(p->state) + 1, sizeof(*names));
    if (!list || !dirs || !names) {
        json_decref(list);
        json_decref(dirs);
        free(names);
        return NULL;
    }
    size_t n = 0;
    const char *name;
    json_t *plugin;
    json_object_foreach(p->state, name, plugin)
        names[n++] = name;
    qsort(names, n, sizeof(*names), name_cmp);
    for (size_t i = 0; i < n; i++)
        json_array_append(list, json_object_get(p->state, names[i]));
    free(names);
    for (size_t i = 0; i < p->n_dirs; i++)
        json_array_append_new(dirs, json_string(p->dirs[i].path));
    return json_pack("{s:o, s:o, s:s, s:o}", "plugins", list, "dirs", dirs, "pattern", p->pattern,
                     "api", p->api ? json_string(p->api) : json_null());
}

void plugins_get_counts(const struct plugins *p, struct metrics_plugin_results *out) {
    *out = p->counts;
}
