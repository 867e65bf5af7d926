/* Events: subscribe and history (docs/protocol.md, "Events"). */
#include <errno.h>

#include "commands.h"
#include "control.h"
#include "protocol.h"
#include "server.h"

#define ERR_LEN 512

/* history without "n": the last this many events. */
#define HISTORY_DEFAULT 100

/* The filter arguments "events" and "modules" into *filter; replies and returns < 0 when
 * they are wrong. */
static int filter_args(struct server *server, uint64_t client, const struct protocol_request *req,
                       struct events_filter *filter) {
    char err[ERR_LEN];
    int r = events_filter_parse(json_object_get(req->root, "events"),
                                json_object_get(req->root, "modules"), filter, err, sizeof(err));
    if (r < 0)
        command_reply_bad_argument(server, client, req, r, err);
    return r;
}

/* Makes client an event subscriber with filter (its lists are moved into the event bus on
 * success). Returns 0, -ENOTCONN (the client is gone or closing) or -ENOMEM. */
static int subscribe(struct server *server, uint64_t client, struct events_filter *filter) {
    if (!server->control)
        return -ENOTCONN;
    int r = control_set_subscriber(server->control, client, true);
    if (r < 0)
        return r;
    r = events_subscribe(server->events, client, filter);
    if (r < 0)
        control_set_subscriber(server->control, client, false);
    return r;
}

void cmd_subscribe(struct server *server, uint64_t client, const struct protocol_request *req) {
    struct events_filter filter;
    int64_t history = command_int(req, "history", 0);
    if (filter_args(server, client, req, &filter) < 0)
        return;
    /* The replay follows the response: count it first (nothing is published in between). */
    bool truncated = false;
    size_t replay = 0;
    if (history > 0) {
        json_t *past = events_history(server->events, (size_t)history, &filter,
                                      SERVER_HISTORY_MAX_BYTES, &truncated);
        replay = json_array_size(past);
        json_decref(past);
    }
    int r = subscribe(server, client, &filter);
    events_filter_clear(&filter);
    if (r == -ENOMEM)
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
    if (r < 0)
        return;
    server_reply_ok(server, client, req->id,
                    json_pack("{s:b, s:I, s:I, s:b}", "subscribed", 1, "seq",
                              (json_int_t)events_last_seq(server->events), "history",
                              (json_int_t)replay, "truncated", truncated));
    if (replay > 0)
        events_replay(server->events, client, replay, SERVER_HISTORY_MAX_BYTES, NULL);
}

void cmd_history(struct server *server, uint64_t client, const struct protocol_request *req) {
    struct events_filter filter;
    int64_t n = command_int(req, "n", HISTORY_DEFAULT);
    if (filter_args(server, client, req, &filter) < 0)
        return;
    bool truncated = false;
    json_t *past = events_history(server->events, (size_t)n, &filter, SERVER_HISTORY_MAX_BYTES,
                                  &truncated);
    events_filter_clear(&filter);
    if (!past) {
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return;
    }
    server_reply_ok(server, client, req->id,
                    json_pack("{s:o, s:I, s:b}", "events", past, "seq",
                              (json_int_t)events_last_seq(server->events), "truncated", truncated));
}
