/*
 * pyhotctl: the command-line client of pyhotd's control socket (docs/protocol.md).
 *
 * One connection, one request (id 1), one response; `tail` then keeps reading events.
 * It speaks the protocol through lib/protocol.c only: no libuv, no libpython.
 *
 * Exit status: 0 success; 1 pyhotd answered ok:false (or a reload batch failed);
 * 2 usage error, or no usable answer from pyhotd (cannot connect, timeout, closed,
 * unreadable response).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
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
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <dlfcn.h>
#include <jansson.h>

#include "protocol.h"
#include "version.h"

#define EXIT_OK     0
#define EXIT_FAILED 1
#define EXIT_USAGE  2
#define EXIT_TIMEOUT 124  /* run --timeout passed, as timeout(1) exits */

/* ctl_wait_response: a stop signal came during tail (not an exit status). */
#define WAIT_INTERRUPTED 100

/* The one request of a connection. */
#define REQUEST_ID 1

/* Longest response or event line read, without its "\n". */
#define RESPONSE_MAX ((size_t)64 * 1024 * 1024)
#define READ_CHUNK   ((size_t)64 * 1024)

#define DEFAULT_TIMEOUT_S 60

/* Longest --timeout: what poll(2) can wait in one go, in whole seconds. */
#define TIMEOUT_MAX_S (INT_MAX / 1000)

#define COLOR_GREEN "\033[32m"
#define COLOR_RED   "\033[31m"
#define COLOR_DIM   "\033[2m"
#define COLOR_BOLD  "\033[1m"
#define COLOR_CYAN  "\033[36m"
#define COLOR_RESET "\033[0m"

/* Options that only some commands take (struct ctl_command.options). */
#define CTL_OPT_COUNT  1u   /* -n, --lines N */
#define CTL_OPT_FILTER 2u   /* -e, --event TYPE; -m, --module GLOB */
#define CTL_OPT_RAW    4u   /* the command parses every argument after its name itself (run) */

/* stats: histogram bars at most this many rows and columns. */
#define BAR_ROWS  12
#define BAR_WIDTH 40

/* A growable input buffer, capped at RESPONSE_MAX + 2 bytes: a full line, its "\n", and
 * room for the NUL that terminates a last line without one. */
struct reader {
    char *buf;
    size_t start;  /* first unread byte */
    size_t scan;   /* bytes from start known to hold no "\n" (no rescans of a long line) */
    size_t len;    /* bytes held */
    size_t cap;
    bool eof;
};

struct ctl {
    const char *socket_path;
    char default_path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
    bool json;
    int timeout_ms;             /* -1: no limit */
    bool color;
    int fd;
    struct reader rd;
    const sigset_t *stop_signals; /* tail: signals that end it, let through while waiting */
    bool utf8;                  /* the locale's charset is UTF-8: bars of block characters */
    long long count;            /* -n N; -1 when not given */
    json_t *events;             /* -e TYPE..., an array, or NULL */
    json_t *modules;            /* -m GLOB..., an array, or NULL */
    unsigned given_options;     /* CTL_OPT_* seen on the command line */
};

struct ctl_command {
    const char *name;
    const char *args;           /* argument synopsis */
    const char *summary;        /* one line, for the command list */
    const char *help;           /* `pyhotctl COMMAND --help` */
    int min_args;
    int max_args;               /* -1: no limit */
    bool stop_at_operand;       /* options end at the first operand (exec CODE may start with -) */
    int (*exec)(struct ctl *ctl, int argc, char **argv);
    unsigned options;           /* CTL_OPT_* it takes */
};

static volatile sig_atomic_t got_stop_signal;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "pyhotctl: message" on stderr. */
static void fail(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs("pyhotctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_sec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- JSON helpers (absent and mistyped members read as missing) ---- */

static const char *jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static bool jint(const json_t *obj, const char *key, long long *out)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_integer(v))
        return false;
    *out = (long long)json_integer_value(v);
    return true;
}

static bool jnum(const json_t *obj, const char *key, double *out)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_number(v))
        return false;
    *out = json_number_value(v);
    return true;
}

/* ---- output ---- */

