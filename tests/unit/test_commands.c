/*
 * Unit tests of lib/commands.c: the command table (names, argument specs) and dispatch
 * (decoding, unknown commands, argument checks before a command runs, read-only
 * commands) against a test server: a struct server whose replies are kept instead of
 * sent, with no python thread, socket or watcher (commands that need one answer
 * shutting_down).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "config.h"
#include "events.h"
#include "log.h"
#include "server.h"

#define MAX_REPLIES 32

struct test_server {
    struct server server; /* first: the callbacks get it back */
    struct config config;
    uv_loop_t loop;
    json_t *replies[MAX_REPLIES];
    size_t n_replies;
    uint64_t client;
    char stop_reason[128];
};

static void capture_send(struct server *server, uint64_t client, char *line, size_t len) {
    struct test_server *t = (struct test_server *)server;
    assert_true(len > 0 && line[len - 1] == '\n');
    assert_true(t->n_replies < MAX_REPLIES);
    t->replies[t->n_replies] = json_loadb(line, len, 0, NULL);
    assert_non_null(t->replies[t->n_replies]);
    t->n_replies++;
    t->client = client;
    free(line);
}

static void capture_stop(struct server *server, const char *reason) {
    struct test_server *t = (struct test_server *)server;
    snprintf(t->stop_reason, sizeof(t->stop_reason), "%s", reason);
    server->stopping = true;
}

static int setup(void **state) {
    struct test_server *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    config_init(&t->config);
    uv_loop_init(&t->loop);
    t->server.loop = &t->loop;
    t->server.config = &t->config;
    t->server.send = capture_send;
    t->server.stop = capture_stop;
    assert_int_equal(events_new(16, t->config.history_bytes, &t->server.events), 0);
    *state = t;
    return 0;
}

static int teardown(void **state) {
    struct test_server *t = *state;
    for (size_t i = 0; i < t->n_replies; i++)
        json_decref(t->replies[i]);
    commands_host_stopped(&t->server);
    commands_free(&t->server);
    events_free(t->server.events);
    uv_run(&t->loop, UV_RUN_DEFAULT); /* the run channel's close */
    assert_int_equal(uv_loop_close(&t->loop), 0);
    config_free(&t->config);
    free(t);
    return 0;
}

/* Dispatches line from client 7 and returns the one reply it got (borrowed). */
static json_t *request(struct test_server *t, const char *line) {
    size_t before = t->n_replies;
    commands_dispatch(&t->server, 7, line, strlen(line));
    assert_int_equal(t->n_replies, before + 1);
    assert_int_equal(t->client, 7);
    return t->replies[before];
}

/* The error code of reply, asserting it is an error; its message into *message. */
static const char *error_code(json_t *reply, const char **message) {
    assert_true(json_is_false(json_object_get(reply, "ok")));
    json_t *error = json_object_get(reply, "error");
    if (message)
        *message = json_string_value(json_object_get(error, "message"));
    return json_string_value(json_object_get(error, "code"));
}

static void test_table(void **state) {
    (void)state;
    size_t n = 0;
    for (const struct command_entry *e = commands_table(); e->name; e++, n++) {
        assert_non_null(e->summary);
        assert_non_null(e->exec);
        assert_ptr_equal(commands_find(e->name), e);
        for (const struct command_entry *f = e + 1; f->name; f++)
            assert_string_not_equal(e->name, f->name);
        size_t n_args = 0;
        for (const struct command_arg *a = e->args; a->name; a++, n_args++) {
            for (const struct command_arg *b = a + 1; b->name; b++)
                assert_string_not_equal(a->name, b->name);
            if (a->kind == COMMAND_ARG_INT)
                assert_true(a->min <= a->max);
        }
        assert_true(n_args < COMMAND_MAX_ARGS); /* room for the terminator */
    }
    assert_true(n >= 16);
    assert_null(commands_find("nope"));
    assert_true(commands_find("status")->read_only);
    assert_false(commands_find("reload")->read_only);
}

static void test_decoding_and_unknown(void **state) {
    struct test_server *t = *state;
    assert_string_equal(error_code(request(t, "{not json"), NULL), "parse_error");
    assert_string_equal(error_code(request(t, "[1]"), NULL), "invalid_request");
    const char *message;
    json_t *reply = request(t, "{\"id\": 3, \"cmd\": \"frobnicate\"}");
    assert_string_equal(error_code(reply, &message), "unknown_command");
    assert_string_equal(message, "unknown command 'frobnicate'");
    assert_int_equal(json_integer_value(json_object_get(reply, "id")), 3);
}

static void test_ping_and_hello(void **state) {
    struct test_server *t = *state;
    json_t *reply = request(t, "{\"id\": \"a\", \"cmd\": \"ping\"}");
    assert_true(json_is_true(json_object_get(reply, "ok")));
    assert_string_equal(json_string_value(json_object_get(reply, "id")), "a");
    assert_true(json_is_true(json_object_get(json_object_get(reply, "result"), "pong")));

    reply = request(t, "{\"id\": 1, \"cmd\": \"hello\"}");
    json_t *commands = json_object_get(json_object_get(reply, "result"), "commands");
    size_t i = 0;
    for (const struct command_entry *e = commands_table(); e->name; e++, i++)
        assert_string_equal(json_string_value(json_array_get(commands, i)), e->name);
    assert_int_equal(json_array_size(commands), i);
    assert_int_equal(t->server.counters.responses, 2);
    assert_int_equal(t->server.counters.failed_responses, 0);
}

