/* pyhotctl: the interpreter — modules, reload, exec. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol.h"
#include "pyhotctl.h"

struct module_row {
    const char *name;
    const char *path;
};

static int module_row_cmp(const void *a, const void *b) {
    return strcmp(((const struct module_row *)a)->name, ((const struct module_row *)b)->name);
}

int cmd_modules(struct ctl *ctl, int argc, char **argv) {
    json_t *resp, *args = NULL, *modules, *m;
    struct module_row *rows;
    size_t i, n = 0, width = strlen("NAME");
    int r;

    if (argc > 0) {
        args = json_pack("{s:s}", "pattern", argv[0]);
        if (args == NULL) {
            fail("PATTERN is not valid UTF-8");
            return EXIT_USAGE;
        }
    }
    r = ctl_call(ctl, "modules", args, &resp, false);
    json_decref(args);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    modules = json_object_get(json_object_get(resp, "result"), "modules");
    rows = calloc(json_array_size(modules) + 1, sizeof(*rows));
    if (rows == NULL) {
        json_decref(resp);
        fail("out of memory");
        return EXIT_USAGE;
    }
    json_array_foreach(modules, i, m) {
        if (jstr(m, "name") == NULL)
            continue;
        rows[n].name = jstr(m, "name");
        rows[n].path = jstr(m, "path");
        if (strlen(rows[n].name) > width)
            width = strlen(rows[n].name);
        n++;
    }
    qsort(rows, n, sizeof(*rows), module_row_cmp);
    if (n == 0) {
        fail("no loaded module matches%s%s", argc > 0 ? " " : "", argc > 0 ? argv[0] : "");
    } else {
        printf("%-*s  PATH\n", (int)width, "NAME");
        for (i = 0; i < n; i++) {
            put_clean(stdout, rows[i].name);
            printf("%*s  ", (int)(width - strlen(rows[i].name)), "");
            put_clean(stdout, rows[i].path != NULL ? rows[i].path : "-");
            fputc('\n', stdout);
        }
    }
    free(rows);
    json_decref(resp);
    return EXIT_OK;
}

/* The reload events of a result or an error, then its batch event, as in tail. */
static void print_reload_outcome(const struct ctl *ctl, json_t *obj) {
    json_t *ev;
    size_t i;

    json_array_foreach(json_object_get(obj, "reloads"), i, ev) {
        if (json_is_object(ev))
            print_event(ctl, stdout, ev);
    }
    if (json_is_object(json_object_get(obj, "batch")))
        print_event(ctl, stdout, json_object_get(obj, "batch"));
}

static bool batch_failed(json_t *batch) {
    const char *result = jstr(batch, "result");

    return result != NULL && (strcmp(result, "error") == 0 ||
                              strcmp(result, "rolled_back") == 0);
}

/* A relative path to an existing file becomes absolute; anything else is a module name
 * (or a path the daemon resolves) and goes as it is. */
static json_t *reload_target(const char *arg) {
    struct stat st;
    char *abs;
    json_t *v;

    if (arg[0] != '/' && stat(arg, &st) == 0 && S_ISREG(st.st_mode)) {
        abs = realpath(arg, NULL);
        if (abs != NULL) {
            v = json_string(abs);
            free(abs);
            return v;
        }
    }
    return json_string(arg);
}

int cmd_reload(struct ctl *ctl, int argc, char **argv) {
    json_t *targets = json_array(), *args, *resp, *result;
    int i, r;

    for (i = 0; targets != NULL && i < argc; i++) {
        json_t *t = reload_target(argv[i]);

        if (t == NULL) {
            fail("target %d is not valid UTF-8", i + 1);
            json_decref(targets);
            return EXIT_USAGE;
        }
        json_array_append_new(targets, t);
    }
    args = json_pack("{s:o}", "targets", targets);
    if (args == NULL) {
        fail("out of memory");
        return EXIT_USAGE;
    }
    r = ctl_call(ctl, "reload", args, &resp, true);
    json_decref(args);
    if (resp == NULL)
        return r;
    if (r == EXIT_OK) {
        result = json_object_get(resp, "result");
        if (!ctl->json)
            print_reload_outcome(ctl, result);
        if (batch_failed(json_object_get(result, "batch")))
            r = EXIT_FAILED;
    } else if (!ctl->json) {
        print_reload_outcome(ctl, json_object_get(resp, "error"));
        report_error(resp);
    }
    json_decref(resp);
    return r;
}

char *read_stdin(size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap), *p;
    ssize_t r;

    for (;;) {
        if (buf == NULL) {
            fail("out of memory");
            return NULL;
        }
        if (n > PROTOCOL_MAX_LINE) {
            fail("stdin exceeds %d bytes (a request line's limit)", PROTOCOL_MAX_LINE);
            free(buf);
            return NULL;
        }
        if (n == cap) {
            cap *= 2;
            p = realloc(buf, cap);
            if (p == NULL)
                free(buf);
            buf = p;
            continue;
        }
        r = read(STDIN_FILENO, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fail("cannot read stdin: %s", strerror(errno));
            free(buf);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *len = n;
    return buf;
}

static void print_value_line(json_t *value, json_t *captured_stdout) {
    /* On its own line, even after output that did not end one. */
    if (json_string_length(captured_stdout) > 0 && !ends_with_newline(captured_stdout))
        fputc('\n', stdout);
    if (json_is_string(value))
        put_exact(stdout, value);
    else
        put_value(stdout, value);
    fputc('\n', stdout);
}

int cmd_exec(struct ctl *ctl, int argc, char **argv) {
    json_t *code, *args, *resp, *obj, *tb;
    char *text = NULL;
    size_t len;
    int r;

    if (strcmp(argv[0], "-") == 0) {
        text = read_stdin(&len);
        if (text == NULL)
            return EXIT_USAGE;
    } else {
        len = strlen(argv[0]);
    }
    if (memchr(text != NULL ? text : argv[0], '\0', len) != NULL) {
        fail("code contains a NUL byte");
        free(text);
        return EXIT_USAGE;
    }
    code = json_stringn(text != NULL ? text : argv[0], len);
    free(text);
    if (code == NULL) {
        fail("code is not valid UTF-8");
        return EXIT_USAGE;
    }
    args = json_pack("{s:o}", "code", code);
    if (args == NULL) {
        fail("out of memory");
        return EXIT_USAGE;
    }
    r = ctl_call(ctl, "exec", args, &resp, true);
    json_decref(args);
    if (resp == NULL || ctl->json) {
        json_decref(resp);
        return r;
    }

    /* The captured output comes first, exactly as captured, on success and failure. */
    obj = json_object_get(resp, r == EXIT_OK ? "result" : "error");
    put_exact(stdout, json_object_get(obj, "stdout"));
    fflush(stdout);
    put_exact(stderr, json_object_get(obj, "stderr"));
    fflush(stderr);
    if (r == EXIT_OK) {
        json_t *value = json_object_get(obj, "value");

        if (value != NULL && !json_is_null(value))
            print_value_line(value, json_object_get(obj, "stdout"));
    } else {
        tb = json_object_get(obj, "traceback");
        if (jstr(obj, "code") != NULL && strcmp(jstr(obj, "code"), PROTOCOL_E_PYTHON) == 0 &&
            json_string_length(tb) > 0) {
            /* As Python prints it: the traceback ends with "Type: message". */
            put_exact(stderr, tb);
            if (!ends_with_newline(tb))
                fputc('\n', stderr);
        } else {
            report_error(resp);
        }
    }
    json_decref(resp);
    return r;
}
