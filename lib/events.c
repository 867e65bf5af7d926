/*
 * The event bus (events.h): sequence numbers, time stamps, the log line of each event, the
 * history ring (events and their encoded lines) and the subscribers with their filters.
 */
#include "events.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "protocol.h"

struct kept {
    json_t *event;
    char *line;       /* encoded, "\n"-terminated; NULL when encoding failed */
    size_t len;
    size_t charge;    /* what it counts against history_bytes (kept_charge) */
};

struct subscriber {
    uint64_t id;      /* 0: removed while publishing, compacted afterwards */
    struct events_filter filter;
};

struct events {
    uint64_t seq;
    struct kept *ring;
    size_t cap;
    size_t next;      /* slot the next event goes to */
    size_t held;      /* events kept, at most cap */
    size_t max_bytes; /* history_bytes: the kept events' charges stay within it */
    size_t bytes;     /* sum of the kept events' charges */
    struct subscriber *subs;
    size_t n_subs, subs_cap;
    bool publishing;  /* inside the fan-out: removals only mark their slot */
    bool dead_subs;   /* some slot was marked */
    events_sink_cb sink;
    void *sink_data;
};

/* ---- filters ------------------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void strv_free(char **v, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static bool valid_type(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

/* One argument of a filter: NULL/null, a string or an array of strings, into *out. */
static int parse_list(json_t *value, const char *name, bool types, char ***out, size_t *n_out,
                      char *err, size_t errlen) {
    *out = NULL;
    *n_out = 0;
    if (!value || json_is_null(value))
        return 0;
    size_t n = json_is_array(value) ? json_array_size(value) : 1;
    if (!json_is_string(value) && !json_is_array(value)) {
        set_err(err, errlen, "argument \"%s\" must be a string or an array of strings", name);
        return -EINVAL;
    }
    if (n > EVENTS_FILTER_MAX_ITEMS) {
        set_err(err, errlen, "argument \"%s\" has %zu items; at most %d are allowed", name, n,
                EVENTS_FILTER_MAX_ITEMS);
        return -EINVAL;
    }
    char **list = calloc(n + 1, sizeof(*list));
    if (!list) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_is_array(value) ? json_array_get(value, i) : value;
        const char *s = json_string_value(item);
        if (!s) {
            set_err(err, errlen, "argument \"%s\": item %zu must be a string", name, i);
            goto invalid;
        }
        if (types && !valid_type(s)) {
            set_err(err, errlen, "argument \"%s\": '%.64s' is not an event name (1 to 64 "
                    "characters of a-z, 0-9 and _)", name, s);
            goto invalid;
        }
        if (!types && (s[0] == '\0' || strlen(s) > EVENTS_FILTER_MAX_LEN)) {
            set_err(err, errlen, "argument \"%s\": a glob must have 1 to %d bytes", name,
                    EVENTS_FILTER_MAX_LEN);
            goto invalid;
        }
        list[i] = strdup(s);
        if (!list[i]) {
            strv_free(list, i);
            set_err(err, errlen, "out of memory");
            return -ENOMEM;
        }
    }
    *out = list;
    *n_out = n;
    return 0;
invalid:
    for (size_t i = 0; i < n && list[i]; i++)
        free(list[i]);
    free(list);
    return -EINVAL;
}

int events_filter_parse(json_t *types, json_t *modules, struct events_filter *out, char *err,
                        size_t errlen) {
    struct events_filter f = {0};
    int r = parse_list(types, "events", true, &f.types, &f.n_types, err, errlen);
    if (r < 0)
        return r;
    r = parse_list(modules, "modules", false, &f.modules, &f.n_modules, err, errlen);
    if (r < 0) {
        strv_free(f.types, f.n_types);
        return r;
    }
    *out = f;
    return 0;
}

void events_filter_clear(struct events_filter *filter) {
    if (!filter)
        return;
    strv_free(filter->types, filter->n_types);
    strv_free(filter->modules, filter->n_modules);
    memset(filter, 0, sizeof(*filter));
}

static bool module_matches(const struct events_filter *filter, json_t *name) {
    const char *s = json_string_value(name);
    if (!s)
        return false;
    for (size_t i = 0; i < filter->n_modules; i++)
        if (fnmatch(filter->modules[i], s, 0) == 0)
            return true;
    return false;
}

