#ifndef PYHOTCTL_H
#define PYHOTCTL_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/un.h>

#include <limits.h>

#include <jansson.h>

/*
 * pyhotctl's parts (daemon/pyhotctl*.c): pyhotctl.c holds main, the options and the verbs
 * table; each verb group has its file; pyhotctl_common.c holds the output and connection
 * code every verb shares.
 */

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
#define CTL_OPT_RAW    4u   /* the command gets its whole command line, its name first, and
                               parses it itself (run, with getopt_long) */

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

/* A stop signal (tail) or Ctrl-C (repl) arrived; read_line returns -EINTR and
 * ctl_wait_response WAIT_INTERRUPTED. */
extern volatile sig_atomic_t got_stop_signal;

/* The handler of those signals: it only sets got_stop_signal; read_line sees it. */
void on_stop_signal(int sig);

/* "pyhotctl: message" on stderr. */
void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- pyhotctl_common.c ---- */

double now_sec(void);

/* ---- pyhotctl_common.c: JSON members (absent and mistyped ones read as missing) ---- */

/* The string member key of obj, or NULL. */
const char *jstr(const json_t *obj, const char *key);

/* The integer member key of obj into *out; false when there is none. */
bool jint(const json_t *obj, const char *key, long long *out);

/* The number member key of obj into *out; false when there is none. */
bool jnum(const json_t *obj, const char *key, double *out);

/* ---- pyhotctl_common.c: output ---- */

/* Writes s with control characters shown as '?', so that one event stays one line. */
void put_clean(FILE *out, const char *s);

/* s with its length (strings from the daemon may hold NULs), exactly as captured. */
void put_exact(FILE *out, json_t *s);

/* Whether the string s ends with "\n". */
bool ends_with_newline(json_t *s);

/* Prints any JSON value: a string as itself, null as "-", the rest as compact JSON. */
void put_value(FILE *out, json_t *v);

/* "[a, b, c]" of an array (strings as themselves); "[]" when empty or not an array. */
void put_list(FILE *out, json_t *list);

/* A result word (ok, error, rolled_back, skipped; a plugin's loaded, reloaded, removed),
 * coloured on a terminal. */
void put_result(const struct ctl *ctl, FILE *out, const char *result);

/* " TYPE: MESSAGE (FILE:LINE)" of an error object. */
void put_error_summary(FILE *out, json_t *error);

/*
 * The local time of day of an RFC 3339 UTC time ("2026-11-27T04:19:43.123Z" ->
 * "05:19:43.123" in CET). Anything else is printed as it came.
 */
void put_time(FILE *out, const char *rfc3339);

/* prefix and the milliseconds member key of obj (" 12.34 ms"), when there is one. */
void put_ms(FILE *out, const char *prefix, json_t *obj, const char *key);

/* One readable line per event (the format of `tail`, docs/protocol.md). */
void print_event(const struct ctl *ctl, FILE *out, json_t *ev);

/* ---- pyhotctl_common.c: the connection ---- */

/* Connects to ctl->socket_path. Returns 0, or -1 after a message. */
int ctl_connect(struct ctl *ctl);

/* Sends {"id": 1, "cmd": cmd, ...args}: the request whose response ctl_wait_response
 * waits for. Returns 0 or an exit status. */
int ctl_send(struct ctl *ctl, const char *cmd, json_t *args);

/* The same with another id: a request whose response is not waited for (the repl's
 * interrupt). */
int ctl_send_id(struct ctl *ctl, int id, const char *cmd, json_t *args);

/*
 * The next line from the daemon, without its "\n" (NUL-terminated in place; valid until
 * the next call). deadline: CLOCK_MONOTONIC ms, or -1 to wait for ever. Returns 1 with a
 * line, 0 at end of stream, -ETIMEDOUT, -EMSGSIZE (line over RESPONSE_MAX), -EINTR (a
 * stop signal during tail), or another -errno of read.
 */
