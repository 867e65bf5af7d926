/*
 * Unit tests of lib/events.c: sequence numbers, the history ring, filters (types, module
 * globs, events that name no module), fan-out to subscribers, removal from within the
 * sink, replay.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "log.h"

struct delivery {
    uint64_t subscriber;
    long long seq;
    char event[32];
};

struct sink_state {
    struct delivery got[64];
    size_t n;
    uint64_t drop;           /* answer -ENOBUFS for this subscriber */
    struct events *events;
    uint64_t unsubscribe;    /* unsubscribe this one from within the sink */
};

static int sink(uint64_t subscriber, const char *line, size_t len, void *data) {
    struct sink_state *s = data;
    json_t *ev = json_loadb(line, len, 0, NULL);

    assert_non_null(ev);
    assert_true(len > 0 && line[len - 1] == '\n');
    if (s->n < 64) {
        s->got[s->n].subscriber = subscriber;
        s->got[s->n].seq = json_integer_value(json_object_get(ev, "seq"));
        snprintf(s->got[s->n].event, sizeof(s->got[s->n].event), "%s",
                 json_string_value(json_object_get(ev, "event")));
        s->n++;
    }
    json_decref(ev);
    if (s->unsubscribe)
        events_unsubscribe(s->events, s->unsubscribe);
    return subscriber == s->drop ? -ENOBUFS : 0;
}

static uint64_t publish_reload(struct events *e, const char *module) {
    return events_publish(e, "reload", json_pack("{s:s, s:s}", "module", module, "result", "ok"));
}

static uint64_t publish_batch(struct events *e, const char *m1, const char *m2) {
    return events_publish(e, "batch", json_pack("{s:[s, s]}", "modules", m1, m2));
}

static struct events_filter filter_of(const char *types, const char *modules) {
    struct events_filter f;
    char err[256];
    json_t *t = types ? json_loads(types, JSON_DECODE_ANY, NULL) : NULL;
    json_t *m = modules ? json_loads(modules, JSON_DECODE_ANY, NULL) : NULL;

    assert_int_equal(events_filter_parse(t, m, &f, err, sizeof(err)), 0);
    json_decref(t);
    json_decref(m);
    return f;
}

static void test_filter_parse_errors(void **state) {
    static const char *const bad[][2] = {
        { "5", NULL }, { "[\"ok\", 3]", NULL }, { "\"Upper\"", NULL }, { "\"\"", NULL },
        { "[\"a-b\"]", NULL }, { NULL, "[\"\"]" }, { NULL, "{}" }, { NULL, "true" },
    };
    struct events_filter f = { 0 };
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *t = bad[i][0] ? json_loads(bad[i][0], JSON_DECODE_ANY, NULL) : NULL;
        json_t *m = bad[i][1] ? json_loads(bad[i][1], JSON_DECODE_ANY, NULL) : NULL;

        assert_int_equal(events_filter_parse(t, m, &f, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, bad[i][0] ? "\"events\"" : "\"modules\""));
        assert_null(f.types);
        json_decref(t);
        json_decref(m);
    }
    json_t *many = json_array();
    for (int i = 0; i < EVENTS_FILTER_MAX_ITEMS + 1; i++)
        json_array_append_new(many, json_string("x"));
    assert_int_equal(events_filter_parse(NULL, many, &f, err, sizeof(err)), -EINVAL);
    json_decref(many);
    /* null and absent are "everything" */
    assert_int_equal(events_filter_parse(json_null(), NULL, &f, err, sizeof(err)), 0);
    assert_int_equal(f.n_types + f.n_modules, 0);
}

static void test_filter_match(void **state) {
    struct events_filter types = filter_of("[\"batch\", \"stopping\"]", NULL);
    struct events_filter mods = filter_of(NULL, "[\"app.*\", \"solo\"]");
    struct events_filter both = filter_of("\"reload\"", "\"app.*\"");
    json_t *reload_app = json_pack("{s:s, s:s}", "event", "reload", "module", "app.views");
    json_t *reload_other = json_pack("{s:s, s:s}", "event", "reload", "module", "other");
    json_t *reload_null = json_pack("{s:s, s:n}", "event", "reload", "module");
    json_t *batch_mixed = json_pack("{s:s, s:[s, s]}", "event", "batch", "modules", "x", "solo");
    json_t *batch_empty = json_pack("{s:s, s:[]}", "event", "batch", "modules");
    json_t *stopping = json_pack("{s:s}", "event", "stopping");

    (void)state;
    assert_false(events_filter_match(&types, reload_app));
    assert_true(events_filter_match(&types, batch_mixed));
    assert_true(events_filter_match(&types, stopping));
    assert_true(events_filter_match(&mods, reload_app));
    assert_false(events_filter_match(&mods, reload_other));
    assert_false(events_filter_match(&mods, reload_null));
    assert_true(events_filter_match(&mods, batch_mixed));
    assert_false(events_filter_match(&mods, batch_empty));
    assert_true(events_filter_match(&mods, stopping));   /* names no module */
    assert_true(events_filter_match(&both, reload_app));
    assert_false(events_filter_match(&both, batch_mixed));
    assert_true(events_filter_match(NULL, reload_other));
    json_decref(reload_app);
    json_decref(reload_other);
    json_decref(reload_null);
    json_decref(batch_mixed);
    json_decref(batch_empty);
    json_decref(stopping);
    events_filter_clear(&types);
    events_filter_clear(&mods);
    events_filter_clear(&both);
    events_filter_clear(NULL);
}