bool events_filter_match(const struct events_filter *filter, json_t *event) {
    if (!filter)
        return true;
    if (filter->n_types > 0) {
        const char *name = json_string_value(json_object_get(event, "event"));
        bool found = false;
        for (size_t i = 0; name && i < filter->n_types && !found; i++)
            found = strcmp(filter->types[i], name) == 0;
        if (!found)
            return false;
    }
    if (filter->n_modules > 0) {
        json_t *module = json_object_get(event, "module");
        json_t *modules = json_object_get(event, "modules");
        if (!module && !json_is_array(modules))
            return true; /* names no module */
        if (module && module_matches(filter, module))
            return true;
        size_t i;
        json_t *item;
        json_array_foreach(modules, i, item) {
            if (module_matches(filter, item))
                return true;
        }
        return false;
    }
    return true;
}

/* ---- the bus ------------------------------------------------------------------------ */

int events_new(size_t history_cap, size_t history_bytes, struct events **out) {
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
    events->max_bytes = history_bytes;
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
        } else if (json_is_true(json_object_get(event, "reverted"))) {
            log_info("reload %s: back to the code that runs (%s is as last applied; the "
                     "failed edit is gone) [batch %lld]", module, str(event, "path", "?"),
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
    } else if (strcmp(name, "run") == 0) {
        json_t *sig = json_object_get(event, "signal");
        char end[64];
        if (json_integer_value(sig) > 0)
            snprintf(end, sizeof(end), "ended by %s", str(event, "signal_name", "a signal"));
        else
            snprintf(end, sizeof(end), "exited %lld", json_integer_value(json_object_get(event, "exit_code")));
        log_info("run %lld %s (%s) for uid %lld pid %lld %s%s in %.2f ms, cpu %.2f ms, max rss %lld KiB",
                 json_integer_value(json_object_get(event, "run")), str(event, "script", "?"),
                 json_is_true(json_object_get(event, "sandboxed")) ? "sandboxed"
                 : json_is_true(json_object_get(event, "isolated")) ? "isolated" : "in-process",
                 json_integer_value(json_object_get(event, "peer_uid")),
                 json_integer_value(json_object_get(event, "peer_pid")), end,
                 json_is_true(json_object_get(event, "timed_out")) ? " (timed out)" : "",
                 num(event, "duration_ms"), num(event, "cpu_ms"),
                 json_integer_value(json_object_get(event, "max_rss_kb")));
    } else {
        /* Other events (started, stopping, watch_error, ...) are logged in prose where they
         * arise; their JSON is for debugging. */
        char *body = json_dumps(event, JSON_COMPACT);
        log_debug("event %s %s", name, body ? body : "");
        free(body);
    }
}

static void compact_subscribers(struct events *events) {
    size_t w = 0;
    for (size_t i = 0; i < events->n_subs; i++) {
        if (events->subs[i].id == 0) {
            events_filter_clear(&events->subs[i].filter);
            continue;
        }
        events->subs[w++] = events->subs[i];
    }
    events->n_subs = w;
    events->dead_subs = false;
}

static struct subscriber *find_subscriber(struct events *events, uint64_t id) {
    for (size_t i = 0; i < events->n_subs; i++)
        if (events->subs[i].id == id)
            return &events->subs[i];
    return NULL;
}

/* Hands line to subscriber s; drops it when the sink says it is gone. */
static void deliver(struct events *events, struct subscriber *s, const char *line, size_t len) {
    uint64_t id = s->id;
    if (events->sink(id, line, len, events->sink_data) < 0)
        events_unsubscribe(events, id);
}

/* An event is kept twice, as its jansson object and as its encoded line, and its strings
 * dominate both when it is large: twice the line's length is what it costs. */
static size_t kept_charge(size_t len) {
    return 2 * len;
}

/* Releases the oldest kept event. */
static void drop_oldest(struct events *events) {
    struct kept *slot = &events->ring[(events->next + events->cap - events->held) % events->cap];
    json_decref(slot->event);
    free(slot->line);
    events->bytes -= slot->charge;
    memset(slot, 0, sizeof(*slot));
    events->held--;
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
    size_t len = 0;
    char *line = protocol_encode_line(event, &len);
    if (line && events->sink && events->n_subs > 0) {
        events->publishing = true;
        /* Subscribers added by a sink call see the next event, not this one. */
        size_t n = events->n_subs;
        for (size_t i = 0; i < n; i++) {
            struct subscriber *s = &events->subs[i];
            if (s->id != 0 && events_filter_match(&s->filter, event))
                deliver(events, s, line, len);
        }
        events->publishing = false;
        if (events->dead_subs)
            compact_subscribers(events);
    }
    size_t charge = kept_charge(line ? len : 0);
    if (events->cap > 0 && charge <= events->max_bytes) {
        if (events->held == events->cap)
            drop_oldest(events); /* the slot the new event goes to */
        while (events->held > 0 && events->bytes + charge > events->max_bytes)
            drop_oldest(events);
        struct kept *slot = &events->ring[events->next];
        slot->event = event;
        slot->line = line;
        slot->len = line ? len : 0;
        slot->charge = charge;
        events->bytes += charge;
        events->next = (events->next + 1) % events->cap;
        events->held++;
    } else {
        json_decref(event);
        free(line);
    }
    return seq;
}