/* Each line breaks one argument rule; the reply names it, and no command ran. */
static void test_argument_specs(void **state) {
    struct test_server *t = *state;
    static const struct {
        const char *line;
        const char *message;
    } cases[] = {
        {"{\"cmd\": \"reload\"}", "reload needs \"targets\": module names or file paths"},
        {"{\"cmd\": \"reload\", \"targets\": []}",
         "reload needs \"targets\": module names or file paths"},
        {"{\"cmd\": \"reload\", \"targets\": 5}",
         "argument \"targets\" must be a string or an array of strings, not an integer"},
        {"{\"cmd\": \"reload\", \"targets\": [\"a\", 1]}",
         "argument \"targets\": item 1 must be a string, not an integer"},
        {"{\"cmd\": \"watch\"}", "missing argument \"path\""},
        {"{\"cmd\": \"watch\", \"path\": \"\"}", "argument \"path\" is empty"},
        {"{\"cmd\": \"unwatch\", \"path\": true}", "argument \"path\" must be a string, not a boolean"},
        {"{\"cmd\": \"history\", \"n\": -1}",
         "argument \"n\" must be between 0 and 2147483647, not -1"},
        {"{\"cmd\": \"subscribe\", \"history\": \"x\"}",
         "argument \"history\" must be an integer, not a string"},
        {"{\"cmd\": \"exec\"}", "exec needs \"code\": Python source to run"},
        {"{\"cmd\": \"repl\", \"source\": 1}", "argument \"source\" must be a string, not an integer"},
        {"{\"cmd\": \"run\", \"path\": \"/x\", \"globals\": 5}",
         "argument \"globals\" must be an object of names to values"},
        {"{\"cmd\": \"run\", \"path\": \"/x\", \"isolate\": \"yes\"}",
         "argument \"isolate\" must be true or false"},
        {"{\"cmd\": \"run\", \"path\": \"/x\", \"memory_mb\": 99999999}",
         "argument \"memory_mb\" must be between 0 and 16777216, not 99999999"},
        {"{\"cmd\": \"run\"}", "run needs \"path\" (a script, directory or zip), \"module\" or "
         "\"source\" (the script's text)"},
        {"{\"cmd\": \"run\", \"path\": \"/x\", \"module\": \"m\"}",
         "run takes one of \"path\", \"module\" and \"source\""},
        {"{\"cmd\": \"run\", \"source\": \"print(1)\", \"module\": \"m\"}",
         "run takes one of \"path\", \"module\" and \"source\""},
        {"{\"cmd\": \"run\", \"module\": \"\"}", "run: empty \"module\""},
        {"{\"cmd\": \"run\", \"path\": \"/x\", \"cpu_s\": 1}",
         "\"cpu_s\" needs \"isolate\": true (the daemon's working directory and limits are "
         "shared by every run and the app)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *message;
        json_t *reply = request(t, cases[i].line);
        assert_string_equal(error_code(reply, &message), "bad_argument");
        assert_string_equal(message, cases[i].message);
    }
}

/* Valid arguments reach the command: with no python thread or watcher it answers
 * shutting_down, an answer only the command itself gives. */
static void test_valid_arguments_reach_the_command(void **state) {
    struct test_server *t = *state;
    static const char *const lines[] = {
        "{\"cmd\": \"exec\", \"code\": \"\"}",
        "{\"cmd\": \"reload\", \"targets\": \"app\"}",
        "{\"cmd\": \"modules\", \"pattern\": null}",
        "{\"cmd\": \"watch\", \"path\": \"/tmp\"}",
        "{\"cmd\": \"pause\"}",
        "{\"cmd\": \"run\", \"module\": \"m\", \"argv\": \"x\", \"isolate\": false}",
    };
    assert_int_equal(commands_start(&t->server, (char[64]){0}, 64), 0);
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        assert_string_equal(error_code(request(t, lines[i]), NULL), "shutting_down");
}

static void test_read_only_and_shutdown(void **state) {
    struct test_server *t = *state;
    uint64_t generation = t->server.status_generation;
    request(t, "{\"cmd\": \"ping\"}");
    request(t, "{\"cmd\": \"stats\"}");
    assert_int_equal(t->server.status_generation, generation);
    request(t, "{\"cmd\": \"pause\"}");
    assert_int_equal(t->server.status_generation, generation + 1);

    json_t *reply = request(t, "{\"id\": 9, \"cmd\": \"shutdown\"}");
    assert_true(json_is_true(json_object_get(json_object_get(reply, "result"), "stopping")));
    assert_string_equal(t->stop_reason, "shutdown requested over the control socket");
}

static void test_history(void **state) {
    struct test_server *t = *state;
    for (int i = 0; i < 3; i++)
        events_publish(t->server.events, i == 1 ? "batch" : "reload", json_pack("{s:i}", "i", i));
    json_t *result = json_object_get(request(t, "{\"cmd\": \"history\", \"n\": 2}"), "result");
    json_t *events = json_object_get(result, "events");
    assert_int_equal(json_array_size(events), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(events, 1), "seq")), 3);
    assert_int_equal(json_integer_value(json_object_get(result, "seq")), 3);

    result = json_object_get(request(t, "{\"cmd\": \"history\", \"events\": \"batch\"}"), "result");
    assert_int_equal(json_array_size(json_object_get(result, "events")), 1);
    const char *message;
    error_code(request(t, "{\"cmd\": \"history\", \"events\": 4}"), &message);
    assert_non_null(strstr(message, "events"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test_setup_teardown(test_decoding_and_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_and_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_argument_specs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_valid_arguments_reach_the_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_and_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history, setup, teardown),
    };

    log_init(LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