int read_line(struct ctl *ctl, int64_t deadline, char **line, size_t *len);

/* Prints why no line came and returns the exit status for it. */
int read_failed(struct ctl *ctl, int r, const char *waiting_for);

/* Parses one line from the daemon; NULL (after a message) when it is not an object. */
json_t *parse_line(const char *line, size_t len);

/* Whether msg is an event (it has "event"), not a response. */
bool is_event(json_t *msg);

/* Our response: our id, or a null id on an error (a request the daemon could not read). */
bool is_our_response(json_t *msg);

/*
 * Waits for the response to our request, skipping events that come before it. Returns
 * EXIT_OK with *resp (owned) and, when raw is not NULL, a malloc'd copy of the line in
 * *raw; WAIT_INTERRUPTED on a stop signal during tail; or an exit status after a message.
 */
int ctl_wait_response(struct ctl *ctl, json_t **resp, char **raw);

/* Prints "pyhotctl: CODE: MESSAGE" and the traceback, if any. Returns EXIT_FAILED. */
int report_error(json_t *resp);

/*
 * Connects, sends cmd with args and waits for the response. Returns EXIT_OK with *resp
 * when the daemon answered ok:true. Otherwise returns the exit status: with --json the
 * raw line of an ok:false response has been printed; without, the error.
 * With keep_error, an ok:false response is handed back too, as EXIT_FAILED with *resp.
 */
int ctl_call(struct ctl *ctl, const char *cmd, json_t *args, json_t **resp, bool keep_error);

/* ---- pyhotctl_common.c: option values ---- */

/* A count operand (history N): a whole number >= 0. */
int parse_count(const char *arg, long long *out);

/* arg, a number of seconds from 0 to TIMEOUT_MAX_S (fractions allowed), into *ms; a
 * positive value never rounds to 0 ms. Returns 0, or -EINVAL after a message naming opt. */
int parse_seconds(const char *opt, const char *arg, long long *ms);

/* Appends arg to *list (created on first use). */
int append_arg(json_t **list, const char *arg, const char *what);

/* ---- verbs: pyhotctl_info.c ---- */

int cmd_ping(struct ctl *ctl, int argc, char **argv);
int cmd_status(struct ctl *ctl, int argc, char **argv);
int cmd_hello(struct ctl *ctl, int argc, char **argv);
int cmd_stats(struct ctl *ctl, int argc, char **argv);
int cmd_stop(struct ctl *ctl, int argc, char **argv);
int cmd_metrics(struct ctl *ctl, int argc, char **argv);

/* ---- verbs: pyhotctl_plugins.c ---- */

int cmd_plugins(struct ctl *ctl, int argc, char **argv);

/* ---- verbs: pyhotctl_python.c ---- */

int cmd_modules(struct ctl *ctl, int argc, char **argv);
int cmd_reload(struct ctl *ctl, int argc, char **argv);
int cmd_exec(struct ctl *ctl, int argc, char **argv);

/* All of stdin (exec -, run -), up to PROTOCOL_MAX_LINE bytes, malloc'd, *len bytes. NULL
 * after a message. */
char *read_stdin(size_t *len);

/* ---- verbs: pyhotctl_repl.c ---- */

int cmd_repl(struct ctl *ctl, int argc, char **argv);

/* ---- verbs: pyhotctl_events.c ---- */

int cmd_tail(struct ctl *ctl, int argc, char **argv);
int cmd_history(struct ctl *ctl, int argc, char **argv);

/* ---- verbs: pyhotctl_roots.c ---- */

int cmd_watch(struct ctl *ctl, int argc, char **argv);
int cmd_unwatch(struct ctl *ctl, int argc, char **argv);
int cmd_pause(struct ctl *ctl, int argc, char **argv);
int cmd_resume(struct ctl *ctl, int argc, char **argv);

/* ---- verbs: pyhotctl_run.c ---- */

int cmd_run(struct ctl *ctl, int argc, char **argv);

#endif