int events_subscribe(struct events *events, uint64_t subscriber, struct events_filter *filter) {
    struct subscriber *s = find_subscriber(events, subscriber);
    if (!s) {
        if (events->n_subs == events->subs_cap) {
            size_t cap = events->subs_cap ? events->subs_cap * 2 : 8;
            struct subscriber *subs = realloc(events->subs, cap * sizeof(*subs));
            if (!subs)
                return -ENOMEM;
            events->subs = subs;
            events->subs_cap = cap;
        }
        s = &events->subs[events->n_subs++];
        s->id = subscriber;
        memset(&s->filter, 0, sizeof(s->filter));
    }
    events_filter_clear(&s->filter);
    if (filter) {
        s->filter = *filter;
        memset(filter, 0, sizeof(*filter));
    }
    return 0;
}

void events_unsubscribe(struct events *events, uint64_t subscriber) {
    struct subscriber *s = find_subscriber(events, subscriber);
    if (!s)
        return;
    s->id = 0;
    events->dead_subs = true;
    if (!events->publishing)
        compact_subscribers(events);
}

size_t events_subscriber_count(const struct events *events) {
    size_t n = 0;
    for (size_t i = 0; i < events->n_subs; i++)
        n += events->subs[i].id != 0;
    return n;
}

/* Collects the slots of the last n kept events matching filter within max_bytes, newest
 * first, into idx (room for n). Returns how many. */
static size_t select_kept(const struct events *events, size_t n, const struct events_filter *filter,
                          size_t max_bytes, bool *truncated, size_t *idx) {
    size_t found = 0, bytes = 0;
    if (truncated)
        *truncated = false;
    for (size_t k = 0; k < events->held && found < n; k++) {
        size_t slot = (events->next + events->cap - 1 - k) % events->cap;
        const struct kept *kept = &events->ring[slot];
        if (!kept->line || !events_filter_match(filter, kept->event))
            continue;
        if (bytes + kept->len > max_bytes) {
            if (truncated)
                *truncated = true;
            break;
        }
        bytes += kept->len;
        idx[found++] = slot;
    }
    return found;
}

json_t *events_history(const struct events *events, size_t n, const struct events_filter *filter,
                       size_t max_bytes, bool *truncated) {
    json_t *list = json_array();
    if (n > events->held)
        n = events->held;
    size_t *idx = n ? malloc(n * sizeof(*idx)) : NULL;
    if (!list || (n && !idx)) {
        json_decref(list);
        free(idx);
        return NULL;
    }
    size_t found = select_kept(events, n, filter, max_bytes, truncated, idx);
    for (size_t i = found; i > 0; i--)
        json_array_append(list, events->ring[idx[i - 1]].event);
    free(idx);
    return list;
}

size_t events_replay(struct events *events, uint64_t subscriber, size_t n, size_t max_bytes,
                     bool *truncated) {
    struct subscriber *s = find_subscriber(events, subscriber);
    if (truncated)
        *truncated = false;
    if (!s || !events->sink)
        return 0;
    if (n > events->held)
        n = events->held;
    size_t *idx = n ? malloc(n * sizeof(*idx)) : NULL;
    if (!idx)
        return 0;
    size_t found = select_kept(events, n, &s->filter, max_bytes, truncated, idx);
    size_t sent = 0;
    for (size_t i = found; i > 0; i--) {
        const struct kept *kept = &events->ring[idx[i - 1]];
        if (events->sink(subscriber, kept->line, kept->len, events->sink_data) < 0) {
            events_unsubscribe(events, subscriber);
            break;
        }
        sent++;
    }
    free(idx);
    return sent;
}

uint64_t events_last_seq(const struct events *events) {
    return events->seq;
}

size_t events_history_count(const struct events *events) {
    return events->held;
}

size_t events_history_bytes(const struct events *events) {
    return events->bytes;
}

void events_free(struct events *events) {
    if (!events)
        return;
    for (size_t i = 0; i < events->cap; i++) {
        json_decref(events->ring[i].event);
        free(events->ring[i].line);
    }
    free(events->ring);
    for (size_t i = 0; i < events->n_subs; i++)
        events_filter_clear(&events->subs[i].filter);
    free(events->subs);
    free(events);
}
