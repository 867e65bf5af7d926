#ifndef PYHOT_EVENTS_H
#define PYHOT_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * The event bus, loop thread only. events_publish() stamps an event with its sequence
 * number (monotonic from 1) and time (RFC 3339 UTC), logs one readable line for it, keeps
 * it (and its encoded line) in a ring of the last history_cap events within history_bytes,
 * and hands the encoded line to the sink once for every subscriber whose filter it matches.
 *
 * The history is bounded twice: at most history_cap events, and their cost at most
 * history_bytes, an event costing twice its encoded length (it is kept as an object and as
 * a line). The oldest events leave first; an event costing more than history_bytes alone
 * is sent but not kept.
 *
 * Subscribers are named by the control socket's client ids. A filter selects event types
 * (none given: every type) and module globs (none given: every module). Module globs
 * apply only to events that name modules (a "module" member, as reload and import_error
 * have, or a "modules" array, as batch has): such an event matches when one of its
 * modules matches one glob (fnmatch(3), no flags: the rules of the modules command);
 * events that name no module (started, stopping, watch_error, ...) are selected by type
 * alone.
 */
struct events;

struct events_filter {
    char **types;       /* event names (owned); n_types == 0: every type */
    size_t n_types;
    char **modules;     /* fnmatch(3) globs on module names (owned); 0: every module */
    size_t n_modules;
};

/* Longest list in a filter, and longest item, so a filter stays small. */
#define EVENTS_FILTER_MAX_ITEMS 64
#define EVENTS_FILTER_MAX_LEN 256

/* Receives the encoded, "\n"-terminated line (len bytes, valid during the call) of an
 * event for subscriber. Returns 0, or a negative errno when the subscriber is gone or was
 * dropped (-ENOTCONN, -ENOBUFS): it is then unsubscribed. */
typedef int (*events_sink_cb)(uint64_t subscriber, const char *line, size_t len, void *data);

/* Fills *out from two request arguments, each NULL (absent), JSON null, a string or an
 * array of strings: types (event names: 1..64 characters of [a-z0-9_]; names this daemon
 * does not publish are allowed and match nothing) and modules (globs, 1..256 bytes). At
 * most EVENTS_FILTER_MAX_ITEMS of each. Returns 0, -EINVAL with a message naming the
 * argument ("events" or "modules") in err, or -ENOMEM. *out is untouched on failure. */
int events_filter_parse(json_t *types, json_t *modules, struct events_filter *out, char *err,
                        size_t errlen);

/* Releases a filter's lists and empties it. NULL is allowed. */
void events_filter_clear(struct events_filter *filter);

/* Whether event (a published event object) passes filter (NULL passes everything). */
bool events_filter_match(const struct events_filter *filter, json_t *event);

/* Creates a bus keeping the last history_cap events (0 keeps none) within history_bytes
 * (see above). Returns 0 and sets *out, or -ENOMEM. */
int events_new(size_t history_cap, size_t history_bytes, struct events **out);

/* Sets the sink (NULL to remove). */
void events_set_sink(struct events *events, events_sink_cb sink, void *data);

/* Publishes event (an object, stolen) of type name: adds "event", "seq" and "time",
 * logs it, keeps it, sends it to the matching subscribers. Returns its seq, or 0 on
 * ENOMEM (event NULL). */
uint64_t events_publish(struct events *events, const char *name, json_t *event);

/* Makes subscriber receive the events that match filter from now on; a subscriber that
 * subscribes again gets the new filter. The filter's lists are moved into the bus
 * (*filter is emptied) on success. Returns 0 or -ENOMEM. */
int events_subscribe(struct events *events, uint64_t subscriber, struct events_filter *filter);

/* Stops sending to subscriber; unknown subscribers are ignored. Safe from within the sink. */
void events_unsubscribe(struct events *events, uint64_t subscriber);

/* Number of subscribers. */
size_t events_subscriber_count(const struct events *events);

/* The last n kept events that match filter (NULL: all), oldest first, as a new array of
 * the event objects (shared references: do not modify them); stops early, setting
 * *truncated, when their encoded lines would pass max_bytes. NULL on ENOMEM. */
json_t *events_history(const struct events *events, size_t n, const struct events_filter *filter,
                       size_t max_bytes, bool *truncated);

/* Sends the last n kept events that match subscriber's filter to it through the sink,
 * oldest first, within max_bytes (as events_history). Returns how many were sent. */
size_t events_replay(struct events *events, uint64_t subscriber, size_t n, size_t max_bytes,
                     bool *truncated);

/* The seq of the last published event (0 when none). */
uint64_t events_last_seq(const struct events *events);

/* Number of events kept now (at most history_cap). */
size_t events_history_count(const struct events *events);

/* What the kept events cost now, in bytes (at most history_bytes; see above). */
size_t events_history_bytes(const struct events *events);

/* Frees the bus, its history and its subscribers. NULL is allowed. */
void events_free(struct events *events);

#endif
