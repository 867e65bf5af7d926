/* pyhotctl: plugins, the plugins of the daemon's plugin directories (docs/plugins.md). */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "pyhotctl.h"

/* ", "-joined strings of an array. */
static void put_names(FILE *out, json_t *names) {
    size_t i;
    json_t *name;

    json_array_foreach(names, i, name) {
        if (i > 0)
            fputs(", ", out);
        put_clean(out, json_is_string(name) ? json_string_value(name) : "?");
    }
}

int cmd_plugins(struct ctl *ctl, int argc, char **argv) {
    json_t *resp, *result, *plugins, *p;
    size_t i, width = strlen("NAME");
    int r;

    (void)argc;
    (void)argv;
    r = ctl_call(ctl, "plugins", NULL, &resp, false);
    if (r != EXIT_OK || ctl->json) {
        json_decref(resp);
        return r;
    }
    result = json_object_get(resp, "result");
    plugins = json_object_get(result, "plugins");
    if (json_array_size(plugins) == 0) {
        if (json_array_size(json_object_get(result, "dirs")) == 0) {
            puts("no plugins: pyhotd has no plugin directory (--plugins DIR, [plugins] dir)");
        } else {
            fputs("no plugins matching ", stdout);
            put_value(stdout, json_object_get(result, "pattern"));
            fputs(" in ", stdout);
            put_names(stdout, json_object_get(result, "dirs"));
            fputc('\n', stdout);
        }
        json_decref(resp);
        return EXIT_OK;
    }
    json_array_foreach(plugins, i, p) {
        const char *name = jstr(p, "name");

        if (name != NULL && strlen(name) > width)
            width = strlen(name);
    }
    printf("%-*s  %-6s  %-24s  EXPORTS\n", (int)width, "NAME", "STATE", "LOADED");
    json_array_foreach(plugins, i, p) {
        const char *name = jstr(p, "name"), *state = jstr(p, "state");
        const char *loaded = jstr(p, "loaded_at");
        json_t *error = json_object_get(p, "error");

        put_clean(stdout, name != NULL ? name : "?");
        printf("%*s  ", (int)(width - strlen(name != NULL ? name : "?")), "");
        state = state != NULL ? state : "?";
        put_result(ctl, stdout, state);
        printf("%*s  %-24s  ", strlen(state) < 6 ? (int)(6 - strlen(state)) : 0, "",
               loaded != NULL ? loaded : "-");
        put_names(stdout, json_object_get(p, "exports"));
        fputc('\n', stdout);
        if (json_is_object(error)) {
            fputs(" ", stdout);
            put_error_summary(stdout, error);
            fputc('\n', stdout);
        }
    }
    json_decref(resp);
    return EXIT_OK;
}
