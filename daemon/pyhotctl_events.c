/* pyhotctl: events — tail and history. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "pyhotctl.h"

/*
 * The arguments of subscribe and history from -e, -m and -n: {"events": [...], "modules":
 * [...], count_key: N}, each only when given. NULL after a message (out of memory).
 */
static json_t *filter_args(const struct ctl *ctl, const char *count_key) {
    json_t *args = json_object();
    int r = 0;

    if (args == NULL) {
        fail("out of memory");
        return NULL;
    }
    if (ctl->events != NULL)
        r |= json_object_set(args, "events", ctl->events);
    if (ctl->modules != NULL)
        r |= json_object_set(args, "modules", ctl->modules);
    if (ctl->count >= 0)
        r |= json_object_set_new(args, count_key, json_integer(ctl->count));
    if (r != 0) {
        json_decref(args);
        fail("out of memory");
        return NULL;
    }
    return args;
}

/* The items of list (an array of strings), comma-separated. */
static void put_items(FILE *out, json_t *list) {
    size_t i;
    json_t *item;

    json_array_foreach(list, i, item) {
        fputs(i > 0 ? ", " : "", out);
        put_clean(out, json_string_value(item));
    }
}

/* On a terminal, before the first event: what tail follows, and how it ends. */
static void put_following(const struct ctl *ctl, FILE *out) {
    if (ctl->color)
        fputs(COLOR_DIM, out);
    fputs("following ", out);
    if (ctl->events != NULL) {
        put_items(out, ctl->events);
        fputs(" events", out);
    } else {
        fputs("every event", out);
    }
    if (ctl->modules != NULL) {
        fputs(" (of modules ", out);
        put_items(out, ctl->modules);
        fputs(")", out);
    }
    fputs(" of pyhotd on ", out);
    put_clean(out, ctl->socket_path);
    fputs("; Ctrl-C ends", out);
    if (ctl->color)
        fputs(COLOR_RESET, out);
    fputc('\n', out);
    fflush(out);
}

/* Sends subscribe and prints events until the daemon closes or a stop signal. */
int cmd_tail(struct ctl *ctl, int argc, char **argv) {
    static sigset_t stop_signals;
    struct sigaction sa = { .sa_handler = on_stop_signal };
    json_t *resp = NULL, *ev;
    bool stopping = false, overflowed = false;
    char *line;
    size_t len;
    int r;

    /* SIGINT and SIGTERM only set a flag (read_line looks at it). Without SA_RESTART they
     * also interrupt a write to a stdout that does not drain (`tail | less`). */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sa.sa_flags = 0;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    ctl->stop_signals = &stop_signals;

    if (ctl_connect(ctl) < 0)
        return EXIT_USAGE;
    json_t *args = filter_args(ctl, "history");
    if (args == NULL)
        return EXIT_USAGE;
    r = ctl_send(ctl, "subscribe", args);
    json_decref(args);
    if (r != EXIT_OK)
        return r;
    r = ctl_wait_response(ctl, &resp, NULL);
    if (r == WAIT_INTERRUPTED)
        return EXIT_OK;
    if (r != EXIT_OK)
        return r;
    if (!json_is_true(json_object_get(resp, "ok"))) {
        /* --json prints events only; an error still goes to stderr. */
        report_error(resp);
        json_decref(resp);
        return EXIT_FAILED;
    }
    json_decref(resp);
    if (!ctl->json && isatty(STDOUT_FILENO))
        put_following(ctl, stdout);

    for (;;) {
        r = read_line(ctl, -1, &line, &len);
        if (r == -EINTR)
            return EXIT_OK;
        if (r == 0 && stopping)
            return EXIT_OK;
        if (r == 0 && overflowed) {
            fail("pyhotd dropped this subscriber: it did not read its events fast enough");
            return EXIT_USAGE;
        }
        if (r == 0) {
            fail("pyhotd closed the connection on %s", ctl->socket_path);
            return EXIT_USAGE;
        }
        if (r < 0)
            return read_failed(ctl, r, "an event");
        if (len == 0)
            continue;
        ev = parse_line(line, len);
        if (ev == NULL)
            return EXIT_USAGE;
        if (is_event(ev)) {
            if (strcmp(jstr(ev, "event"), "stopping") == 0)
                stopping = true;
            if (strcmp(jstr(ev, "event"), "overflow") == 0)
                overflowed = true;
            if (ctl->json) {
                fwrite(line, 1, len, stdout);
                fputc('\n', stdout);
            } else {
                print_event(ctl, stdout, ev);
            }
            if (fflush(stdout) != 0) {
                json_decref(ev);
                /* Stopped while blocked on output, or the reader went away
                 * (`pyhotctl tail | head`): both are a normal end. */
                if (got_stop_signal || errno == EPIPE)
                    return EXIT_OK;
                fail("cannot write to stdout: %s", strerror(errno));
                return EXIT_USAGE;
            }
        }
        json_decref(ev);
    }
}

int cmd_history(struct ctl *ctl, int argc, char **argv) {
    json_t *args, *resp, *result, *ev;
    size_t i;
    int r;

    if (argc > 0 && parse_count(argv[0], &ctl->count) < 0)
        return EXIT_USAGE;
    args = filter_args(ctl, "n");
    if (args == NULL)
        return EXIT_USAGE;
    r = ctl_call(ctl, "history", args, &resp, false);
    json_decref(args);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    json_array_foreach(json_object_get(result, "events"), i, ev) {
        if (json_is_object(ev))
            print_event(ctl, stdout, ev);
    }
    if (json_is_true(json_object_get(result, "truncated")))
        fail("older events were left out (a history response carries at most 1 MiB)");
    json_decref(resp);
    return EXIT_OK;
}
