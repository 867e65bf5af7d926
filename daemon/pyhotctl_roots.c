/* pyhotctl: watch roots — watch, unwatch, pause, resume. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "pyhotctl.h"

/* DIR as an absolute path: resolved against the current directory when it exists here,
 * else made absolute as written (the daemon says what is wrong with it). */
static json_t *dir_argument(const char *arg) {
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

static int cmd_watch_or_unwatch(struct ctl *ctl, const char *cmd, const char *arg) {
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

int cmd_watch(struct ctl *ctl, int argc, char **argv) {
    return cmd_watch_or_unwatch(ctl, "watch", argv[0]);
}

int cmd_unwatch(struct ctl *ctl, int argc, char **argv) {
    return cmd_watch_or_unwatch(ctl, "unwatch", argv[0]);
}

/* pause and resume: the result's members, or a plain confirmation. */
static int cmd_pause_or_resume(struct ctl *ctl, const char *cmd) {
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

int cmd_pause(struct ctl *ctl, int argc, char **argv) {
    return cmd_pause_or_resume(ctl, "pause");
}

int cmd_resume(struct ctl *ctl, int argc, char **argv) {
    return cmd_pause_or_resume(ctl, "resume");
}