/* Writes s with control characters shown as '?', so that one event stays one line. */
static void put_clean(FILE *out, const char *s)
{
    if (s == NULL)
        s = "-";
    for (; *s != '\0'; s++)
        fputc(((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s, out);
}

/* s with its length (strings from the daemon may hold NULs), exactly as captured. */
static void put_exact(FILE *out, json_t *s)
{
    if (json_is_string(s))
        fwrite(json_string_value(s), 1, json_string_length(s), out);
}

static bool ends_with_newline(json_t *s)
{
    size_t n = json_string_length(s);

    return n > 0 && json_string_value(s)[n - 1] == '\n';
}

/* Prints any JSON value: a string as itself, null as "-", the rest as compact JSON. */
static void put_value(FILE *out, json_t *v)
{
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

/* "[a, b, c]" of an array (strings as themselves); "[]" when empty or not an array. */
static void put_list(FILE *out, json_t *list)
{
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

static void put_result(const struct ctl *ctl, FILE *out, const char *result)
{
    const char *color = NULL;

    if (result == NULL)
        result = "?";
    if (ctl->color) {
        if (strcmp(result, "ok") == 0)
            color = COLOR_GREEN;
        else if (strcmp(result, "error") == 0 || strcmp(result, "rolled_back") == 0)
            color = COLOR_RED;
        else if (strcmp(result, "skipped") == 0)
            color = COLOR_DIM;
    }
    if (color != NULL)
        fputs(color, out);
    put_clean(out, result);
    if (color != NULL)
        fputs(COLOR_RESET, out);
}

/* " TYPE: MESSAGE (FILE:LINE)" of an error object. */
static void put_error_summary(FILE *out, json_t *error)
{
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

/*
 * The local time of day of an RFC 3339 UTC time ("2026-11-27T04:19:43.123Z" ->
 * "05:19:43.123" in CET). Anything else is printed as it came.
 */
static void put_time(FILE *out, const char *rfc3339)
{
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

static void put_ms(FILE *out, const char *prefix, json_t *obj, const char *key)
{
    double ms;

    if (jnum(obj, key, &ms))
        fprintf(out, "%s%.2f ms", prefix, ms);
}

static void print_reload(const struct ctl *ctl, FILE *out, json_t *ev)
{
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
        fputs(" replaced ", out);
        put_list(out, replaced);
    }
}

static void print_batch(const struct ctl *ctl, FILE *out, json_t *ev)
{
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
static void print_run(FILE *out, json_t *ev)
{
    long long n;

    fputs(" run", out);
    if (jint(ev, "run", &n))
        fprintf(out, " %lld", n);
    fputc(' ', out);
    put_clean(out, jstr(ev, "script") != NULL ? jstr(ev, "script") : "?");
    fputs(json_is_true(json_object_get(ev, "sandboxed")) ? " sandboxed"
          : json_is_true(json_object_get(ev, "isolated")) ? " isolated" : " in-process", out);
    if (jint(ev, "signal", &n) && n > 0) {
        fprintf(out, " ended by signal %lld", n);
    } else if (jint(ev, "exit_code", &n)) {
        fprintf(out, " exited %lld", n);
    }
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

/* One readable line per event (the format of `tail`, docs/protocol.md). */
static void print_event(const struct ctl *ctl, FILE *out, json_t *ev)
{
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

/* ---- connection ---- */

static int ctl_connect(struct ctl *ctl)
{
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

static int write_all(int fd, const char *buf, size_t len)
{
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

/* Sends {"id": 1, "cmd": cmd, ...args}. Returns 0 or an exit status. */
static int ctl_send(struct ctl *ctl, const char *cmd, json_t *args)
{
    size_t len;
    char *line = protocol_encode_request(REQUEST_ID, cmd, args, &len);
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

/*
 * The next line from the daemon, without its "\n" (NUL-terminated in place; valid until
 * the next call). deadline: CLOCK_MONOTONIC ms, or -1 to wait for ever. Returns 1 with a
 * line, 0 at end of stream, -ETIMEDOUT, -EMSGSIZE (line over RESPONSE_MAX), -EINTR (a
 * stop signal during tail), or another -errno of read.
 */
static int read_line(struct ctl *ctl, int64_t deadline, char **line, size_t *len)
{
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

/* Prints why no line came and returns the exit status for it. */
static int read_failed(struct ctl *ctl, int r, const char *waiting_for)
{
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

/* Parses one line from the daemon; NULL (after a message) when it is not an object. */
static json_t *parse_line(const char *line, size_t len)
{
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

static bool is_event(json_t *msg)
{
    return json_is_string(json_object_get(msg, "event")) && json_object_get(msg, "ok") == NULL;
}

/* Our response: our id, or a null id on an error (a request the daemon could not read). */
static bool is_our_response(json_t *msg)
{
    json_t *id = json_object_get(msg, "id"), *ok = json_object_get(msg, "ok");

    if (!json_is_boolean(ok))
        return false;
    if (json_is_integer(id))
        return json_integer_value(id) == REQUEST_ID;
    return json_is_null(id) && json_is_false(ok);
}

/*
 * Waits for the response to our request, skipping events that come before it. Returns
 * EXIT_OK with *resp (owned) and, when raw is not NULL, a malloc'd copy of the line in
 * *raw; WAIT_INTERRUPTED on a stop signal during tail; or an exit status after a message.
 */
static int ctl_wait_response(struct ctl *ctl, json_t **resp, char **raw)
{
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

/* Prints "pyhotctl: CODE: MESSAGE" and the traceback, if any. Returns EXIT_FAILED. */
static int report_error(json_t *resp)
{
    json_t *error = json_object_get(resp, "error");
    const char *code = jstr(error, "code"), *message = jstr(error, "message");
    json_t *tb = json_object_get(error, "traceback");

    fflush(stdout);
    fputs("pyhotctl: ", stderr);
    put_clean(stderr, code != NULL ? code : "error");
    fputs(": ", stderr);
    put_clean(stderr, message != NULL ? message : "(no message)");
    fputc('\n', stderr);
    if (json_is_string(tb) && json_string_length(tb) > 0) {
        put_exact(stderr, tb);
        if (!ends_with_newline(tb))
            fputc('\n', stderr);
    }
    return EXIT_FAILED;
}

/*
 * Connects, sends cmd with args and waits for the response. Returns EXIT_OK with *resp
 * when the daemon answered ok:true. Otherwise returns the exit status: with --json the
 * raw line of an ok:false response has been printed; without, the error.
 * With keep_error, an ok:false response is handed back too, as EXIT_FAILED with *resp.
 */
static int ctl_call(struct ctl *ctl, const char *cmd, json_t *args, json_t **resp,
                    bool keep_error)
{
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

/* ---- commands ---- */

static int cmd_ping(struct ctl *ctl, int argc, char **argv)
{
    double t0 = now_sec();
    json_t *resp, *result;
    long long pid;
    int r;

    r = ctl_call(ctl, "ping", NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    printf("pong (pyhotd ");
    put_value(stdout, json_object_get(result, "version"));
    if (jint(result, "pid", &pid))
        printf(", pid %lld", pid);
    printf(", %.2f ms)\n", (now_sec() - t0) * 1000.0);
    json_decref(resp);
    return EXIT_OK;
}

/* "1d 02h 03m", "2h 03m 04s", "3m 04s", "5.2 s". */
static void put_duration(FILE *out, double ms)
{
    long long s = (long long)(ms / 1000.0);

    if (ms < 60000.0)
        fprintf(out, "%.1f s", ms / 1000.0);
    else if (s < 3600)
        fprintf(out, "%lldm %02llds", s / 60, s % 60);
    else if (s < 86400)
        fprintf(out, "%lldh %02lldm %02llds", s / 3600, s / 60 % 60, s % 60);
    else
        fprintf(out, "%lldd %02lldh %02lldm", s / 86400, s / 3600 % 24, s / 60 % 60);
}

#define STATUS_KEY_WIDTH 16

static void status_key(const char *key)
{
    printf("%-*s", STATUS_KEY_WIDTH, key);
}

static void status_count(json_t *result, const char *key, const char *label)
{
    status_key(label);
    put_value(stdout, json_object_get(result, key));
    fputc('\n', stdout);
}

static int cmd_status(struct ctl *ctl, int argc, char **argv)
{
    json_t *resp, *result, *roots, *root, *reloads, *last, *job;
    long long n;
    double ms;
    size_t i;
    int r;

    r = ctl_call(ctl, "status", NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");

    status_count(result, "version", "version:");
    status_count(result, "pid", "pid:");
    status_key("uptime:");
    if (jnum(result, "uptime_ms", &ms))
        put_duration(stdout, ms);
    else
        fputc('-', stdout);
    fputc('\n', stdout);
    status_count(result, "python", "python:");
    status_key("socket:");
    put_clean(stdout, jstr(result, "socket") != NULL ? jstr(result, "socket")
                                                     : ctl->socket_path);
    fputc('\n', stdout);
    status_key("settle:");
    if (jint(result, "settle_ms", &n))
        printf("%lld ms\n", n);
    else
        printf("-\n");

    roots = json_object_get(result, "roots");
    status_key("roots:");
    if (json_array_size(roots) == 0)
        printf("none\n");
    json_array_foreach(roots, i, root) {
        if (i > 0)
            status_key("");
        if (json_is_object(root)) {
            put_value(stdout, json_object_get(root, "path"));
            if (jstr(root, "state") != NULL) {
                fputs(" (", stdout);
                put_clean(stdout, jstr(root, "state"));
                fputc(')', stdout);
            }
        } else {
            put_value(stdout, root);
        }
        fputc('\n', stdout);
    }

    status_count(result, "watched_dirs", "watched dirs:");
    status_count(result, "modules_loaded", "modules loaded:");

    reloads = json_object_get(result, "reloads");
    status_key("reloads:");
    if (json_is_object(reloads)) {
        static const char *const kinds[][2] = {
            { "ok", "ok" }, { "error", "error" }, { "rolled_back", "rolled back" },
            { "skipped", "skipped" },
        };

        for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            printf("%s", i > 0 ? ", " : "");
            put_value(stdout, json_object_get(reloads, kinds[i][0]));
            printf(" %s", kinds[i][1]);
        }
        fputc('\n', stdout);
    } else {
        printf("-\n");
    }
    status_count(result, "batches", "batches:");

    last = json_object_get(result, "last_batch");
    status_key("last batch:");
    if (json_is_object(last)) {
        if (jint(last, "batch", &n))
            printf("#%lld ", n);
        put_result(ctl, stdout, jstr(last, "result"));
        fputc(' ', stdout);
        put_list(stdout, json_object_get(last, "modules"));
        put_ms(stdout, " ", last, "duration_ms");
        put_ms(stdout, ", latency ", last, "latency_ms");
        if (jstr(last, "time") != NULL) {
            fputs(" at ", stdout);
            put_time(stdout, jstr(last, "time"));
        }
        fputc('\n', stdout);
    } else {
        printf("none\n");
    }

    job = json_object_get(result, "job");
    status_key("job:");
    if (json_is_object(job)) {
        put_value(stdout, json_object_get(job, "kind"));
        if (jint(job, "id", &n))
            printf(" #%lld", n);
        if (jnum(job, "age_ms", &ms)) {
            fputs(", running for ", stdout);
            put_duration(stdout, ms);
        }
        fputc('\n', stdout);
    } else {
        printf("idle\n");
    }
    status_count(result, "queued_jobs", "queued jobs:");
    status_key("runs:");
    put_value(stdout, json_object_get(result, "runs"));
    printf(" running");
    {
        json_t *ended = json_object_get(result, "runs_ended");
        static const char *const kinds[][2] = {
            { "total", "ended" }, { "isolated", "isolated" }, { "sandboxed", "sandboxed" },
            { "failed", "failed" }, { "timed_out", "timed out" },
        };

        for (i = 0; json_is_object(ended) && i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            printf("%s", i == 0 ? ", " : i == 1 ? " (" : ", ");
            put_value(stdout, json_object_get(ended, kinds[i][0]));
            printf(" %s", kinds[i][1]);
        }
        printf("%s\n", json_is_object(ended) ? ")" : "");
    }
    status_count(result, "subscribers", "subscribers:");
    json_decref(resp);
    return EXIT_OK;
}

struct module_row {
    const char *name;
    const char *path;
};

static int module_row_cmp(const void *a, const void *b)
{
    return strcmp(((const struct module_row *)a)->name, ((const struct module_row *)b)->name);
}

static int cmd_modules(struct ctl *ctl, int argc, char **argv)
{
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
static void print_reload_outcome(const struct ctl *ctl, json_t *obj)
{
    json_t *ev;
    size_t i;

    json_array_foreach(json_object_get(obj, "reloads"), i, ev) {
        if (json_is_object(ev))
            print_event(ctl, stdout, ev);
    }
    if (json_is_object(json_object_get(obj, "batch")))
        print_event(ctl, stdout, json_object_get(obj, "batch"));
}

static bool batch_failed(json_t *batch)
{
    const char *result = jstr(batch, "result");

    return result != NULL && (strcmp(result, "error") == 0 ||
                              strcmp(result, "rolled_back") == 0);
}

/* A relative path to an existing file becomes absolute; anything else is a module name
 * (or a path the daemon resolves) and goes as it is. */
static json_t *reload_target(const char *arg)
{
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

static int cmd_reload(struct ctl *ctl, int argc, char **argv)
{
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

/* A signal handler only sets a flag; read_line sees it. */
static void on_stop_signal(int sig)
{
    got_stop_signal = 1;
}

/*
 * The arguments of subscribe and history from -e, -m and -n: {"events": [...], "modules":
 * [...], count_key: N}, each only when given. NULL after a message (out of memory).
 */
static json_t *filter_args(const struct ctl *ctl, const char *count_key)
{
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

/* Sends subscribe and prints events until the daemon closes or a stop signal. */
static int cmd_tail(struct ctl *ctl, int argc, char **argv)
{
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


static int cmd_hello(struct ctl *ctl, int argc, char **argv)
{
    json_t *resp, *result;
    long long n;
    int r;

    r = ctl_call(ctl, "hello", NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    status_count(result, "version", "pyhotd:");
    status_key("protocol:");
    if (jint(result, "protocol", &n))
        printf("%lld%s\n", n, n == PROTOCOL_VERSION ? "" : " (pyhotctl speaks another version)");
    else
        printf("-\n");
    status_count(result, "python", "python:");
    status_count(result, "pid", "pid:");
    status_key("commands:");
    {
        json_t *list = json_object_get(result, "commands"), *item;
        size_t i;

        json_array_foreach(list, i, item) {
            if (i > 0)
                fputs(", ", stdout);
            put_value(stdout, item);
        }
        fputc('\n', stdout);
    }
    json_decref(resp);
    return EXIT_OK;
}

/* DIR as an absolute path: resolved against the current directory when it exists here,
 * else made absolute as written (the daemon says what is wrong with it). */
static json_t *dir_argument(const char *arg)
{
    char *abs = realpath(arg, NULL), cwd[PATH_MAX];
    json_t *v;

    if (abs != NULL) {
        v = json_string(abs);
        free(abs);
        return v;
    }
    if (arg[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
        return json_string(arg);
    abs = malloc(strlen(cwd) + strlen(arg) + 2);
    if (abs == NULL)
        return NULL;
    sprintf(abs, "%s/%s", cwd, arg);
    v = json_string(abs);
    free(abs);
    return v;
}

static int cmd_watch_or_unwatch(struct ctl *ctl, const char *cmd, const char *arg)
{
    json_t *path = dir_argument(arg), *args, *resp, *result, *errors, *error;
    long long n;
    size_t i;
    int r;

    if (path == NULL) {
        fail("DIR is not valid UTF-8");
        return EXIT_USAGE;
    }
    args = json_pack("{s:o}", "path", path);
    if (args == NULL) {
        fail("out of memory");
        return EXIT_USAGE;
    }
    r = ctl_call(ctl, cmd, args, &resp, false);
    json_decref(args);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    fputs(strcmp(cmd, "watch") == 0 ? "watching " : "no longer watching ", stdout);
    put_value(stdout, json_object_get(result, "path"));
    if (strcmp(cmd, "watch") == 0) {
        size_t k = json_array_size(json_object_get(result, "imported"));

        printf(" (%zu module%s imported", k, k == 1 ? "" : "s");
    } else {
        fputs(" (its modules stay loaded", stdout);
    }
    if (jint(result, "watched_dirs", &n))
        printf(", %lld directories watched in all", n);
    fputs(")\n", stdout);
    errors = json_object_get(result, "errors");
    json_array_foreach(errors, i, error) {
        fputs("pyhotctl: import of ", stderr);
        put_value(stderr, json_object_get(error, "module"));
        fputs(" failed:", stderr);
        put_error_summary(stderr, error);
        fputc('\n', stderr);
    }
    json_decref(resp);
    return EXIT_OK;
}

static int cmd_watch(struct ctl *ctl, int argc, char **argv)
{
    return cmd_watch_or_unwatch(ctl, "watch", argv[0]);
}

static int cmd_unwatch(struct ctl *ctl, int argc, char **argv)
{
    return cmd_watch_or_unwatch(ctl, "unwatch", argv[0]);
}

/* pause and resume: the result's members, or a plain confirmation. */
static int cmd_pause_or_resume(struct ctl *ctl, const char *cmd)
{
    json_t *resp, *result;
    int r;

    r = ctl_call(ctl, cmd, NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    printf("pyhotd: reloading %s", strcmp(cmd, "pause") == 0 ? "paused" : "resumed");
    if (json_is_object(result) && json_object_size(result) > 0) {
        fputc(' ', stdout);
        put_value(stdout, result);
    }
    fputc('\n', stdout);
    json_decref(resp);
    return EXIT_OK;
}

static int cmd_pause(struct ctl *ctl, int argc, char **argv)
{
    return cmd_pause_or_resume(ctl, "pause");
}

static int cmd_resume(struct ctl *ctl, int argc, char **argv)
{
    return cmd_pause_or_resume(ctl, "resume");
}

/* A count operand (history N): a whole number >= 0. */
static int parse_count(const char *arg, long long *out)
{
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

static int cmd_history(struct ctl *ctl, int argc, char **argv)
{
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

/* A duration in ms, short: "0.052", "1.24", "12.3", "1234". */
static void put_short_ms(FILE *out, double ms)
{
    if (ms < 0.1)
        fprintf(out, "%.3f", ms);
    else if (ms < 10)
        fprintf(out, "%.2f", ms);
    else if (ms < 100)
        fprintf(out, "%.1f", ms);
    else
        fprintf(out, "%.0f", ms);
}

/* A bar of width w (in eighths of a column) of block characters, or '#' without UTF-8. */
static void put_bar(const struct ctl *ctl, long eighths)
{
    static const char *const partial[] = { "", "\u258f", "\u258e", "\u258d", "\u258c",
                                           "\u258b", "\u258a", "\u2589" };

    if (ctl->color)
        fputs(COLOR_CYAN, stdout);
    if (ctl->utf8) {
        for (long i = 0; i < eighths / 8; i++)
            fputs("\u2588", stdout);
        fputs(partial[eighths % 8], stdout);
    } else {
        for (long i = 0; i < (eighths + 4) / 8; i++)
            fputc('#', stdout);
    }
    if (ctl->color)
        fputs(COLOR_RESET, stdout);
}

/*
 * A histogram of the stats command: its summary line, then its buckets merged into at
 * most BAR_ROWS rows, each "FROM - TO ms  BAR COUNT", the longest bar BAR_WIDTH columns.
 */
static void print_histogram(const struct ctl *ctl, const char *title, const char *unit_name,
                            json_t *h)
{
    json_t *buckets = json_object_get(h, "buckets"), *b;
    size_t n = json_array_size(buckets), group, rows, i, j;
    long long count = 0, row_count[BAR_ROWS], max = 0;
    double from[BAR_ROWS], to[BAR_ROWS], v;
    char a[BAR_ROWS][24], z[BAR_ROWS][24];
    int wa = 0, wz = 0;

    if (ctl->color)
        fputs(COLOR_BOLD, stdout);
    fputs(title, stdout);
    if (ctl->color)
        fputs(COLOR_RESET, stdout);
    if (!jint(h, "count", &count) || count == 0) {
        printf(": no %s yet\n", unit_name);
        return;
    }
    printf(": %lld %s", count, unit_name);
    static const char *const keys[] = { "min", "p50", "p90", "p99", "max" };
    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (jnum(h, keys[i], &v)) {
            printf(", %s ", keys[i]);
            put_short_ms(stdout, v);
        }
    }
    printf(" ms\n");

    group = (n + BAR_ROWS - 1) / BAR_ROWS;
    if (group == 0)
        group = 1;
    rows = (n + group - 1) / group;
    for (i = 0; i < rows; i++) {
        row_count[i] = 0;
        from[i] = to[i] = 0;
        for (j = i * group; j < n && j < (i + 1) * group; j++) {
            long long c = 0;

            b = json_array_get(buckets, j);
            if (j == i * group)
                jnum(b, "from", &from[i]);
            jnum(b, "to", &to[i]);
            jint(b, "count", &c);
            row_count[i] += c;
        }
        if (row_count[i] > max)
            max = row_count[i];
    }
    for (i = 0; i < rows; i++) {
        int w = snprintf(a[i], sizeof(a[i]), "%.3g", from[i]);

        if (w > wa)
            wa = w;
        w = snprintf(z[i], sizeof(z[i]), "%.3g", to[i]);
        if (w > wz)
            wz = w;
    }
    for (i = 0; i < rows; i++) {
        printf("  %*s - %-*s ms  ", wa, a[i], wz, z[i]);
        put_bar(ctl, max > 0 ? (long)((row_count[i] * BAR_WIDTH * 8 + max / 2) / max) : 0);
        printf("%s%lld\n", row_count[i] > 0 ? " " : "", row_count[i]);
    }
}

static void stats_counts(json_t *obj, const char *const (*kinds)[2], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        printf("%s", i > 0 ? ", " : "");
        put_value(stdout, json_object_get(obj, kinds[i][0]));
        printf(" %s", kinds[i][1]);
    }
    fputc('\n', stdout);
}

static int cmd_stats(struct ctl *ctl, int argc, char **argv)
{
    static const char *const results[][2] = {
        { "ok", "ok" }, { "error", "error" }, { "rolled_back", "rolled back" },
        { "skipped", "skipped" },
    };
    static const char *const conns[][2] = {
        { "open", "open" }, { "subscribers", "subscribed" }, { "accepted", "accepted" },
    };
    static const char *const refused[][2] = {
        { "refused_permission", "other users" }, { "refused_too_many", "over max_clients" },
    };
    static const char *const dropped[][2] = {
        { "dropped_overflow", "slow readers" }, { "dropped_timeout", "unfinished requests" },
        { "dropped_too_large", "oversized requests" },
    };
    json_t *resp, *result, *c;
    double ms;
    int r;

    r = ctl_call(ctl, "stats", NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    status_key("uptime:");
    if (jnum(result, "uptime_ms", &ms))
        put_duration(stdout, ms);
    fputc('\n', stdout);
    status_key("reloads:");
    stats_counts(json_object_get(result, "reloads"), results, 4);
    status_key("batches:");
    put_value(stdout, json_object_get(json_object_get(result, "batches"), "total"));
    fputs(": ", stdout);
    stats_counts(json_object_get(result, "batches"), results, 4);
    status_count(result, "events", "events:");
    status_key("responses:");
    put_value(stdout, json_object_get(json_object_get(result, "responses"), "total"));
    fputs(", ", stdout);
    put_value(stdout, json_object_get(json_object_get(result, "responses"), "failed"));
    fputs(" with an error\n", stdout);
    c = json_object_get(result, "connections");
    status_key("connections:");
    stats_counts(c, conns, 3);
    status_key("refused:");
    stats_counts(c, refused, 2);
    status_key("dropped:");
    stats_counts(c, dropped, 3);
    status_key("accept pauses:");
    put_value(stdout, json_object_get(c, "accept_pauses"));
    if (json_is_true(json_object_get(c, "accept_paused")))
        fputs(" (paused now: out of file descriptors)", stdout);
    fputc('\n', stdout);
    fputc('\n', stdout);
    print_histogram(ctl, "reload duration", "module reloads", json_object_get(result, "reload_ms"));
    fputc('\n', stdout);
    print_histogram(ctl, "save -> reloaded latency", "batches of file changes",
                    json_object_get(result, "latency_ms"));
    json_decref(resp);
    return EXIT_OK;
}

/* All of stdin, up to PROTOCOL_MAX_LINE bytes. NULL after a message. */
static char *read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap), *p;
    ssize_t r;

    for (;;) {
        if (buf == NULL) {
            fail("out of memory");
            return NULL;
        }
        if (n > PROTOCOL_MAX_LINE) {
            fail("code on stdin exceeds %d bytes", PROTOCOL_MAX_LINE);
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

static void print_value_line(json_t *value, json_t *captured_stdout)
{
    /* On its own line, even after output that did not end one. */
    if (json_string_length(captured_stdout) > 0 && !ends_with_newline(captured_stdout))
        fputc('\n', stdout);
    if (json_is_string(value))
        put_exact(stdout, value);
    else
        put_value(stdout, value);
    fputc('\n', stdout);
}

static int cmd_exec(struct ctl *ctl, int argc, char **argv)
{
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

/* ---- run ---- */

static int append_arg(json_t **list, const char *arg, const char *what);

/* "NAME=JSON" of --set into globals. */
static int add_global(json_t *globals, const char *arg)
{
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

/* A non-negative number of seconds in ms (0 = none). */
static int parse_seconds(const char *opt, const char *arg, long long *ms)
{
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

static int parse_whole(const char *opt, const char *arg, long long max, long long *out)
{
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

/* The value of option opt at argv[*i] ("--opt VALUE" or "--opt=VALUE"); NULL after a
 * message when it is missing. */
static const char *option_value(int argc, char **argv, int *i, const char *opt)
{
    size_t n = strlen(opt);

    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (*i + 1 >= argc) {
        fail("option %s needs an argument", opt);
        return NULL;
    }
    return argv[++*i];
}

static bool is_option(const char *arg, const char *opt)
{
    size_t n = strlen(opt);

    return strncmp(arg, opt, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* The exit status of a run's result: its exit code, 124 when it timed out, 128 + N when
 * signal N ended it (as a shell reports it). */
static int run_status(json_t *result)
{
    long long v;

    if (json_is_true(json_object_get(result, "timed_out")))
        return EXIT_TIMEOUT;
    if (jint(result, "signal", &v) && v > 0)
        return 128 + (int)v;
    if (jint(result, "exit_code", &v))
        return (int)(v & 0xff);
    return EXIT_FAILED;
}

static int cmd_run(struct ctl *ctl, int argc, char **argv)
{
    json_t *args = json_object(), *globals = json_object(), *list = json_array();
    const char *module = NULL, *script = NULL, *cwd = NULL, *v;
    bool isolate = false, sandbox = false;
    long long timeout_ms = 0, memory_mb = 0, cpu_s = 0, pids = -1;
    int i, r = EXIT_USAGE;

    for (i = 0; i < argc && script == NULL && module == NULL; i++) {
        const char *a = argv[i];

        if (strcmp(a, "--") == 0) {
            if (i + 1 < argc)
                script = argv[++i];
            break;
        } else if (strcmp(a, "--isolate") == 0) {
            isolate = true;
        } else if (strcmp(a, "--sandbox") == 0) {
            sandbox = isolate = true;
        } else if (is_option(a, "--pids")) {
            if ((v = option_value(argc, argv, &i, "--pids")) == NULL ||
                parse_whole("--pids", v, 65536, &pids) < 0)
                goto out;
        } else if (is_option(a, "--timeout")) {
            if ((v = option_value(argc, argv, &i, "--timeout")) == NULL ||
                parse_seconds("--timeout", v, &timeout_ms) < 0)
                goto out;
        } else if (is_option(a, "--memory")) {
            if ((v = option_value(argc, argv, &i, "--memory")) == NULL ||
                parse_whole("--memory", v, 1 << 24, &memory_mb) < 0)
                goto out;
        } else if (is_option(a, "--cpu")) {
            if ((v = option_value(argc, argv, &i, "--cpu")) == NULL ||
                parse_whole("--cpu", v, INT32_MAX, &cpu_s) < 0)
                goto out;
        } else if (is_option(a, "--cwd")) {
            if ((cwd = option_value(argc, argv, &i, "--cwd")) == NULL)
                goto out;
        } else if (is_option(a, "--set")) {
            if ((v = option_value(argc, argv, &i, "--set")) == NULL || add_global(globals, v) < 0)
                goto out;
        } else if (strcmp(a, "-m") == 0) {
            if (i + 1 >= argc) {
                fail("-m needs a module name");
                goto out;
            }
            module = argv[++i];
        } else if (strncmp(a, "-m", 2) == 0) {
            module = a + 2;
        } else if (a[0] == '-' && a[1] != '\0') {
            fail("run: unknown option %s", a);
            goto out;
        } else {
            script = a;
        }
    }
    if (script == NULL && module == NULL) {
        fail("run: missing SCRIPT or -m MODULE");
        goto out;
    }
    for (; i < argc; i++) {
        if (append_arg(&list, argv[i], "argument") < 0)
            goto out;
    }
    if (script != NULL) {
        char *real = realpath(script, NULL);
        char buf[PATH_MAX];

        if (real == NULL && script[0] != '/' && getcwd(buf, sizeof(buf)) != NULL) {
            /* Not there: the daemon says so, about the path the user meant. */
            size_t n = strlen(buf);

            real = malloc(n + strlen(script) + 2);
            if (real != NULL)
                sprintf(real, "%s/%s", buf, script);
        }
        json_object_set_new(args, "path", json_string(real != NULL ? real : script));
        free(real);
    } else {
        json_object_set_new(args, "module", json_string(module));
    }
    if (isolate && cwd == NULL) {
        /* An isolated run starts where pyhotctl runs, as python3 would. */
        char buf[PATH_MAX];

        if (getcwd(buf, sizeof(buf)) != NULL)
            json_object_set_new(args, "cwd", json_string(buf));
    } else if (cwd != NULL) {
        char *real = realpath(cwd, NULL);

        json_object_set_new(args, "cwd", json_string(real != NULL ? real : cwd));
        free(real);
    }
    json_object_set(args, "argv", list);
    if (json_object_size(globals) > 0)
        json_object_set(args, "globals", globals);
    if (timeout_ms > 0)
        json_object_set_new(args, "timeout_ms", json_integer(timeout_ms));
    if (isolate)
        json_object_set_new(args, "isolate", json_true());
    if (sandbox)
        json_object_set_new(args, "sandbox", json_true());
    if (pids >= 0)
        json_object_set_new(args, "pids", json_integer(pids));
    if (memory_mb > 0)
        json_object_set_new(args, "memory_mb", json_integer(memory_mb));
    if (cpu_s > 0)
        json_object_set_new(args, "cpu_s", json_integer(cpu_s / 1));

    if (ctl_connect(ctl) < 0)
        goto out;
    r = ctl_send(ctl, "run", args);
    if (r != EXIT_OK)
        goto out;
    for (;;) {
        char *line;
        size_t len;
        json_t *msg, *id;
        const char *stream;

        r = read_line(ctl, -1, &line, &len);
        if (r <= 0) {
            r = read_failed(ctl, r, "the run ended");
            goto out;
        }
        if (len == 0)
            continue;
        msg = parse_line(line, len);
        if (msg == NULL) {
            r = EXIT_USAGE;
            goto out;
        }
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
            } else {
                if (!ctl->json)
                    report_error(msg);
                r = EXIT_FAILED;
            }
            json_decref(msg);
            goto out;
        }
        json_decref(msg);
    }
out:
    json_decref(args);
    json_decref(globals);
    json_decref(list);
    return r;
}

/* ---- repl ---- */

static char *history_path(void)
{
    const char *home = getenv("HOME");
    char *path;

    if (home == NULL || home[0] == '\0')
        return NULL;
    path = malloc(strlen(home) + sizeof("/.pyhot_history"));
    if (path != NULL)
        sprintf(path, "%s/.pyhot_history", home);
    return path;
}

/*
 * libedit, loaded by repl only (dlopen): linking it costs every pyhotctl invocation ~0.4 ms
 * of dynamic linking (measured with hyperfine), which `run` cannot afford
 * (docs/benchmarks.md). Without it, repl reads plain lines.
 */
#ifndef PYHOT_LIBEDIT_SONAME
#define PYHOT_LIBEDIT_SONAME "libedit.so.2"
#endif

struct editline {
    char *(*readline)(const char *prompt);
    int (*add_history)(const char *line);
    int (*read_history)(const char *path);
    int (*write_history)(const char *path);
    void (*using_history)(void);
};

static bool editline_load(struct editline *el)
{
    void *h = dlopen(PYHOT_LIBEDIT_SONAME, RTLD_NOW | RTLD_LOCAL);

    if (h == NULL)
        return false;
    *(void **)&el->readline = dlsym(h, "readline");
    *(void **)&el->add_history = dlsym(h, "add_history");
    *(void **)&el->read_history = dlsym(h, "read_history");
    *(void **)&el->write_history = dlsym(h, "write_history");
    *(void **)&el->using_history = dlsym(h, "using_history");
    return el->readline != NULL && el->add_history != NULL && el->read_history != NULL &&
           el->write_history != NULL && el->using_history != NULL;
}

/* A line without its newline (malloc'd), or NULL at end of input: libedit's, or a plain
 * read when libedit is missing. */
static char *repl_read(const struct editline *el, const char *prompt)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    if (el != NULL)
        return el->readline(prompt);
    fputs(prompt, stdout);
    fflush(stdout);
    n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = '\0';
    return line;
}

static int cmd_repl(struct ctl *ctl, int argc, char **argv)
{
    struct editline editline_api, *el = editline_load(&editline_api) ? &editline_api : NULL;
    char *source = NULL, *hist = history_path();
    size_t source_len = 0;
    int r;

    (void)argc;
    (void)argv;
    if (ctl_connect(ctl) < 0) {
        free(hist);
        return EXIT_USAGE;
    }
    if (el == NULL) {
        free(hist);
        hist = NULL;
    } else {
        el->using_history();
        if (hist != NULL)
            el->read_history(hist);
    }
    if (isatty(STDIN_FILENO))
        printf("pyhotd's interpreter; Ctrl-D leaves.\n");
    for (;;) {
        char *line = repl_read(el, source == NULL ? ">>> " : "... ");
        json_t *args, *resp, *result;
        char *grown;
        size_t n;

        if (line == NULL) {
            fputc('\n', stdout);
            r = EXIT_OK;
            break;
        }
        if (line[0] != '\0' && el != NULL)
            el->add_history(line);
        n = strlen(line);
        grown = realloc(source, source_len + n + 2);
        if (grown == NULL) {
            free(line);
            fail("out of memory");
            r = EXIT_USAGE;
            break;
        }
        source = grown;
        if (source_len > 0)
            source[source_len++] = '\n';
        memcpy(source + source_len, line, n + 1);
        source_len += n;
        free(line);

        args = json_pack("{s:s%}", "source", source, source_len);
        if (args == NULL) {
            fail("the input is not valid UTF-8");
            free(source);
            source = NULL;
            source_len = 0;
            continue;
        }
        r = ctl_send(ctl, "repl", args);
        json_decref(args);
        if (r != EXIT_OK)
            break;
        r = ctl_wait_response(ctl, &resp, NULL);
        if (r != EXIT_OK)
            break;
        if (!json_is_true(json_object_get(resp, "ok"))) {
            report_error(resp);
        } else {
            result = json_object_get(resp, "result");
            if (json_is_true(json_object_get(result, "incomplete"))) {
                json_decref(resp);
                continue;
            }
            put_exact(stdout, json_object_get(result, "stdout"));
            fflush(stdout);
            put_exact(stderr, json_object_get(result, "stderr"));
            fflush(stderr);
        }
        json_decref(resp);
        free(source);
        source = NULL;
        source_len = 0;
    }
    if (hist != NULL) {
        el->write_history(hist);
        free(hist);
    }
    free(source);
    return r;
}

static int cmd_stop(struct ctl *ctl, int argc, char **argv)
{
    json_t *resp;
    int r;

    r = ctl_call(ctl, "shutdown", NULL, &resp, false);
    if (r == EXIT_OK && !ctl->json)
        printf("pyhotd stopping\n");
    json_decref(resp);
    return r;
}

static const struct ctl_command commands[] = {
    {
        "hello", "", "pyhotd's version, protocol, Python, pid and commands",
        "Prints pyhotd's version, the protocol version it speaks, the version of its\n"
        "embedded Python, its pid and the commands it knows.\n",
        0, 0, false, cmd_hello, 0,
    },
    {
        "ping", "", "check that pyhotd answers",
        "Sends ping and prints \"pong (pyhotd VERSION, pid N, R ms)\", R being the round\n"
        "trip. Exit status 2 when no daemon answers on the socket.\n",
        0, 0, false, cmd_ping, 0,
    },
    {
        "status", "", "summary of the daemon's state",
        "Prints the daemon's version, pid, uptime, Python version, socket, settle delay,\n"
        "watch roots and their state, watched directories, loaded modules, reload\n"
        "counters, batches, the last batch, the running job (or idle), queued jobs and\n"
        "subscribers.\n",
        0, 0, false, cmd_status, 0,
    },
    {
        "stats", "", "counters and latency histograms",
        "Prints counters (reloads and batches by result, events, responses, connections\n"
        "accepted, refused and dropped) and two histograms drawn as bars: the duration of\n"
        "each module reload, and the latency from a file save to the end of its reload\n"
        "(batches of file changes that applied), each with min, p50, p90, p99 and max.\n"
        "Bars are block characters in a UTF-8 locale, '#' otherwise; coloured on a\n"
        "terminal unless NO_COLOR is set.\n",
        0, 0, false, cmd_stats, 0,
    },
    {
        "modules", "[PATTERN]", "loaded modules and their files",
        "Prints a table of the loaded modules, NAME and PATH, sorted by name (\"-\" for a\n"
        "module without a file). PATTERN is an fnmatch(3) glob on the name, e.g. 'app.*'\n"
        "(quote it from the shell).\n",
        0, 1, false, cmd_modules, 0,
    },
    {
        "reload", "TARGET...", "reload modules or files now, as one batch",
        "Reloads the targets as one batch, as if their files had changed: the modules,\n"
        "then the modules that import them. A TARGET is a module name (app.handlers) or a\n"
        "file path; a relative path to an existing file is made absolute first. Prints\n"
        "one line per reloaded module and one for the batch, as tail does. Exit status 1\n"
        "when the batch failed (the old code keeps running) or a target is unknown.\n",
        1, -1, false, cmd_reload, 0,
    },
    {
        "watch", "DIR", "watch DIR as a new root",
        "Watches DIR (made absolute) recursively as a new root: it goes first on sys.path,\n"
        "its modules are imported (unless pyhotd runs with --no-import) and reloaded on\n"
        "change. Import errors are printed on stderr; the watch stays. Exit status 1 when\n"
        "DIR is missing, is not a directory, is (or is inside, or holds) a root already, or\n"
        "cannot be watched.\n",
        1, 1, false, cmd_watch, 0,
    },
    {
        "unwatch", "DIR", "stop watching the root DIR",
        "Stops watching the root DIR. Its modules stay loaded but are no longer reloaded,\n"
        "and DIR leaves sys.path. Exit status 1 when DIR is not a root.\n",
        1, 1, false, cmd_unwatch, 0,
    },
    {
        "pause", "", "hold reloads until resume",
        "Asks pyhotd to hold batches: changes are collected but nothing is reloaded until\n"
        "resume, which reloads everything that changed meanwhile as one batch.\n",
        0, 0, false, cmd_pause, 0,
    },
    {
        "resume", "", "reload what changed while paused, and go on",
        "Ends a pause: what changed meanwhile is reloaded as one batch.\n",
        0, 0, false, cmd_resume, 0,
    },
    {
        "tail", "[-n N] [-e TYPE]... [-m GLOB]...", "follow events until Ctrl-C or pyhotd stops",
        "Subscribes to events and prints one line per event: reload, batch, started,\n"
        "stopping, watch_error, import_error, startup_error, and any other by name with\n"
        "its members as JSON. Times are local. Results are coloured when stdout is a\n"
        "terminal and NO_COLOR is not set. With --json each event is printed as the raw\n"
        "JSON line.\n"
        "\n"
        "  -n, --lines N       first print the last N past events (kept: the last 1000)\n"
        "  -e, --event TYPE    only events of TYPE (reload, batch, ...); repeatable\n"
        "  -m, --module GLOB   only events of modules matching GLOB (fnmatch(3), e.g.\n"
        "                      'app.*'); events that name no module still show; repeatable\n"
        "\n"
        "Ends with status 0 on Ctrl-C (SIGINT, SIGTERM) or when pyhotd stops, 2 when the\n"
        "connection is lost (or pyhotd dropped it for reading too slowly).\n",
        0, 0, false, cmd_tail, CTL_OPT_COUNT | CTL_OPT_FILTER,
    },
    {
        "history", "[N] [-e TYPE]... [-m GLOB]...", "the last N events (default 100)",
        "Prints the last N events pyhotd kept (it keeps 1000), oldest first, as tail\n"
        "does; N may also be given as -n N. -e and -m filter them as in tail (N counts\n"
        "the events that pass).\n",
        0, 1, false, cmd_history, CTL_OPT_COUNT | CTL_OPT_FILTER,
    },
    {
        "exec", "CODE", "run Python code in the daemon's interpreter",
        "Runs CODE (\"-\" reads it from stdin) in pyhotd's warm interpreter. Prints what\n"
        "the code wrote to stdout and stderr, exactly, then the value of an expression on\n"
        "its own line (nothing for statements). When the code raises, prints its output,\n"
        "then the traceback on stderr, and exits with status 1.\n"
        "Use `pyhotctl exec -- CODE` when CODE starts with '-'.\n",
        1, 1, true, cmd_exec, 0,
    },
    {
        "run", "[OPTION]... SCRIPT|-m MODULE [ARGS...]",
        "run a script in the warm interpreter, as python3 would",
        "Runs SCRIPT (a file, a directory with __main__.py, or a zip app) or -m MODULE as\n"
        "__main__ in pyhotd's warm interpreter, with sys.argv = [SCRIPT, ARGS...]. Its\n"
        "stdout and stderr stream here as it writes them; pyhotctl exits with its exit\n"
        "code.\n"
        "  --set NAME=JSON  a global of the script (runpy's init_globals)\n"
        "  --timeout S      TimeoutError in the script after S seconds; exit status 124\n"
        "  --isolate        run in a child forked from the warm interpreter\n"
        "  --memory MB      (--isolate) address space the child may add (RLIMIT_AS)\n"
        "  --cpu S          (--isolate) CPU seconds (RLIMIT_CPU)\n"
        "  --cwd DIR        (--isolate) working directory (default: the current one)\n"
        "  --sandbox        --isolate, and no network, no files but the import paths,\n"
        "                   the script's directory, --cwd and a private TMPDIR, no\n"
        "                   privileges, no dangerous system calls ([sandbox] config)\n"
        "  --pids N         (--sandbox) processes the run may have (default 64)\n"
        "A run ended by signal N exits 128+N; a sandbox that cannot be set up, 125.\n"
        "See docs/run.md.\n",
        1, -1, true, cmd_run, CTL_OPT_RAW,
    },
    {
        "repl", "", "an interactive console into the daemon's interpreter",
        "Reads Python lines (with line editing and history in ~/.pyhot_history) and runs\n"
        "each complete input in the daemon's __main__ namespace, as the interactive\n"
        "interpreter does: \"... \" asks for more lines, expression values are echoed,\n"
        "tracebacks are shown. Ctrl-D leaves.\n",
        0, 0, false, cmd_repl, 0,
    },
    {
        "stop", "", "ask pyhotd to shut down",
        "Sends shutdown and prints \"pyhotd stopping\" once pyhotd has accepted it; pyhotd\n"
        "then sends the stopping event to subscribers and exits. It does not wait for the\n"
        "exit.\n",
        0, 0, false, cmd_stop, 0,
    },
};

static const struct ctl_command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static void usage(FILE *out)
{
    char path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];

    fprintf(out,
            "Usage: pyhotctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]\n"
            "\n"
            "Talks to a running pyhotd over its control socket.\n"
            "\n"
            "Commands:\n");
    int width = 0;

    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        int w = (int)(strlen(commands[i].name) + 1 + strlen(commands[i].args));

        if (w > width)
            width = w;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        char head[96];

        snprintf(head, sizeof(head), "%s %s", commands[i].name, commands[i].args);
        fprintf(out, "  %-*s  %s\n", width, head, commands[i].summary);
    }
    fprintf(out,
            "\n"
            "Options (before or after COMMAND):\n"
            "  -s, --socket PATH    the control socket; default $PYHOT_SOCKET, else\n"
            "                       $XDG_RUNTIME_DIR/pyhot/pyhotd.sock, else for root\n"
            "                       /run/pyhotd/pyhotd.sock, else /tmp/pyhot-UID/pyhotd.sock\n");
    if (protocol_default_socket_path(path, sizeof(path)) == 0)
        fprintf(out, "                       (here: %s)\n", path);
    fprintf(out,
            "  -j, --json           print the raw response line (tail: each event line)\n"
            "  -t, --timeout SECS   wait at most SECS for a response (default %d, 0: no limit)\n"
            "  -h, --help           this help; `pyhotctl COMMAND --help` for one command\n"
            "      --version        print the version\n"
            "\n"
            "Exit status: 0 success; 1 pyhotd reported an error (a failed reload, a Python\n"
            "exception); 2 usage error, or no answer from pyhotd.\n",
            DEFAULT_TIMEOUT_S);
}

static void command_usage(FILE *out, const struct ctl_command *cmd)
{
    fprintf(out, "Usage: pyhotctl [OPTIONS] %s%s%s\n\n%s", cmd->name, cmd->args[0] ? " " : "",
            cmd->args, cmd->help);
    fprintf(out, "\nOptions: --socket PATH, --json, --timeout SECONDS (see pyhotctl --help).\n");
}

static int parse_timeout(const char *arg, int *out_ms)
{
    char *end;
    double s;

    errno = 0;
    s = strtod(arg, &end);
    if (errno != 0 || end == arg || *end != '\0' || !isfinite(s) || s < 0 ||
        s > TIMEOUT_MAX_S) {
        fail("--timeout: '%s' is not a number of seconds between 0 and %d", arg,
             TIMEOUT_MAX_S);
        return -EINVAL;
    }
    if (s == 0)
        *out_ms = -1;
    else
        *out_ms = s * 1000 < 1 ? 1 : (int)(s * 1000);
    return 0;
}

enum { OPT_VERSION = 256 };

static const struct option long_options[] = {
    { "socket", required_argument, NULL, 's' },
    { "json", no_argument, NULL, 'j' },
    { "timeout", required_argument, NULL, 't' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, OPT_VERSION },
    { "lines", required_argument, NULL, 'n' },
    { "event", required_argument, NULL, 'e' },
    { "module", required_argument, NULL, 'm' },
    { NULL, 0, NULL, 0 },
};

/* Appends arg to *list (created on first use). */
static int append_arg(json_t **list, const char *arg, const char *what)
{
    json_t *v = json_string(arg);

    if (*list == NULL)
        *list = json_array();
    if (v == NULL || *list == NULL || json_array_append_new(*list, v) < 0) {
        fail("%s '%s' is not valid UTF-8", what, arg);
        return -EINVAL;
    }
    return 0;
}

/*
 * Parses options from argv[optind] on, stopping at the first operand when stop is set.
 * Returns 0, 1 when help was asked for, 3 for --version, or -EINVAL after a message.
 */
static int parse_options(struct ctl *ctl, int argc, char **argv, bool stop)
{
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, stop ? "+:s:jt:hn:e:m:" : ":s:jt:hn:e:m:",
                            long_options, NULL)) != -1) {
        switch (c) {
        case 'n':
            ctl->given_options |= CTL_OPT_COUNT;
            if (parse_count(optarg, &ctl->count) < 0)
                return -EINVAL;
            break;
        case 'e':
            ctl->given_options |= CTL_OPT_FILTER;
            if (append_arg(&ctl->events, optarg, "event type") < 0)
                return -EINVAL;
            break;
        case 'm':
            ctl->given_options |= CTL_OPT_FILTER;
            if (append_arg(&ctl->modules, optarg, "module glob") < 0)
                return -EINVAL;
            break;
        case 's':
            ctl->socket_path = optarg;
            break;
        case 'j':
            ctl->json = true;
            break;
        case 't':
            if (parse_timeout(optarg, &ctl->timeout_ms) < 0)
                return -EINVAL;
            break;
        case 'h':
            return 1;
        case OPT_VERSION:
            return 3;
        case ':':
            fail("option %s needs an argument", argv[optind - 1]);
            return -EINVAL;
        default:
            if (optopt != 0)
                fail("unknown option -%c", optopt);
            else
                fail("unknown option %s", argv[optind - 1]);
            return -EINVAL;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct ctl ctl = { .timeout_ms = DEFAULT_TIMEOUT_S * 1000, .fd = -1, .count = -1 };
    const struct ctl_command *cmd;
    struct sigaction sa = { .sa_handler = SIG_IGN };
    int r, cmd_argc;
    char **cmd_argv;

    /* A daemon that goes away mid-write is an EPIPE to report, not a silent death. */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);

    r = parse_options(&ctl, argc, argv, true);
    if (r == 1) {
        usage(stdout);
        return EXIT_OK;
    }
    if (r == 3) {
        printf("pyhotctl %s (protocol %d)\n", PYHOT_VERSION, PROTOCOL_VERSION);
        return EXIT_OK;
    }
    if (r < 0) {
        fprintf(stderr, "Try 'pyhotctl --help'.\n");
        return EXIT_USAGE;
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }

    if (strcmp(argv[optind], "help") == 0) {
        if (optind + 1 < argc) {
            cmd = find_command(argv[optind + 1]);
            if (cmd == NULL) {
                fail("unknown command '%s' (see pyhotctl --help)", argv[optind + 1]);
                return EXIT_USAGE;
            }
            command_usage(stdout, cmd);
        } else {
            usage(stdout);
        }
        return EXIT_OK;
    }
    cmd = find_command(argv[optind]);
    if (cmd == NULL) {
        fail("unknown command '%s' (see pyhotctl --help)", argv[optind]);
        return EXIT_USAGE;
    }

    /* Options may follow the command too: `pyhotctl tail --json`. */
    cmd_argc = argc - optind;
    cmd_argv = argv + optind;
    optind = 0; /* glibc: reinitialise getopt for the new argv */
    if (cmd->options & CTL_OPT_RAW) {
        /* run: its options (--timeout among them) are its own, parsed by the command. */
        if (cmd_argc > 1 && (strcmp(cmd_argv[1], "--help") == 0 || strcmp(cmd_argv[1], "-h") == 0)) {
            command_usage(stdout, cmd);
            return EXIT_OK;
        }
        optind = 1;
        r = 0;
    } else {
        r = parse_options(&ctl, cmd_argc, cmd_argv, cmd->stop_at_operand);
    }
    if (r == 1) {
        command_usage(stdout, cmd);
        return EXIT_OK;
    }
    if (r == 3) {
        printf("pyhotctl %s (protocol %d)\n", PYHOT_VERSION, PROTOCOL_VERSION);
        return EXIT_OK;
    }
    if (r < 0) {
        fprintf(stderr, "Try 'pyhotctl %s --help'.\n", cmd->name);
        return EXIT_USAGE;
    }
    cmd_argc -= optind;
    cmd_argv += optind;
    if (ctl.given_options & ~cmd->options & ~CTL_OPT_RAW) {
        fail("%s takes no %s", cmd->name, (ctl.given_options & ~cmd->options & CTL_OPT_COUNT)
                                              ? "-n/--lines" : "-e/--event or -m/--module");
        command_usage(stderr, cmd);
        r = EXIT_USAGE;
        goto out;
    }
    if (cmd_argc < cmd->min_args || (cmd->max_args >= 0 && cmd_argc > cmd->max_args)) {
        fail("%s: %s", cmd->name, cmd_argc < cmd->min_args ? "missing argument"
                                                            : "too many arguments");
        command_usage(stderr, cmd);
        return EXIT_USAGE;
    }

    if (ctl.socket_path == NULL) {
        if (protocol_default_socket_path(ctl.default_path, sizeof(ctl.default_path)) < 0) {
            fail("the default socket path is too long for a Unix socket (set --socket or "
                 "PYHOT_SOCKET)");
            return EXIT_USAGE;
        }
        ctl.socket_path = ctl.default_path;
    }
    ctl.color = isatty(STDOUT_FILENO) && getenv("NO_COLOR") == NULL;
    setlocale(LC_CTYPE, "");
    ctl.utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;

    r = cmd->exec(&ctl, cmd_argc, cmd_argv);

    if (fflush(stdout) != 0 && errno != EPIPE && r == EXIT_OK) {
        fail("cannot write to stdout: %s", strerror(errno));
        r = EXIT_USAGE;
    }
out:
    if (ctl.fd >= 0)
        close(ctl.fd);
    free(ctl.rd.buf);
    json_decref(ctl.events);
    json_decref(ctl.modules);
    return r;
}
