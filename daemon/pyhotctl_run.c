/* pyhotctl: run, a script in the warm interpreter (docs/run.md). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "pyhotctl.h"

/* "NAME=JSON" of --set into globals. */
static int add_global(json_t *globals, const char *arg) {
    const char *eq = strchr(arg, '=');
    json_error_t jerr;
    json_t *value;
    char *name;

    if (eq == NULL || eq == arg) {
        fail("--set: expected NAME=JSON, got '%s'", arg);
        return -EINVAL;
    }
    value = json_loads(eq + 1, JSON_DECODE_ANY, &jerr);
    if (value == NULL) {
        fail("--set %.*s: the value is not JSON (%s); a string needs quotes: NAME='\"text\"'",
             (int)(eq - arg), arg, jerr.text);
        return -EINVAL;
    }
    name = strndup(arg, (size_t)(eq - arg));
    if (name == NULL || json_object_set_new(globals, name, value) < 0) {
        free(name);
        fail("--set: the name is not valid UTF-8");
        return -EINVAL;
    }
    free(name);
    return 0;
}

static int parse_whole(const char *opt, const char *arg, long long max, long long *out) {
    char *end;
    long long v;

    errno = 0;
    v = strtoll(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || v < 0 || v > max) {
        fail("%s: '%s' is not a whole number from 0 to %lld", opt, arg, max);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* The exit status of a run's result: its exit code, 124 when it timed out, 128 + N when
 * signal N ended it (as a shell reports it). */
static int run_status(json_t *result) {
    long long v;

    if (json_is_true(json_object_get(result, "timed_out")))
        return EXIT_TIMEOUT;
    if (jint(result, "signal", &v) && v > 0)
        return 128 + (int)v;
    if (jint(result, "exit_code", &v))
        return (int)(v & 0xff);
    return EXIT_FAILED;
}

/* What `pyhotctl run` was asked, from its options and operands. */
struct run_options {
    const char *module, *script, *cwd;
    bool isolate, sandbox;
    long long timeout_ms, memory_mb, cpu_s;
    long long pids;  /* -1: not given */
    json_t *globals; /* --set NAME=JSON, an object */
    json_t *get;     /* --get NAME..., an array, or NULL */
    json_t *argv;    /* ARGS after SCRIPT or -m MODULE, an array */
};

enum { RUN_ISOLATE = 256, RUN_TIMEOUT, RUN_MEMORY, RUN_CPU, RUN_CWD, RUN_SET, RUN_GET, RUN_SANDBOX,
       RUN_PIDS };

static const struct option run_long_options[] = {
    { "isolate", no_argument, NULL, RUN_ISOLATE },
    { "sandbox", no_argument, NULL, RUN_SANDBOX },
    { "pids", required_argument, NULL, RUN_PIDS },
    { "timeout", required_argument, NULL, RUN_TIMEOUT },
    { "memory", required_argument, NULL, RUN_MEMORY },
    { "cpu", required_argument, NULL, RUN_CPU },
    { "cwd", required_argument, NULL, RUN_CWD },
    { "set", required_argument, NULL, RUN_SET },
    { "get", required_argument, NULL, RUN_GET },
    { NULL, 0, NULL, 0 },
};

/* One option of run (getopt_long's c, its optarg) into o. Returns 0 or -EINVAL after a
 * message. */
static int run_option(int c, int argc, char **argv, struct run_options *o) {
    switch (c) {
    case 'm':
        o->module = optarg;
        return 0;
    case RUN_ISOLATE:
        o->isolate = true;
        return 0;
    case RUN_SANDBOX:
        o->sandbox = o->isolate = true;
        return 0;
    case RUN_PIDS:
        return parse_whole("--pids", optarg, 65536, &o->pids);
    case RUN_TIMEOUT:
        return parse_seconds("--timeout", optarg, &o->timeout_ms);
    case RUN_MEMORY:
        return parse_whole("--memory", optarg, 1 << 24, &o->memory_mb);
    case RUN_CPU:
        return parse_whole("--cpu", optarg, INT32_MAX, &o->cpu_s);
    case RUN_CWD:
        o->cwd = optarg;
        return 0;
    case RUN_SET:
        return add_global(o->globals, optarg);
    case RUN_GET:
        if (optarg[0] == '\0') {
            fail("--get: empty name");
            return -EINVAL;
        }
        return append_arg(&o->get, optarg, "--get name");
    case ':':
        if (optopt == 'm')
            fail("-m needs a module name");
        else
            fail("option %s needs an argument", argv[optind - 1]);
        return -EINVAL;
    default:
        fail("run: unknown option %s", argv[optind - 1]);
        return -EINVAL;
    }
}

/*
 * Parses run's command line: argv[0] is "run", then options up to SCRIPT or -m MODULE
 * (everything after those is the script's), as python3 parses its own. Returns 0 or
 * -EINVAL after a message.
 */
static int parse_run(int argc, char **argv, struct run_options *o) {
    int c;

    optind = 0; /* glibc: reinitialise getopt */
    opterr = 0;
    while (o->module == NULL &&
           (c = getopt_long(argc, argv, "+:m:", run_long_options, NULL)) != -1) {
        if (run_option(c, argc, argv, o) < 0)
            return -EINVAL;
    }
    if (o->module == NULL && optind < argc)
        o->script = argv[optind++];
    if (o->script == NULL && o->module == NULL) {
        fail("run: missing SCRIPT or -m MODULE");
        return -EINVAL;
    }
    for (; optind < argc; optind++) {
        if (append_arg(&o->argv, argv[optind], "argument") < 0)
            return -EINVAL;
    }
    return 0;
}

/* The script to run into args: "source" (the text on stdin) for "-", as python3 -; else
 * "path", made absolute. A script that cannot be opened is reported once, as python3
 * reports it. Returns 0, or -1 after a message. */
static int run_script(const char *script, json_t *args) {
    if (strcmp(script, "-") == 0) {
        size_t len;
        char *text = read_stdin(&len);

        if (text == NULL)
            return -1;
        json_object_set_new(args, "source", json_stringn(text, len));
        free(text);
        if (json_object_get(args, "source") == NULL) {
            fail("run: the script on stdin is not valid UTF-8");
            return -1;
        }
        return 0;
    }
    char *real = realpath(script, NULL);

    if (real == NULL) {
        char cwd[PATH_MAX] = "";
        int e = errno;

        if (script[0] != '/' && getcwd(cwd, sizeof(cwd) - 1) != NULL)
            strcat(cwd, "/");
        fail("run: can't open file '%s%s': [Errno %d] %s", cwd, script, e, strerror(e));
        return -1;
    }
    json_object_set_new(args, "path", json_string(real));
    free(real);
    return 0;
}

/* The run request's arguments (docs/protocol.md, "run"), a new object; NULL after a
 * message. */
static json_t *run_request(const struct run_options *o) {
    json_t *args = json_object();
    char buf[PATH_MAX];

    if (o->script != NULL) {
        if (run_script(o->script, args) < 0) {
            json_decref(args);
            return NULL;
        }
    } else {
        json_object_set_new(args, "module", json_string(o->module));
    }
    if (o->cwd != NULL) {
        char *real = realpath(o->cwd, NULL);

        json_object_set_new(args, "cwd", json_string(real != NULL ? real : o->cwd));
        free(real);
    } else if (o->isolate && getcwd(buf, sizeof(buf)) != NULL) {
        /* An isolated run starts where pyhotctl runs, as python3 would. */
        json_object_set_new(args, "cwd", json_string(buf));
    }
    json_object_set(args, "argv", o->argv);
    if (json_object_size(o->globals) > 0)
        json_object_set(args, "globals", o->globals);
    if (o->get != NULL)
        json_object_set(args, "get", o->get);
    if (o->timeout_ms > 0)
        json_object_set_new(args, "timeout_ms", json_integer(o->timeout_ms));
    if (o->isolate)
        json_object_set_new(args, "isolate", json_true());
    if (o->sandbox)
        json_object_set_new(args, "sandbox", json_true());
    if (o->pids >= 0)
        json_object_set_new(args, "pids", json_integer(o->pids));
    if (o->memory_mb > 0)
        json_object_set_new(args, "memory_mb", json_integer(o->memory_mb));
    if (o->cpu_s > 0)
        json_object_set_new(args, "cpu_s", json_integer(o->cpu_s));
    return args;
}

/* Whether v is the form of a value that is not JSON by nature: {"repr", "type"} and maybe
 * "truncated" (docs/run.md). */
static bool is_repr(json_t *v) {
    size_t n = json_object_size(v);

    return json_is_string(json_object_get(v, "repr")) && json_is_string(json_object_get(v, "type")) &&
           (n == 2 || (n == 3 && json_is_true(json_object_get(v, "truncated"))));
}

/* After the output: "NAME = value" for each value of --get (JSON compact, or a repr and its
 * type), then the names the script did not set, on stderr. */
static void print_globals(json_t *result) {
    const char *name;
    json_t *value, *names = json_object_get(result, "missing");
    size_t i;

    json_object_foreach(json_object_get(result, "globals"), name, value) {
        put_clean(stdout, name);
        fputs(" = ", stdout);
        if (is_repr(value)) {
            put_exact(stdout, json_object_get(value, "repr"));
            fputs(json_is_true(json_object_get(value, "truncated")) ? "...    (" : "    (", stdout);
            put_clean(stdout, jstr(value, "type"));
            fputs(json_is_true(json_object_get(value, "truncated")) ? ", repr truncated)\n" : ")\n", stdout);
        } else {
            char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);

            fputs(text != NULL ? text : "?", stdout);
            fputc('\n', stdout);
            free(text);
        }
    }
    fflush(stdout);
    json_array_foreach(names, i, value)
        fail("run: %s: not set by the script", json_string_value(value));
    json_array_foreach(json_object_get(result, "omitted"), i, value)
        fail("run: %s: left out (the values before it reached 8 MiB)", json_string_value(value));
}

/*
 * Handles one line of the run: output is written as it came (to stdout or stderr), the
 * response ends the run. Returns -1 to read on, else the exit status.
 */
static int run_line(const struct ctl *ctl, const char *line, size_t len) {
    json_t *msg = parse_line(line, len), *id;
    const char *stream;
    int r = -1;

    if (msg == NULL)
        return EXIT_USAGE;
    id = json_object_get(msg, "id");
    if (ctl->json && (json_object_get(msg, "stream") != NULL || is_our_response(msg))) {
        fwrite(line, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    stream = jstr(msg, "stream");
    if (stream != NULL && json_is_integer(id) && json_integer_value(id) == REQUEST_ID) {
        json_t *data = json_object_get(msg, "data");
        FILE *out = strcmp(stream, "stderr") == 0 ? stderr : stdout;

        if (!ctl->json && json_is_string(data)) {
            fwrite(json_string_value(data), 1, json_string_length(data), out);
            fflush(out);
        }
    } else if (!is_event(msg) && is_our_response(msg)) {
        if (json_is_true(json_object_get(msg, "ok"))) {
            r = run_status(json_object_get(msg, "result"));
            if (!ctl->json)
                print_globals(json_object_get(msg, "result"));
        } else {
            if (!ctl->json)
                report_error(msg);
            r = EXIT_FAILED;
        }
    }
    json_decref(msg);
    return r;
}

/* argv[0] is "run" (main hands run its whole command line, for getopt_long). */
int cmd_run(struct ctl *ctl, int argc, char **argv) {
    struct run_options o = { .pids = -1, .globals = json_object(), .argv = json_array() };
    json_t *args = NULL;
    int r = EXIT_USAGE;

    if (parse_run(argc, argv, &o) < 0)
        goto out;
    args = run_request(&o);
    if (args == NULL || ctl_connect(ctl) < 0)
        goto out;
    r = ctl_send(ctl, "run", args);
    if (r != EXIT_OK)
        goto out;
    for (r = -1; r == -1;) {
        char *line;
        size_t len;
        int got = read_line(ctl, -1, &line, &len);

        if (got <= 0)
            r = read_failed(ctl, got, "the run ended");
        else
            r = len == 0 ? -1 : run_line(ctl, line, len);
    }
out:
    json_decref(args);
    json_decref(o.globals);
    json_decref(o.get);
    json_decref(o.argv);
    return r;
}
