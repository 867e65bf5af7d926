#include "watch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "strset.h"
#include "watch_backend.h"

struct watch_root {
    char *path;
    bool watching;
};

struct watch {
    uv_loop_t *loop;
    struct watch_options options;
    struct watch_backend *backend;
    uv_timer_t settle_timer;
    struct strset pending;      /* paths changed since the last batch went out */
    uint64_t first_event_ns;    /* of the pending set */
    struct watch_root *roots;
    size_t n_roots;
    void (*close_cb)(void *data);
    void *close_data;
    int closing_parts;          /* backend + timer still closing */
};

static void on_settled(uv_timer_t *timer) {
    struct watch *watch = timer->data;
    if (watch->pending.len == 0)
        return;
    struct watch_batch *batch = calloc(1, sizeof(*batch));
    if (!batch) {
        log_error("watch: out of memory; dropping %zu changed paths", watch->pending.len);
        strset_clear(&watch->pending);
        return;
    }
    batch->first_event_ns = watch->first_event_ns;
    batch->paths = strset_steal(&watch->pending, &batch->n_paths);
    watch->options.on_batch(watch, batch, watch->options.data);
}

void watch_note_change(struct watch *watch, const char *path) {
    if (watch->pending.len == 0)
        watch->first_event_ns = uv_hrtime();
    if (strset_add(&watch->pending, path) < 0) {
        log_error("watch: out of memory; change to %s lost", path);
        return;
    }
    /* Each event pushes the end of the batch back: it closes settle_ms after the last. */
    uv_timer_start(&watch->settle_timer, on_settled, watch->options.settle_ms, 0);
}

void watch_note_drained(struct watch *watch) {
    if (watch->options.settle_ms == 0 && watch->pending.len > 0) {
        uv_timer_stop(&watch->settle_timer);
        on_settled(&watch->settle_timer);
    }
}

void watch_note_root_lost(struct watch *watch, size_t root, const char *message) {
    if (root >= watch->n_roots || !watch->roots[root].watching)
        return;
    watch->roots[root].watching = false;
    if (watch->options.on_error)
        watch->options.on_error(watch, watch->roots[root].path, message, watch->options.data);
}

const struct filter *watch_filter(const struct watch *watch) {
    return watch->options.filter;
}

const char *watch_root(const struct watch *watch, size_t root) {
    return watch->roots[root].path;
}

int watch_new(uv_loop_t *loop, const struct watch_options *options, struct watch **out,
              char *err, size_t errlen) {
    struct watch *watch = calloc(1, sizeof(*watch));
    if (!watch) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    watch->loop = loop;
    watch->options = *options;
    strset_init(&watch->pending);
    int r = watch_backend_new(watch, loop, &watch->backend, err, errlen);
    if (r < 0) {
        free(watch);
        return r;
    }
    uv_timer_init(loop, &watch->settle_timer);
    watch->settle_timer.data = watch;
    *out = watch;
    return 0;
}

int watch_add_root(struct watch *watch, const char *path, char *err, size_t errlen) {
    struct watch_root *roots = realloc(watch->roots, (watch->n_roots + 1) * sizeof(*roots));
    if (!roots) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    watch->roots = roots;
    char *copy = strdup(path);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    size_t len = strlen(copy);
    while (len > 1 && copy[len - 1] == '/')
        copy[--len] = '\0';
    size_t i = watch->n_roots++;
    roots[i].path = copy;
    roots[i].watching = false;
    int r = watch_backend_add_root(watch->backend, i, err, errlen);
    if (r == 0)
        roots[i].watching = true;
    return r;
}

int watch_remove_root(struct watch *watch, const char *path, char *err, size_t errlen) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    for (size_t i = 0; i < watch->n_roots; i++) {
        const char *root = watch->roots[i].path;
        if (strlen(root) != len || strncmp(root, path, len) != 0)
            continue;
        watch_backend_remove_root(watch->backend, i);
        free(watch->roots[i].path);
        memmove(&watch->roots[i], &watch->roots[i + 1],
                (watch->n_roots - i - 1) * sizeof(*watch->roots));
        watch->n_roots--;
        return 0;
    }
    snprintf(err, errlen, "%.*s is not a watch root", (int)len, path);
    return -ENOENT;
}

void watch_set_settle(struct watch *watch, unsigned settle_ms) {
    watch->options.settle_ms = settle_ms;
}

size_t watch_dir_count(const struct watch *watch) {
    return watch_backend_dir_count(watch->backend);
}

size_t watch_root_count(const struct watch *watch) {
    return watch->n_roots;
}

const char *watch_root_path(const struct watch *watch, size_t i, bool *watching) {
    if (i >= watch->n_roots)
        return NULL;
    if (watching)
        *watching = watch->roots[i].watching;
    return watch->roots[i].path;
}

static void finish_close(struct watch *watch) {
    if (--watch->closing_parts > 0)
        return;
    void (*cb)(void *) = watch->close_cb;
    void *data = watch->close_data;
    strset_clear(&watch->pending);
    for (size_t i = 0; i < watch->n_roots; i++)
        free(watch->roots[i].path);
    free(watch->roots);
    free(watch);
    if (cb)
        cb(data);
}

static void on_timer_closed(uv_handle_t *handle) {
    finish_close(handle->data);
}

static void on_backend_closed(void *data) {
    finish_close(data);
}

void watch_close(struct watch *watch, void (*close_cb)(void *data), void *data) {
    watch->close_cb = close_cb;
    watch->close_data = data;
    watch->closing_parts = 2;
    uv_close((uv_handle_t *)&watch->settle_timer, on_timer_closed);
    watch_backend_close(watch->backend, on_backend_closed, watch);
}

void watch_batch_free(struct watch_batch *batch) {
    if (!batch)
        return;
    for (size_t i = 0; i < batch->n_paths; i++)
        free(batch->paths[i]);
    free(batch->paths);
    free(batch);
}
