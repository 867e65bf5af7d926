#include "events.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "protocol.h"

struct events {
    uint64_t seq;
    json_t **ring;
    size_t cap;
    size_t next;     /* slot the next event goes to */
    events_sink_cb sink;
    void *sink_data;
};

int events_new(size_t history_cap, struct events **out) {
    struct events *events = calloc(1, sizeof(*events));
    if (!events)
        return -ENOMEM;
    if (history_cap > 0) {
        events->ring = calloc(history_cap, sizeof(*events->ring));
        if (!events->ring) {
            free(events);
            return -ENOMEM;
        }
    }
    events->cap = history_cap;
    *out = events;
    return 0;
}

void events_set_sink(struct events *events, events_sink_cb sink, void *data) {
    events->sink = sink;
    events->sink_data = data;
}

static const char *str(json_t *event, const char *key, const char *fallback) {
    const char *s = json_string_value(json_object_get(event, key));
    return s ? s : fallback;
}

static double num(json_t *event, const char *key) {
    return json_number_value(json_object_get(event, key));
}

/* One readable log line per event; errors at warn level with their location. */
static void log_event(const char *name, json_t *event) {
    if (strcmp(name, "reload") == 0) {
        const char *result = str(event, "result", "?");
        json_t *error = json_object_get(event, "error");
        const char *module = str(event, "module", str(event, "path", "?"));
        if (error) {
            log_warn("reload %s %s: %s: %s (%s:%lld) [batch %lld]", module, result,
                     str(error, "type", "Error"), str(error, "message", ""),
                     str(error, "file", "?"), json_integer_value(json_object_get(error, "line")),
                     json_integer_value(json_object_get(event, "batch")));
        } else if (strcmp(result, "skipped") == 0) {
            log_debug("reload %s skipped: %s [batch %lld]", module, str(event, "reason", ""),
                      json_integer_value(json_object_get(event, "batch")));
        } else {
            log_info("reload %s %s in %.2f ms [batch %lld]", module, result,
                     num(event, "duration_ms"), json_integer_value(json_object_get(event, "batch")));
        }
    } else if (strcmp(name, "batch") == 0) {
        const char *result = str(event, "result", "?");
        char *modules = json_dumps(json_object_get(event, "modules"), JSON_COMPACT);
        if (strcmp(result, "skipped") == 0)
            log_debug("batch %lld skipped", json_integer_value(json_object_get(event, "batch")));
        else
            log_info("batch %lld %s %s in %.2f ms, %.2f ms after the first change",
                     json_integer_value(json_object_get(event, "batch")), result,
                     modules ? modules : "[]", num(event, "duration_ms"), num(event, "latency_ms"));
        free(modules);
    } else {
        /* Other events (started, stopping, watch_error, ...) are logged in prose where they
         * arise; their JSON is for debugging. */
        char *body = json_dumps(event, JSON_COMPACT);
        log_debug("event %s %s", name, body ? body : "");
        free(body);
    }
}

uint64_t events_publish(struct events *events, const char *name, json_t *event) {
    if (!event)
        return 0;
    char time_buf[40];
    uint64_t seq = ++events->seq;
    json_object_set_new(event, "event", json_string(name));
    json_object_set_new(event, "seq", json_integer((json_int_t)seq));
    json_object_set_new(event, "time", json_string(protocol_format_time(time_buf, sizeof(time_buf))));
    log_event(name, event);
    if (events->sink) {
        size_t len = 0;
        char *line = protocol_encode_line(event, &len);
        if (line) {
            events->sink(line, len, event, events->sink_data);
            free(line);
        }
    }
    if (events->cap > 0) {
        json_decref(events->ring[events->next]);
        events->ring[events->next] = event;
        events->next = (events->next + 1) % events->cap;
    } else {
        json_decref(event);
    }
    return seq;
}

uint64_t events_last_seq(const struct events *events) {
    return events->seq;
}

void events_free(struct events *events) {
    if (!events)
        return;
    for (size_t i = 0; i < events->cap; i++)
        json_decref(events->ring[i]);
    free(events->ring);
    free(events);
}
