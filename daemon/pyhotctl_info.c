/* pyhotctl: the daemon itself — hello, ping, status, stats, stop. */
#include <stdio.h>

#include <jansson.h>

#include "protocol.h"
#include "pyhotctl.h"

/* stats: histogram bars at most this many rows and columns. */
#define BAR_ROWS  12

#define BAR_WIDTH 40

int cmd_ping(struct ctl *ctl, int argc, char **argv) {
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
static void put_duration(FILE *out, double ms) {
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

static void status_key(const char *key) {
    printf("%-*s", STATUS_KEY_WIDTH, key);
}

static void status_count(json_t *result, const char *key, const char *label) {
    status_key(label);
    put_value(stdout, json_object_get(result, key));
    fputc('\n', stdout);
}

int cmd_status(struct ctl *ctl, int argc, char **argv) {
    json_t *resp, *result, *roots, *root, *reloads, *last, *job, *entry;
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
                if (jstr(root, "watched_by") != NULL) {
                    fputs(", ", stdout);
                    put_clean(stdout, jstr(root, "watched_by"));
                    if (jstr(root, "why") != NULL && jstr(root, "why")[0] != '\0') {
                        fputs(": ", stdout);
                        put_clean(stdout, jstr(root, "why"));
                    }
                }
                fputc(')', stdout);
            }
            json_t *tree;
            size_t k;
            json_array_foreach(json_object_get(root, "polled"), k, tree) {
                fputc('\n', stdout);
                status_key("");
                fputs("  polled: ", stdout);
                put_value(stdout, json_object_get(tree, "path"));
                fputs(" (", stdout);
                put_clean(stdout, jstr(tree, "error") != NULL ? jstr(tree, "error")
                                                              : jstr(tree, "why"));
                fputc(')', stdout);
            }
        } else {
            put_value(stdout, root);
        }
        fputc('\n', stdout);
    }

    status_count(result, "watched_dirs", "watched dirs:");
    status_count(result, "modules_loaded", "modules loaded:");

    entry = json_object_get(result, "entry");
    if (json_is_object(entry)) {
        /* The app: "app:main running", or why it is not ("failed: OSError: ..."). */
        status_key("entry:");
        put_clean(stdout, jstr(entry, "name"));
        fputc(' ', stdout);
        put_result(ctl, stdout, jstr(entry, "state"));
        if (json_is_object(json_object_get(entry, "error"))) {
            fputc(':', stdout);
            put_error_summary(stdout, json_object_get(entry, "error"));
        }
        fputc('\n', stdout);
    }

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
    {
        json_t *prefork = json_object_get(result, "prefork");
        json_t *ready = json_object_get(prefork, "ready");

        if (json_is_object(prefork)) {
            status_key("ready children:");
            printf("%" JSON_INTEGER_FORMAT " isolated, %" JSON_INTEGER_FORMAT " sandboxed (%"
                   JSON_INTEGER_FORMAT " hits, %" JSON_INTEGER_FORMAT " misses, %" JSON_INTEGER_FORMAT
                   " retired)\n",
                   json_integer_value(json_object_get(ready, "isolated")),
                   json_integer_value(json_object_get(ready, "sandboxed")),
                   json_integer_value(json_object_get(prefork, "hits")),
                   json_integer_value(json_object_get(prefork, "misses")),
                   json_integer_value(json_object_get(prefork, "retired")));
        }
    }
    status_count(result, "subscribers", "subscribers:");
    json_decref(resp);
    return EXIT_OK;
}

int cmd_hello(struct ctl *ctl, int argc, char **argv) {
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

/* A duration in ms, short: "0.052", "1.24", "12.3", "1234". */
static void put_short_ms(FILE *out, double ms) {
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
static void put_bar(const struct ctl *ctl, long eighths) {
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
                            json_t *h) {
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

static void stats_counts(json_t *obj, const char *const (*kinds)[2], size_t n) {
    for (size_t i = 0; i < n; i++) {
        printf("%s", i > 0 ? ", " : "");
        put_value(stdout, json_object_get(obj, kinds[i][0]));
        printf(" %s", kinds[i][1]);
    }
    fputc('\n', stdout);
}

int cmd_stats(struct ctl *ctl, int argc, char **argv) {
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

int cmd_stop(struct ctl *ctl, int argc, char **argv) {
    json_t *resp;
    int r;

    r = ctl_call(ctl, "shutdown", NULL, &resp, false);
    if (r == EXIT_OK && !ctl->json)
        printf("pyhotd stopping\n");
    json_decref(resp);
    return r;
}

int cmd_metrics(struct ctl *ctl, int argc, char **argv) {
    json_t *resp, *text;
    int r;

    (void)argc;
    (void)argv;
    r = ctl_call(ctl, "metrics", NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    text = json_object_get(json_object_get(resp, "result"), "text");
    if (json_is_string(text))
        fwrite(json_string_value(text), 1, json_string_length(text), stdout);
    json_decref(resp);
    return EXIT_OK;
}
