#ifndef PYHOT_EVENTS_H
#define PYHOT_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * The event bus, loop thread only. events_publish() stamps an event with its sequence
 * number (monotonic from 1) and time (RFC 3339 UTC), keeps it in a ring of the last
 * history_cap events, logs one readable line for it, and hands the encoded line to the
 * sink (the control socket's subscribers).
 */
struct events;

/* Receives each published event as an encoded, "\n"-terminated line of len bytes, and
 * the event object (borrowed), valid during the call. */
typedef void (*events_sink_cb)(const char *line, size_t len, json_t *event, void *data);

/* Creates a bus keeping the last history_cap events (0 keeps none). Returns 0 and sets
 * *out, or -ENOMEM. */
int events_new(size_t history_cap, struct events **out);

/* Sets the sink (NULL to remove). */
void events_set_sink(struct events *events, events_sink_cb sink, void *data);

/* Publishes event (an object, stolen) of type name: adds "event", "seq" and "time",
 * logs it, keeps it, sends it to the sink. Returns its seq, or 0 on ENOMEM. */
uint64_t events_publish(struct events *events, const char *name, json_t *event);

/* The seq of the last published event (0 when none). */
uint64_t events_last_seq(const struct events *events);

/* Frees the bus and its history. NULL is allowed. */
void events_free(struct events *events);

#endif
