/* pyhotctl: what every verb shares — output (JSON members, values, events as lines)
 * and the connection (connect, send, read lines, wait for the response). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol.h"
#include "pyhotctl.h"

volatile sig_atomic_t got_stop_signal;

void on_stop_signal(int sig) {
    (void)sig;
    got_stop_signal = 1;
}

/* "pyhotctl: message" on stderr. */
void fail(const char *fmt, ...) {
    va_list ap;

    fflush(stdout);
    fputs("pyhotctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int64_t now_ms(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double now_sec(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *jstr(const json_t *obj, const char *key) {
    return json_string_value(json_object_get(obj, key));
}

bool jint(const json_t *obj, const char *key, long long *out) {
    json_t *v = json_object_get(obj, key);

    if (!json_is_integer(v))
        return false;
    *out = (long long)json_integer_value(v);
    return true;
}

bool jnum(const json_t *obj, const char *key, double *out) {
    json_t *v = json_object_get(obj, key);

    if (!json_is_number(v))
        return false;
    *out = json_number_value(v);
    return true;
}

void put_clean(FILE *out, const char *s) {
    if (s == NULL)
        s = "-";
    for (; *s != '\0'; s++)
        fputc(((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s, out);
}

void put_exact(FILE *out, json_t *s) {
    if (json_is_string(s))
        fwrite(json_string_value(s), 1, json_string_length(s), out);
}

bool ends_with_newline(json_t *s) {
    size_t n = json_string_length(s);

    return n > 0 && json_string_value(s)[n - 1] == '\n';
}

void put_value(FILE *out, json_t *v) {
    char *s;

    if (v == NULL || json_is_null(v)) {
        fputc('-', out);
    } else if (json_is_string(v)) {
        put_clean(out, json_string_value(v));
    } else {
        s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
        put_clean(out, s != NULL ? s : "?");
        free(s);
    }
}

void put_list(FILE *out, json_t *list) {
    size_t i;
    json_t *item;

    fputc('[', out);
    json_array_foreach(list, i, item) {
        if (i > 0)
            fputs(", ", out);
        /* status roots and started roots may be {"path": ...} objects */
        if (json_is_object(item) && json_is_string(json_object_get(item, "path")))
            item = json_object_get(item, "path");
        put_value(out, item);
    }
    fputc(']', out);
}

void put_result(const struct ctl *ctl, FILE *out, const char *result) {
    const char *color = NULL;

    if (result == NULL)
        result = "?";
    if (ctl->color) {
        if (strcmp(result, "ok") == 0 || strcmp(result, "loaded") == 0 ||
            strcmp(result, "reloaded") == 0)
            color = COLOR_GREEN;
        else if (strcmp(result, "error") == 0 || strcmp(result, "rolled_back") == 0)
            color = COLOR_RED;
        else if (strcmp(result, "skipped") == 0 || strcmp(result, "removed") == 0)
            color = COLOR_DIM;
    }
    if (color != NULL)
        fputs(color, out);
    put_clean(out, result);
    if (color != NULL)
        fputs(COLOR_RESET, out);
}

void put_error_summary(FILE *out, json_t *error) {
    const char *type = jstr(error, "type"), *message = jstr(error, "message");
    const char *file = jstr(error, "file");
    long long line;

    if (type != NULL) {
        fputc(' ', out);
        put_clean(out, type);
        if (message != NULL && message[0] != '\0')
            fputc(':', out);
    }
    if (message != NULL && message[0] != '\0') {
        fputc(' ', out);
        put_clean(out, message);
    }
    if (file != NULL) {
        fputs(" (", out);
        put_clean(out, file);
        if (jint(error, "line", &line))
            fprintf(out, ":%lld", line);
        fputc(')', out);
    }
}

void put_time(FILE *out, const char *rfc3339) {
    struct tm tm = { 0 }, local;
    int year, mon, day, hour, min, sec, n = 0;
    long ms = 0;
    const char *p;
    time_t t;

    if (rfc3339 == NULL) {
        fputs("--:--:--.---", out);
        return;
    }
    if (sscanf(rfc3339, "%4d-%2d-%2dT%2d:%2d:%2d%n", &year, &mon, &day, &hour, &min, &sec,
               &n) != 6 || n == 0)
        goto raw;
    p = rfc3339 + n;
    if (*p == '.') {
        int digits = 0;

        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
        }
        if (digits == 0)
            goto raw;
        for (; digits < 3; digits++)
            ms *= 10;
    }
    if ((*p != 'Z' && *p != 'z') || p[1] != '\0')
        goto raw;
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t == (time_t)-1 || localtime_r(&t, &local) == NULL)
        goto raw;
    fprintf(out, "%02d:%02d:%02d.%03ld", local.tm_hour, local.tm_min, local.tm_sec, ms);
    return;
raw:
    put_clean(out, rfc3339);
}

void put_ms(FILE *out, const char *prefix, json_t *obj, const char *key) {
    double ms;

    if (jnum(obj, key, &ms))
        fprintf(out, "%s%.2f ms", prefix, ms);
}

static void print_reload(const struct ctl *ctl, FILE *out, json_t *ev) {
    const char *module = jstr(ev, "module"), *result = jstr(ev, "result");
    const char *reason = jstr(ev, "reason");
    json_t *error = json_object_get(ev, "error"), *replaced = json_object_get(ev, "replaced");
    long long batch;

    fputs(" reload ", out);
    put_clean(out, module != NULL ? module : jstr(ev, "path"));
    fputc(' ', out);
    put_result(ctl, out, result);
    if (json_is_object(error)) {
        put_error_summary(out, error);
    } else if (result != NULL && strcmp(result, "skipped") == 0) {
        /* "skipped: not imported (batch 4)" */
        if (reason != NULL) {
            fputs(": ", out);
            put_clean(out, reason);
        }
        if (jint(ev, "batch", &batch))
            fprintf(out, " (batch %lld)", batch);
    } else {
        /* "ok 0.08 ms (batch 1): imports a changed module" */
        put_ms(out, " ", ev, "duration_ms");
        if (jint(ev, "batch", &batch))
            fprintf(out, " (batch %lld)", batch);
        if (reason != NULL) {
            fputs(": ", out);
            put_clean(out, reason);
        }
    }
    if (json_array_size(replaced) > 0) {
        /* "replaced [m.Color (enum), m.Pair (fields changed)]" */
        json_t *reasons = json_object_get(ev, "replaced_reasons"), *name;
        size_t i;

        fputs(" replaced [", out);
        json_array_foreach(replaced, i, name) {
            const char *why = jstr(reasons, json_string_value(name) ? json_string_value(name) : "");

            fputs(i > 0 ? ", " : "", out);
            put_value(out, name);
            if (why != NULL) {
                fputs(" (", out);
                put_clean(out, why);
                fputc(')', out);
            }
        }
        fputc(']', out);
    }
    if (json_array_size(json_object_get(ev, "removed")) > 0) {
        fputs(" removed ", out);
        put_list(out, json_object_get(ev, "removed"));
    }
}

static void print_batch(const struct ctl *ctl, FILE *out, json_t *ev) {
    json_t *modules = json_object_get(ev, "modules"), *error = json_object_get(ev, "error");
    long long id;

    fputs(" batch", out);
    if (jint(ev, "batch", &id))
        fprintf(out, " %lld", id);
    fputc(' ', out);
    put_result(ctl, out, jstr(ev, "result"));
    fputc(' ', out);
    /* A batch of files no loaded module comes from: show the files. */
    if (json_array_size(modules) == 0 && json_array_size(json_object_get(ev, "paths")) > 0)
        modules = json_object_get(ev, "paths");
    put_list(out, modules);
    put_ms(out, " ", ev, "duration_ms");
    put_ms(out, ", latency ", ev, "latency_ms");
    if (json_is_object(error)) {
        fputc(':', out);
        put_error_summary(out, error);
    }
}

/* A run event: "run 4 /srv/job.py sandboxed exited 0 in 18.40 ms, cpu 9.10 ms, max rss
 * 15848 KiB (uid 1000, pid 5120)". */
static void print_run(FILE *out, json_t *ev) {
    long long n;

    fputs(" run", out);
    if (jint(ev, "run", &n))
        fprintf(out, " %lld", n);
    fputc(' ', out);
    put_clean(out, jstr(ev, "script") != NULL ? jstr(ev, "script") : "?");
    fputs(json_is_true(json_object_get(ev, "sandboxed")) ? " sandboxed"
          : json_is_true(json_object_get(ev, "isolated")) ? " isolated" : " in-process", out);
    if (jint(ev, "signal", &n) && n > 0)
        fprintf(out, " ended by signal %lld", n);
    else if (jint(ev, "exit_code", &n))
        fprintf(out, " exited %lld", n);
    if (json_is_true(json_object_get(ev, "timed_out")))
        fputs(" (timed out)", out);
    put_ms(out, " in ", ev, "duration_ms");
    put_ms(out, ", cpu ", ev, "cpu_ms");
    if (jint(ev, "max_rss_kb", &n))
        fprintf(out, ", max rss %lld KiB", n);
    if (jint(ev, "peer_uid", &n))
        fprintf(out, " (uid %lld", n);
    if (jint(ev, "peer_pid", &n))
        fprintf(out, ", pid %lld)", n);
}

void print_event(const struct ctl *ctl, FILE *out, json_t *ev) {
    const char *name = jstr(ev, "event");
    long long n;

    put_time(out, jstr(ev, "time"));
    if (name == NULL)
        name = "?";
    if (strcmp(name, "reload") == 0) {
        print_reload(ctl, out, ev);
    } else if (strcmp(name, "batch") == 0) {
        print_batch(ctl, out, ev);
    } else if (strcmp(name, "started") == 0) {
        fputs(" started pyhotd ", out);
        put_value(out, json_object_get(ev, "version"));
        if (jint(ev, "pid", &n))
            fprintf(out, ", pid %lld", n);
        if (json_is_array(json_object_get(ev, "roots"))) {
            fputs(", roots ", out);
            put_list(out, json_object_get(ev, "roots"));
        }
        if (jint(ev, "modules_loaded", &n))
            fprintf(out, ", %lld modules loaded", n);
    } else if (strcmp(name, "stopping") == 0) {
        fputs(" stopping", out);
        if (jstr(ev, "reason") != NULL) {
            fputs(": ", out);
            put_clean(out, jstr(ev, "reason"));
        }
    } else if (strcmp(name, "import_error") == 0) {
        /* A module under a watch root that failed to import at start. */
        fputs(" import_error ", out);
        put_value(out, json_object_get(ev, "module"));
        put_error_summary(out, ev);
    } else if (strcmp(name, "startup_error") == 0) {
        fputs(" startup_error", out);
        put_error_summary(out, json_object_get(ev, "error"));
    } else if (strcmp(name, "overflow") == 0) {
        fputs(" overflow: ", out);
        put_value(out, json_object_get(ev, "message"));
    } else if (strcmp(name, "run") == 0) {
        print_run(out, ev);
    } else if (strcmp(name, "plugin") == 0) {
        /* A plugin file loaded, run again, failed or removed (docs/plugins.md). */
        fputs(" plugin ", out);
        put_value(out, json_object_get(ev, "name"));
        fputc(' ', out);
        put_result(ctl, out, jstr(ev, "result"));
        put_ms(out, " ", ev, "duration_ms");
        if (json_is_object(json_object_get(ev, "error"))) {
            fputc(':', out);
            put_error_summary(out, json_object_get(ev, "error"));
        }
    } else if (strcmp(name, "watch_error") == 0) {
        fputs(" watch_error ", out);
        put_value(out, json_object_get(ev, "root"));
        fputs(": ", out);
        put_value(out, json_object_get(ev, "message"));
    } else {
        /* Unknown to this client: its name and the rest as JSON. */
        json_t *rest = json_copy(ev);

        fputc(' ', out);
        put_clean(out, name);
        if (rest != NULL) {
            json_object_del(rest, "event");
            json_object_del(rest, "seq");
            json_object_del(rest, "time");
            if (json_object_size(rest) > 0) {
                fputc(' ', out);
                put_value(out, rest);
            }
            json_decref(rest);
        }
    }
    fputc('\n', out);
}

int ctl_connect(struct ctl *ctl) {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    size_t len = strlen(ctl->socket_path);

    if (len == 0 || len >= sizeof(addr.sun_path)) {
        fail("socket path %s is %s (at most %zu bytes, unix(7))", ctl->socket_path,
             len == 0 ? "empty" : "too long", sizeof(addr.sun_path) - 1);
        return -EINVAL;
    }
    memcpy(addr.sun_path, ctl->socket_path, len + 1);
    ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ctl->fd < 0) {
        fail("socket: %s", strerror(errno));
        return -errno;
    }
    while (connect(ctl->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int e = errno;

        if (e == EINTR)
            continue;
        fail("cannot connect to %s: %s (is pyhotd running? set --socket or PYHOT_SOCKET)",
             ctl->socket_path, strerror(e));
        close(ctl->fd);
        ctl->fd = -1;
        return -e;
    }
    return 0;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int ctl_send(struct ctl *ctl, const char *cmd, json_t *args) {
    return ctl_send_id(ctl, REQUEST_ID, cmd, args);
}

int ctl_send_id(struct ctl *ctl, int id, const char *cmd, json_t *args) {
    size_t len;
    char *line = protocol_encode_request(id, cmd, args, &len);
    int r;

    if (line == NULL) {
        fail("cannot encode the request (out of memory, or text that is not UTF-8)");
        return EXIT_USAGE;
    }
    if (len - 1 > PROTOCOL_MAX_LINE) {
        fail("request of %zu bytes exceeds the protocol limit of %d bytes", len - 1,
             PROTOCOL_MAX_LINE);
        free(line);
        return EXIT_USAGE;
    }
    r = write_all(ctl->fd, line, len);
    free(line);
    if (r < 0) {
        fail("cannot send to %s: %s", ctl->socket_path, strerror(-r));
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

int read_line(struct ctl *ctl, int64_t deadline, char **line, size_t *len) {
    struct reader *rd = &ctl->rd;

    for (;;) {
        char *start = rd->buf != NULL ? rd->buf + rd->start : NULL;
        char *nl = NULL;
        struct pollfd pfd = { .fd = ctl->fd, .events = POLLIN };
        struct timespec ts, *tsp = NULL;
        ssize_t n;

        if (rd->len > rd->start + rd->scan) {
            nl = memchr(start + rd->scan, '\n', rd->len - rd->start - rd->scan);
            rd->scan = nl != NULL ? 0 : rd->len - rd->start;
        }
        if (nl != NULL) {
            *nl = '\0';
            *line = start;
            *len = (size_t)(nl - start);
            rd->start += *len + 1;
            return 1;
        }
        if (rd->eof) {
            /* A last line without "\n": take it as it is (reads leave room for the NUL). */
            if (rd->len > rd->start) {
                rd->buf[rd->len] = '\0';
                *line = start;
                *len = rd->len - rd->start;
                rd->start = rd->len;
                rd->scan = 0;
                return 1;
            }
            return 0;
        }
        if (rd->start > 0) {
            memmove(rd->buf, start, rd->len - rd->start);
            rd->len -= rd->start;
            rd->start = 0;
        }
        if (rd->len + 1 >= rd->cap) {
            size_t cap = rd->cap == 0 ? READ_CHUNK : rd->cap * 2;
            char *buf;

            if (rd->cap >= RESPONSE_MAX + 2)
                return -EMSGSIZE;
            if (cap > RESPONSE_MAX + 2)
                cap = RESPONSE_MAX + 2;
            buf = realloc(rd->buf, cap);
            if (buf == NULL)
                return -ENOMEM;
            rd->buf = buf;
            rd->cap = cap;
        }

        if (deadline >= 0) {
            int64_t left = deadline - now_ms();

            if (left <= 0)
                return -ETIMEDOUT;
            ts.tv_sec = left / 1000;
            ts.tv_nsec = (left % 1000) * 1000000;
            tsp = &ts;
        }
        if (ctl->stop_signals != NULL) {
            /* Check the flag with the signals blocked, and let them in only inside ppoll:
             * one that comes between the check and the wait cannot be missed. */
            sigset_t orig;
            int e;

            sigprocmask(SIG_BLOCK, ctl->stop_signals, &orig);
            if (got_stop_signal) {
                sigprocmask(SIG_SETMASK, &orig, NULL);
                return -EINTR;
            }
            n = ppoll(&pfd, 1, tsp, &orig);
            e = errno;
            sigprocmask(SIG_SETMASK, &orig, NULL);
            errno = e;
        } else {
            n = ppoll(&pfd, 1, tsp, NULL);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue; /* a stop signal is seen by the next check */
            return -errno;
        }
        if (n == 0)
            continue; /* the deadline is checked above */

        n = read(ctl->fd, rd->buf + rd->len, rd->cap - rd->len - 1);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (n == 0)
            rd->eof = true;
        rd->len += (size_t)n;
    }
}

int read_failed(struct ctl *ctl, int r, const char *waiting_for) {
    switch (r) {
    case 0:
        fail("pyhotd closed the connection on %s before %s", ctl->socket_path, waiting_for);
        break;
    case -ETIMEDOUT:
        fail("no response from pyhotd on %s within %g s (see --timeout)", ctl->socket_path,
             ctl->timeout_ms / 1000.0);
        break;
    case -EMSGSIZE:
        fail("a line from pyhotd exceeds %zu MiB", RESPONSE_MAX / (1024 * 1024));
        break;
    default:
        fail("cannot read from %s: %s", ctl->socket_path, strerror(-r));
        break;
    }
    return EXIT_USAGE;
}

json_t *parse_line(const char *line, size_t len) {
    json_error_t jerr;
    json_t *v = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);

    if (v == NULL) {
        fail("invalid line from pyhotd (column %d: %s)", jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        fail("invalid line from pyhotd (not a JSON object)");
        json_decref(v);
        return NULL;
    }
    return v;
}

bool is_event(json_t *msg) {
    return json_is_string(json_object_get(msg, "event")) && json_object_get(msg, "ok") == NULL;
}

bool is_our_response(json_t *msg) {
    json_t *id = json_object_get(msg, "id"), *ok = json_object_get(msg, "ok");

    if (!json_is_boolean(ok))
        return false;
    if (json_is_integer(id))
        return json_integer_value(id) == REQUEST_ID;
    return json_is_null(id) && json_is_false(ok);
}

int ctl_wait_response(struct ctl *ctl, json_t **resp, char **raw) {
    int64_t deadline = ctl->timeout_ms < 0 ? -1 : now_ms() + ctl->timeout_ms;
    char *line;
    size_t len;
    json_t *msg;
    int r;

    for (;;) {
        r = read_line(ctl, deadline, &line, &len);
        if (r == -EINTR)
            return WAIT_INTERRUPTED;
        if (r <= 0)
            return read_failed(ctl, r, "answering");
        if (len == 0)
            continue;
        msg = parse_line(line, len);
        if (msg == NULL)
            return EXIT_USAGE;
        if (!is_event(msg) && is_our_response(msg)) {
            if (raw != NULL) {
                *raw = strndup(line, len);
                if (*raw == NULL) {
                    json_decref(msg);
                    fail("out of memory");
                    return EXIT_USAGE;
                }
            }
            *resp = msg;
            return EXIT_OK;
        }
        json_decref(msg);
    }
}

int report_error(json_t *resp) {
    json_t *error = json_object_get(resp, "error");
    const char *code = jstr(error, "code"), *message = jstr(error, "message");
    json_t *tb = json_object_get(error, "traceback");

    fflush(stdout);
    fputs("pyhotctl: ", stderr);
    put_clean(stderr, code != NULL ? code : "error");
    fputs(": ", stderr);
    put_clean(stderr, message != NULL ? message : "(no message)");
    fputc('\n', stderr);
    /* A traceback of one line ("Type: message") only says the message again. */
    if (json_is_string(tb) && json_string_length(tb) > 0 &&
        strchr(json_string_value(tb), '\n') != json_string_value(tb) + json_string_length(tb) - 1) {
        put_exact(stderr, tb);
        if (!ends_with_newline(tb))
            fputc('\n', stderr);
    }
    return EXIT_FAILED;
}

int ctl_call(struct ctl *ctl, const char *cmd, json_t *args, json_t **resp,
                    bool keep_error) {
    char *raw = NULL;
    int r;

    *resp = NULL;
    if (ctl_connect(ctl) < 0)
        return EXIT_USAGE;
    r = ctl_send(ctl, cmd, args);
    if (r != EXIT_OK)
        return r;
    r = ctl_wait_response(ctl, resp, ctl->json ? &raw : NULL);
    if (r != EXIT_OK)
        return r;
    if (ctl->json) {
        fwrite(raw, 1, strlen(raw), stdout);
        fputc('\n', stdout);
        free(raw);
    }
    if (json_is_true(json_object_get(*resp, "ok")))
        return EXIT_OK;
    if (!ctl->json && !keep_error)
        report_error(*resp);
    if (!keep_error) {
        json_decref(*resp);
        *resp = NULL;
    }
    return EXIT_FAILED;
}

int parse_count(const char *arg, long long *out) {
    char *end;
    long long n;

    errno = 0;
    n = strtoll(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || n < 0 || n > INT32_MAX) {
        fail("'%s' is not a number of events (0 to %d)", arg, INT32_MAX);
        return -EINVAL;
    }
    *out = n;
    return 0;
}

int parse_seconds(const char *opt, const char *arg, long long *ms) {
    char *end;
    double s;

    errno = 0;
    s = strtod(arg, &end);
    if (errno != 0 || end == arg || *end != '\0' || !isfinite(s) || s < 0 || s > TIMEOUT_MAX_S) {
        fail("%s: '%s' is not a number of seconds between 0 and %d", opt, arg, TIMEOUT_MAX_S);
        return -EINVAL;
    }
    *ms = (long long)(s * 1000);
    if (s > 0 && *ms == 0)
        *ms = 1;
    return 0;
}

int append_arg(json_t **list, const char *arg, const char *what) {
    json_t *v = json_string(arg);

    if (*list == NULL)
        *list = json_array();
    if (v == NULL || *list == NULL || json_array_append_new(*list, v) < 0) {
        fail("%s '%s' is not valid UTF-8", what, arg);
        return -EINVAL;
    }
    return 0;
}