static void test_ring_and_history(void **state) {
    struct events *e;
    json_t *h;
    bool truncated;

    (void)state;
    assert_int_equal(events_new(4, 1 << 20, &e), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(publish_reload(e, i % 2 ? "odd" : "even"), (uint64_t)i + 1);
    assert_int_equal(events_last_seq(e), 6);
    assert_int_equal(events_history_count(e), 4);
    h = events_history(e, 100, NULL, 1 << 20, &truncated);
    assert_int_equal(json_array_size(h), 4);
    assert_false(truncated);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(h, i), "seq")), 3 + i);
    json_decref(h);

    struct events_filter odd = filter_of(NULL, "\"odd\"");
    h = events_history(e, 1, &odd, 1 << 20, &truncated);
    assert_int_equal(json_array_size(h), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(h, 0), "seq")), 6);
    json_decref(h);
    events_filter_clear(&odd);

    /* a byte budget that holds one line keeps the newest one */
    h = events_history(e, 100, NULL, 120, &truncated);
    assert_true(truncated);
    assert_int_equal(json_array_size(h), 1);
    json_decref(h);
    events_free(e);
}

/* An event of about `size` bytes of message. */
static uint64_t publish_large(struct events *e, size_t size) {
    char *message = malloc(size + 1);
    assert_non_null(message);
    memset(message, 'x', size);
    message[size] = '\0';
    uint64_t seq = events_publish(e, "reload", json_pack("{s:s, s:{s:s}}", "module", "m", "error",
                                                         "message", message));
    free(message);
    return seq;
}

static void test_history_bounded_in_bytes(void **state) {
    struct events *e;
    bool truncated;

    (void)state;
    /* Room for 1000 events, but 100 KiB: each 10 KB event costs about 20 KB (object and
     * line), so at most five stay, the newest. */
    assert_int_equal(events_new(1000, 100 * 1024, &e), 0);
    for (int i = 0; i < 50; i++)
        publish_large(e, 10000);
    assert_true(events_history_bytes(e) <= 100 * 1024);
    assert_int_equal(events_history_count(e), 5);
    json_t *h = events_history(e, 100, NULL, 1 << 20, &truncated);
    assert_int_equal(json_array_size(h), 5);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(h, 4), "seq")), 50);
    json_decref(h);

    /* Small events fill the room the large ones leave. */
    for (int i = 0; i < 100; i++)
        publish_reload(e, "small");
    assert_true(events_history_bytes(e) <= 100 * 1024);
    assert_true(events_history_count(e) >= 100);

    /* One event larger than the whole budget is published but not kept. */
    size_t before = events_history_count(e);
    assert_int_equal(publish_large(e, 200 * 1024), 151);
    assert_int_equal(events_last_seq(e), 151);
    assert_true(events_history_count(e) <= before);
    assert_true(events_history_bytes(e) <= 100 * 1024);
    h = events_history(e, 1, NULL, 1 << 20, &truncated);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(h, 0), "seq")), 150);
    json_decref(h);
    events_free(e);

    /* history_bytes 0 keeps nothing. */
    assert_int_equal(events_new(1000, 0, &e), 0);
    publish_reload(e, "a");
    assert_int_equal(events_history_count(e), 0);
    assert_int_equal(events_last_seq(e), 1);
    events_free(e);
}

static void test_fan_out_filters_and_drops(void **state) {
    struct events *e;
    struct sink_state s = { 0 };
    struct events_filter all = { 0 }, batches = filter_of("\"batch\"", NULL);

    (void)state;
    assert_int_equal(events_new(16, 1 << 20, &e), 0);
    s.events = e;
    events_set_sink(e, sink, &s);
    assert_int_equal(events_subscribe(e, 1, &all), 0);
    assert_int_equal(events_subscribe(e, 2, &batches), 0);
    assert_null(batches.types);            /* moved into the bus */
    assert_int_equal(events_subscriber_count(e), 2);
    publish_reload(e, "a");
    publish_batch(e, "a", "b");
    assert_int_equal(s.n, 3);
    assert_true(s.got[0].subscriber == 1 && strcmp(s.got[0].event, "reload") == 0);
    assert_true(s.got[1].subscriber == 1 && s.got[1].seq == 2);
    assert_true(s.got[2].subscriber == 2 && s.got[2].seq == 2);

    /* A subscriber the sink reports gone is unsubscribed; the others still get it. */
    s.n = 0;
    s.drop = 1;
    publish_batch(e, "c", "d");
    assert_int_equal(s.n, 2);
    assert_int_equal(events_subscriber_count(e), 1);
    s.n = 0;
    s.drop = 0;
    publish_batch(e, "c", "d");
    assert_int_equal(s.n, 1);
    assert_int_equal(s.got[0].subscriber, 2);

    /* Unsubscribing from within the sink (a disconnect) is safe. */
    struct events_filter f3 = { 0 };
    assert_int_equal(events_subscribe(e, 3, &f3), 0);
    s.n = 0;
    s.unsubscribe = 3;
    publish_batch(e, "e", "f");
    s.unsubscribe = 0;
    assert_int_equal(events_subscriber_count(e), 1);
    events_unsubscribe(e, 99);             /* unknown: ignored */

    /* Replay: the last n matching events, oldest first, to one subscriber. */
    s.n = 0;
    bool truncated;
    assert_int_equal(events_replay(e, 2, 2, 1 << 20, &truncated), 2);
    assert_false(truncated);
    assert_int_equal(s.n, 2);
    assert_true(s.got[0].seq == 4 && s.got[1].seq == 5);
    assert_true(strcmp(s.got[0].event, "batch") == 0);
    events_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_parse_errors),
        cmocka_unit_test(test_filter_match),
        cmocka_unit_test(test_ring_and_history),
        cmocka_unit_test(test_history_bounded_in_bytes),
        cmocka_unit_test(test_fan_out_filters_and_drops),
    };

    log_init(LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
