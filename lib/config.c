#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>

#include "protocol.h"
#include "sandbox.h"

#define SETTLE_MS_MAX 60000U
#define DEFER_VCS_MS_MAX 3600000U
#define POLL_INTERVAL_MS_MIN 20U
#define POLL_INTERVAL_MS_MAX 60000U
#define TIMEOUT_MS_MAX 86400000U
#define MAX_CLIENTS_MAX 65536U
#define MAX_OUTPUT_MIN 65536U
#define MAX_OUTPUT_MAX 1073741824U
#define HISTORY_BYTES_MAX 1073741824U
#define MSG_MAX 1024
#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)NULL)->sun_path)

/* ---- string lists (NULL-terminated, with a count) ---------------------------------- */

static void strv_free(char ***v, size_t *n) {
    if (*v != NULL) {
        for (size_t i = 0; i < *n; i++)
            free((*v)[i]);
        free(*v);
    }
    *v = NULL;
    *n = 0;
}

/* Appends s, taking ownership of it (freed on failure). */
static int strv_push_owned(char ***v, size_t *n, char *s) {
    if (s == NULL)
        return -ENOMEM;
    char **nv = realloc(*v, (*n + 2) * sizeof(*nv));
    if (nv == NULL) {
        free(s);
        return -ENOMEM;
    }
    nv[(*n)++] = s;
    nv[*n] = NULL;
    *v = nv;
    return 0;
}

static bool strv_contains(char *const *v, size_t n, const char *s) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

/* ---- values --------------------------------------------------------------------- */

/* A full decimal integer in min..max: digits only (no sign, no spaces, no 0x). */
static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out) {
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

static bool entry_valid(const char *entry) {
    const char *colon = strchr(entry, ':');
    return colon != NULL && colon != entry && colon[1] != '\0' && strchr(colon + 1, ':') == NULL;
}

/* A plugin pattern: a glob matched against file names, so it holds no '/'. */
static bool pattern_valid(const char *pattern) {
    return pattern[0] != '\0' && strchr(pattern, '/') == NULL;
}

/* Joins a relative path onto dir; an absolute path is only tidied. Drops empty and "."
 * components so that sys.path entries read the way the user meant them; ".." is kept,
 * since resolving it lexically would be wrong across symlinks. */
static char *path_join(const char *dir, const char *path) {
    size_t dlen = path[0] == '/' || dir == NULL ? 0 : strlen(dir);
    size_t plen = strlen(path);
    char *joined = malloc(dlen + 1 + plen + 1);
    if (joined == NULL)
        return NULL;
    if (dlen > 0) {
        memcpy(joined, dir, dlen);
        joined[dlen] = '/';
        memcpy(joined + dlen + 1, path, plen + 1);
    } else {
        memcpy(joined, path, plen + 1);
    }

    bool absolute = joined[0] == '/';
    char *w = joined;
    const char *r = joined;
    while (*r != '\0') {
        while (*r == '/')
            r++;
        size_t n = strcspn(r, "/");
        if (n == 0 || (n == 1 && r[0] == '.')) {
            r += n;
            continue;
        }
        if (w > joined || absolute)
            *w++ = '/';
        memmove(w, r, n);
        w += n;
        r += n;
    }
    if (w == joined)
        *w++ = absolute ? '/' : '.';
    *w = '\0';
    return joined;
}

/* ---- the INI file -------------------------------------------------------------- */

enum key_kind {
    KEY_STRING,     /* char *, as written */
    KEY_PATH,       /* char *, resolved against the file's directory */
    KEY_DIRS,       /* char **, existing directories, realpath'd */
    KEY_PATHS,      /* char **, resolved against the file's directory */
    KEY_GLOBS,      /* char **, split on whitespace and commas */
    KEY_UINT,       /* unsigned, min..max */
    KEY_LOG_LEVEL,
    KEY_IMPORT,
    KEY_STRATEGY,
    KEY_MODE,
    KEY_ENTRY,
    KEY_BOOL,       /* bool: yes/no, true/false, on/off, 1/0 */
    KEY_BACKEND,
    KEY_NETWORK,
    KEY_API,        /* char *, MODULE:ATTR */
    KEY_PATTERN,    /* char *, a file-name glob (no '/') */
};

struct config_key {
    const char *section;
    const char *name;
    enum key_kind kind;
    size_t offset;    /* of the field in struct config */
    size_t n_offset;  /* of the count, for lists */
    unsigned min, max;
};

#define FIELD(f) offsetof(struct config, f)
#define LIST(f) offsetof(struct config, f), offsetof(struct config, n_##f)

static const struct config_key config_keys[] = {
    {"daemon", "socket", KEY_PATH, FIELD(socket_path), 0, 0, 0},
    {"daemon", "log_level", KEY_LOG_LEVEL, FIELD(log_level), 0, 0, 0},
    {"daemon", "max_clients", KEY_UINT, FIELD(max_clients), 0, 1, MAX_CLIENTS_MAX},
    {"daemon", "max_output_bytes", KEY_UINT, FIELD(max_output_bytes), 0, MAX_OUTPUT_MIN,
     MAX_OUTPUT_MAX},
    {"daemon", "history_bytes", KEY_UINT, FIELD(history_bytes), 0, 0, HISTORY_BYTES_MAX},
    {"daemon", "request_timeout_ms", KEY_UINT, FIELD(request_timeout_ms), 0, 1, TIMEOUT_MS_MAX},
    {"daemon", "socket_group", KEY_STRING, FIELD(socket_group), 0, 0, 0},
    {"watch", "root", KEY_DIRS, LIST(watch_roots), 0, 0},
    {"watch", "settle_ms", KEY_UINT, FIELD(settle_ms), 0, 0, SETTLE_MS_MAX},
    {"watch", "import", KEY_IMPORT, FIELD(import), 0, 0, 0},
    {"watch", "include", KEY_GLOBS, LIST(include), 0, 0},
    {"watch", "exclude", KEY_GLOBS, LIST(exclude), 0, 0},
    {"watch", "backend", KEY_BACKEND, FIELD(backend), 0, 0, 0},
    {"watch", "follow_symlinks", KEY_BOOL, FIELD(follow_symlinks), 0, 0, 0},
    {"watch", "defer_vcs_ms", KEY_UINT, FIELD(defer_vcs_ms), 0, 0, DEFER_VCS_MS_MAX},
    {"watch", "poll", KEY_PATHS, LIST(poll_dirs), 0, 0},
    {"watch", "poll_interval_ms", KEY_UINT, FIELD(poll_interval_ms), 0, POLL_INTERVAL_MS_MIN,
     POLL_INTERVAL_MS_MAX},
    {"python", "path", KEY_PATHS, LIST(python_paths), 0, 0},
    {"python", "entry", KEY_ENTRY, FIELD(entry), 0, 0, 0},
    {"python", "venv", KEY_PATH, FIELD(venv), 0, 0, 0},
    {"python", "preload", KEY_GLOBS, LIST(preload), 0, 0},
    {"reload", "timeout_ms", KEY_UINT, FIELD(reload_timeout_ms), 0, 1, TIMEOUT_MS_MAX},
    {"reload", "strategy", KEY_STRATEGY, FIELD(strategy), 0, 0, 0},
    {"reload", "mode", KEY_MODE, FIELD(mode), 0, 0, 0},
    {"run", "timeout_ms", KEY_UINT, FIELD(exec_timeout_ms), 0, 1, TIMEOUT_MS_MAX},
    {"run", "prefork", KEY_UINT, FIELD(run_prefork), 0, 0, CONFIG_PREFORK_MAX},
    {"run", "prefork_max_age_ms", KEY_UINT, FIELD(run_prefork_max_age_ms), 0, 0, TIMEOUT_MS_MAX},
    {"sandbox", "network", KEY_NETWORK, FIELD(sandbox_network), 0, 0, 0},
    {"sandbox", "user", KEY_STRING, FIELD(sandbox_user), 0, 0, 0},
    {"sandbox", "read", KEY_PATHS, LIST(sandbox_read), 0, 0},
    {"sandbox", "write", KEY_PATHS, LIST(sandbox_write), 0, 0},
    {"sandbox", "pids", KEY_UINT, FIELD(sandbox_pids), 0, 1, 65536},
    {"sandbox", "tmp_size_mb", KEY_UINT, FIELD(sandbox_tmp_mb), 0, 1, 65536},
    {"plugins", "dir", KEY_DIRS, LIST(plugin_dirs), 0, 0},
    {"plugins", "pattern", KEY_PATTERN, FIELD(plugin_pattern), 0, 0, 0},
    {"plugins", "api", KEY_API, FIELD(plugin_api), 0, 0, 0},
};

#define N_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

static bool section_known(const char *section) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0)
            return true;
    return false;
}

struct load_ctx {
    struct config *cfg;
    const char *path;
    char dir[PATH_MAX];   /* the file's directory, absolute */
    FILE *file;
    int lineno;           /* lines handed to inih so far: the line the handler is on */
    int err_line;         /* first error we found ourselves, 0 = none */
    int err;
    char msg[MSG_MAX];
};

static int load_fail(struct load_ctx *ctx, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error only (inih keeps parsing after one); returns 0, the handler's
 * "error" answer to inih. */
static int load_fail(struct load_ctx *ctx, int err, const char *fmt, ...) {
    if (ctx->err_line == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->msg, sizeof(ctx->msg), fmt, ap);
        va_end(ap);
        ctx->err_line = ctx->lineno;
        ctx->err = err;
    }
    return 0;
}

/* inih's reader. Counting the lines here gives the handler its line number (Debian builds
 * inih without INI_HANDLER_LINENO). It also catches what inih would get wrong silently: a
 * line longer than its buffer (inih would parse the rest as a further line) and a section
 * header with an unknown name (inih reports nothing for a section without keys). */
static char *load_reader(char *str, int num, void *stream) {
    struct load_ctx *ctx = stream;
    if (fgets(str, num, ctx->file) == NULL)
        return NULL;
    ctx->lineno++;

    size_t len = strlen(str);
    if (len == (size_t)num - 1 && str[len - 1] != '\n') {
        int c = getc(ctx->file);
        if (c != EOF && c != '\n') {
            while (c != EOF && c != '\n')
                c = getc(ctx->file);
            load_fail(ctx, -EINVAL, "line longer than %d bytes", num - 1);
            str[0] = '\0';
            return str;
        }
    }

    /* Only an unindented "[" is certainly a section: an indented line may continue the
     * previous value. The handler catches unknown sections that this misses. */
    const char *p = str;
    if (ctx->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    if (*p == '[') {
        const char *close = strchr(p + 1, ']');
        if (close != NULL) {
            char name[128];
            size_t n = (size_t)(close - p - 1);
            if (n >= sizeof(name))
                n = sizeof(name) - 1;
            memcpy(name, p + 1, n);
            name[n] = '\0';
            if (!section_known(name))
                load_fail(ctx, -EINVAL, "unknown section [%s]", name);
        }
    }
    return str;
}

static int set_value(struct load_ctx *ctx, const struct config_key *key, const char *value) {
    char *base = (char *)ctx->cfg;
    char **str = (char **)(base + key->offset);
    char ***list = (char ***)(base + key->offset);
    size_t *count = (size_t *)(base + key->n_offset);
    int r = 0;

    switch (key->kind) {
    case KEY_STRING:
    case KEY_PATH:
    case KEY_ENTRY:
    case KEY_API:
    case KEY_PATTERN: {
        if (value[0] == '\0')
            return load_fail(ctx, -EINVAL, "%s: empty value", key->name);
        if ((key->kind == KEY_ENTRY || key->kind == KEY_API) && !entry_valid(value))
            return load_fail(ctx, -EINVAL, "%s: expected MODULE:%s, got '%s'", key->name,
                             key->kind == KEY_API ? "ATTR" : "FUNCTION", value);
        if (key->kind == KEY_PATTERN && !pattern_valid(value))
            return load_fail(ctx, -EINVAL, "%s: expected a file-name glob without '/', got '%s'",
                             key->name, value);
        char *copy = key->kind == KEY_PATH ? path_join(ctx->dir, value) : strdup(value);
        if (copy == NULL)
            return load_fail(ctx, -ENOMEM, "out of memory");
        free(*str);
        *str = copy;
        return 1;
    }
    case KEY_DIRS: {
        if (value[0] == '\0')
            return load_fail(ctx, -EINVAL, "%s: empty value", key->name);
        char *joined = path_join(ctx->dir, value);
        if (joined == NULL)
            return load_fail(ctx, -ENOMEM, "out of memory");
        char *real = realpath(joined, NULL);
        struct stat st;
        if (real == NULL || stat(real, &st) < 0) {
            int e = errno;
            load_fail(ctx, -EINVAL, "%s = %s: %s", key->name, value, strerror(e));
            free(joined);
            free(real);
            return 0;
        }
        free(joined);
        if (!S_ISDIR(st.st_mode)) {
            free(real);
            return load_fail(ctx, -EINVAL, "%s = %s: not a directory", key->name, value);
        }
        if (strv_contains(*list, *count, real)) {
            free(real);
            return 1;
        }
        r = strv_push_owned(list, count, real);
        break;
    }
    case KEY_PATHS:
        if (value[0] == '\0')
            return load_fail(ctx, -EINVAL, "%s: empty value", key->name);
        r = strv_push_owned(list, count, path_join(ctx->dir, value));
        break;
    case KEY_GLOBS: {
        size_t added = 0;
        for (const char *p = value; *p != '\0' && r == 0;) {
            size_t skip = strspn(p, " \t,");
            p += skip;
            size_t n = strcspn(p, " \t,");
            if (n == 0)
                break;
            r = strv_push_owned(list, count, strndup(p, n));
            p += n;
            added++;
        }
        if (r == 0 && added == 0)
            return load_fail(ctx, -EINVAL, "%s: expected one or more globs", key->name);
        break;
    }
    case KEY_UINT:
        if (parse_uint(value, key->min, key->max, (unsigned *)(base + key->offset)) < 0)
            return load_fail(ctx, -EINVAL, "%s: expected an integer from %u to %u, got '%s'",
                             key->name, key->min, key->max, value);
        return 1;
    case KEY_LOG_LEVEL:
        if (log_level_parse(value, (enum log_level *)(base + key->offset)) < 0)
            return load_fail(ctx, -EINVAL,
                             "%s: expected error, warn, info or debug, got '%s'", key->name,
                             value);
        return 1;
    case KEY_IMPORT:
        if (strcmp(value, "all") == 0)
            *(enum config_import *)(base + key->offset) = CONFIG_IMPORT_ALL;
        else if (strcmp(value, "on-demand") == 0 || strcmp(value, "none") == 0)
            *(enum config_import *)(base + key->offset) = CONFIG_IMPORT_ON_DEMAND;
        else
            return load_fail(ctx, -EINVAL, "%s: expected on-demand or all, got '%s'", key->name,
                             value);
        return 1;
    case KEY_BOOL: {
        static const char *const yes[] = {"yes", "true", "on", "1"};
        static const char *const no[] = {"no", "false", "off", "0"};
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
                *(bool *)(base + key->offset) = strcasecmp(value, yes[i]) == 0;
                return 1;
            }
        }
        return load_fail(ctx, -EINVAL, "%s: expected yes or no, got '%s'", key->name, value);
    }
    case KEY_BACKEND:
        if (strcmp(value, "inotify") == 0)
            *(enum config_backend *)(base + key->offset) = CONFIG_BACKEND_INOTIFY;
        else if (strcmp(value, "uv") == 0)
            *(enum config_backend *)(base + key->offset) = CONFIG_BACKEND_UV;
        else if (strcmp(value, "poll") == 0)
            *(enum config_backend *)(base + key->offset) = CONFIG_BACKEND_POLL;
        else
            return load_fail(ctx, -EINVAL, "%s: expected inotify, uv or poll, got '%s'",
                             key->name, value);
        return 1;
    case KEY_NETWORK:
        if (strcmp(value, "none") == 0)
            *(enum config_network *)(base + key->offset) = CONFIG_NETWORK_NONE;
        else if (strcmp(value, "loopback") == 0)
            *(enum config_network *)(base + key->offset) = CONFIG_NETWORK_LOOPBACK;
        else
            return load_fail(ctx, -EINVAL, "%s: expected none or loopback, got '%s'", key->name,
                             value);
        return 1;
    case KEY_STRATEGY:
        if (strcmp(value, "dependents") == 0)
            *(enum config_strategy *)(base + key->offset) = CONFIG_STRATEGY_DEPENDENTS;
        else if (strcmp(value, "module") == 0)
            *(enum config_strategy *)(base + key->offset) = CONFIG_STRATEGY_MODULE;
        else
            return load_fail(ctx, -EINVAL, "%s: expected dependents or module, got '%s'",
                             key->name, value);
        return 1;
    case KEY_MODE:
        if (strcmp(value, "definitions") == 0)
            *(enum config_mode *)(base + key->offset) = CONFIG_MODE_DEFINITIONS;
        else if (strcmp(value, "module") == 0)
            *(enum config_mode *)(base + key->offset) = CONFIG_MODE_MODULE;
        else
            return load_fail(ctx, -EINVAL, "%s: expected definitions or module, got '%s'",
                             key->name, value);
        return 1;
    }
    if (r < 0)
        return load_fail(ctx, r, "out of memory");
    return 1;
}

static int load_handler(void *user, const char *section, const char *name, const char *value) {
    struct load_ctx *ctx = user;
    if (section[0] == '\0')
        return load_fail(ctx, -EINVAL, "key '%s' outside any section", name);
    if (!section_known(section))
        return load_fail(ctx, -EINVAL, "unknown section [%s]", section);
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *key = &config_keys[i];
        if (strcmp(key->section, section) == 0 && strcmp(key->name, name) == 0)
            return set_value(ctx, key, value);
    }
    return load_fail(ctx, -EINVAL, "unknown key '%s' in section [%s]", name, section);
}

/* The absolute directory of path, for resolving the relative paths inside it. */
static int file_dir(const char *path, char *out) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        strcpy(dir, ".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof(dir))
            return -ENAMETOOLONG;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    if (realpath(dir, out) == NULL)
        return -errno;
    return 0;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen) {
    struct load_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    ctx->cfg = cfg;
    ctx->path = path;
    int r = 0;

    ctx->file = fopen(path, "re");
    struct stat st;
    if (ctx->file == NULL || fstat(fileno(ctx->file), &st) < 0) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    /* fopen(3) opens a directory and reading it fails: that must not pass as empty. */
    if (S_ISDIR(st.st_mode)) {
        r = -EISDIR;
        snprintf(err, errlen, "%s: %s", path, strerror(EISDIR));
        goto out;
    }
    r = file_dir(path, ctx->dir);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(-r));
        goto out;
    }
    char *copy = strdup(path);
    if (copy == NULL) {
        r = -ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    free(cfg->config_path);
    cfg->config_path = copy;

    int line = ini_parse_stream(load_reader, ctx, load_handler, ctx);
    if (ferror(ctx->file)) {
        r = -EIO;
        snprintf(err, errlen, "%s: read error", path);
    } else if (line > 0 && (ctx->err_line == 0 || line < ctx->err_line)) {
        /* inih found a line that is neither "[section]" nor "key = value". */
        r = -EINVAL;
        snprintf(err, errlen, "%s:%d: syntax error: expected [section] or key = value",
                 path, line);
    } else if (ctx->err_line > 0) {
        r = ctx->err;
        snprintf(err, errlen, "%s:%d: %s", path, ctx->err_line, ctx->msg);
    } else if (line < 0) {
        r = -ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
    }

out:
    if (ctx->file != NULL)
        fclose(ctx->file);
    free(ctx);
    return r;
}

/* ---- the command line ------------------------------------------------------------ */

enum {
    OPT_SETTLE_MS = 256,
    OPT_PYTHON_PATH,
    OPT_ENTRY,
    OPT_NO_IMPORT,
    OPT_LOG_LEVEL,
    OPT_CHECK_CONFIG,
    OPT_PLUGINS,
};

static const struct option long_options[] = {
    {"config", required_argument, NULL, 'c'},
    {"watch", required_argument, NULL, 'w'},
    {"socket", required_argument, NULL, 's'},
    {"settle-ms", required_argument, NULL, OPT_SETTLE_MS},
    {"python-path", required_argument, NULL, OPT_PYTHON_PATH},
    {"entry", required_argument, NULL, OPT_ENTRY},
    {"no-import", no_argument, NULL, OPT_NO_IMPORT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
    {"plugins", required_argument, NULL, OPT_PLUGINS},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char *option_name(int val) {
    for (const struct option *o = long_options; o->name != NULL; o++)
        if (o->val == val)
            return o->name;
    return "?";
}

/* How many long options "--arg" abbreviates; getopt_long(3) reports an ambiguous prefix
 * the same way as an unknown option. */
static int long_prefix_matches(const char *arg) {
    if (strncmp(arg, "--", 2) != 0)
        return 0;
    arg += 2;
    size_t n = strcspn(arg, "=");
    int matches = 0;
    for (const struct option *o = long_options; o->name != NULL; o++)
        matches += strncmp(o->name, arg, n) == 0;
    return matches;
}

/* What the command line said, kept apart until the file is loaded beneath it. */
struct cli {
    const char *config;
    const char *socket;
    const char *entry;
    char **watch;
    size_t n_watch;
    char **python_paths;
    size_t n_python_paths;
    char **plugins;
    size_t n_plugins;
    unsigned settle_ms;
    enum log_level log_level;
    bool has_settle_ms, has_log_level, has_watch, has_python_paths, has_plugins, no_import;
    bool check_config, help, version;
};

static void cli_free(struct cli *cli) {
    strv_free(&cli->watch, &cli->n_watch);
    strv_free(&cli->python_paths, &cli->n_python_paths);
    strv_free(&cli->plugins, &cli->n_plugins);
}

static int cli_parse(struct cli *cli, int argc, char **argv, char *err, size_t errlen) {
    char cwd[PATH_MAX];
    bool have_cwd = false;
    int c, r;

    optind = 0;   /* glibc: full re-initialisation, so a second call parses afresh */
    opterr = 0;   /* lib/ never prints; errors go to err */
    while ((c = getopt_long(argc, argv, ":c:w:s:hV", long_options, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli->config = optarg;
            break;
        case 'w':
            if (optarg[0] == '\0') {
                snprintf(err, errlen, "--watch: empty directory name");
                return -EINVAL;
            }
            /* Kept as given: config_finish() resolves it against the cwd and names it
             * the way the user wrote it when it is missing. */
            r = strv_push_owned(&cli->watch, &cli->n_watch, strdup(optarg));
            if (r < 0)
                goto nomem;
            cli->has_watch = true;
            break;
        case OPT_PLUGINS:
            if (optarg[0] == '\0') {
                snprintf(err, errlen, "--plugins: empty directory name");
                return -EINVAL;
            }
            /* Resolved by config_finish(), as --watch is. */
            r = strv_push_owned(&cli->plugins, &cli->n_plugins, strdup(optarg));
            if (r < 0)
                goto nomem;
            cli->has_plugins = true;
            break;
        case 's':
            if (optarg[0] == '\0') {
                snprintf(err, errlen, "--socket: empty path");
                return -EINVAL;
            }
            cli->socket = optarg;
            break;
        case OPT_SETTLE_MS:
            if (parse_uint(optarg, 0, SETTLE_MS_MAX, &cli->settle_ms) < 0) {
                snprintf(err, errlen, "--settle-ms: expected an integer from 0 to %u, got '%s'",
                         SETTLE_MS_MAX, optarg);
                return -EINVAL;
            }
            cli->has_settle_ms = true;
            break;
        case OPT_PYTHON_PATH:
            if (optarg[0] == '\0') {
                snprintf(err, errlen, "--python-path: empty directory name");
                return -EINVAL;
            }
            if (!have_cwd && optarg[0] != '/') {
                if (getcwd(cwd, sizeof(cwd)) == NULL) {
                    snprintf(err, errlen, "--python-path %s: cannot get the current directory: %s",
                             optarg, strerror(errno));
                    return -errno;
                }
                have_cwd = true;
            }
            r = strv_push_owned(&cli->python_paths, &cli->n_python_paths,
                                path_join(have_cwd ? cwd : NULL, optarg));
            if (r < 0)
                goto nomem;
            cli->has_python_paths = true;
            break;
        case OPT_ENTRY:
            if (!entry_valid(optarg)) {
                snprintf(err, errlen, "--entry: expected MODULE:FUNCTION, got '%s'", optarg);
                return -EINVAL;
            }
            cli->entry = optarg;
            break;
        case OPT_NO_IMPORT:
            cli->no_import = true;
            break;
        case OPT_LOG_LEVEL:
            if (log_level_parse(optarg, &cli->log_level) < 0) {
                snprintf(err, errlen,
                         "--log-level: expected error, warn, info or debug, got '%s'", optarg);
                return -EINVAL;
            }
            cli->has_log_level = true;
            break;
        case OPT_CHECK_CONFIG:
            cli->check_config = true;
            break;
        case 'h':
            cli->help = true;
            break;
        case 'V':
            cli->version = true;
            break;
        case ':':
            if (optopt >= 256 || argv[optind - 1][1] == '-')
                snprintf(err, errlen, "option '--%s' requires an argument", option_name(optopt));
            else
                snprintf(err, errlen, "option '-%c' requires an argument", optopt);
            return -EINVAL;
        default:
            /* An unknown short option sets optopt to its letter; a known one here means
             * "--help=x", an argument given to an option that takes none. */
            if (optopt != 0 && (optopt >= 256 || strchr("cwshV", optopt) != NULL))
                snprintf(err, errlen, "option '--%s' does not take an argument",
                         option_name(optopt));
            else if (optopt != 0)
                snprintf(err, errlen, "unknown option '-%c'", optopt);
            else if (long_prefix_matches(argv[optind - 1]) > 1)
                snprintf(err, errlen, "ambiguous option '%s'", argv[optind - 1]);
            else
                snprintf(err, errlen, "unknown option '%s'", argv[optind - 1]);
            return -EINVAL;
        }
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument '%s'", argv[optind]);
        return -EINVAL;
    }
    return 0;

nomem:
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
}

static int replace_string(char **field, const char *value) {
    char *copy = strdup(value);
    if (copy == NULL)
        return -ENOMEM;
    free(*field);
    *field = copy;
    return 0;
}

int config_parse_args(struct config *cfg, int argc, char **argv, char *err, size_t errlen) {
    struct cli cli = {0};
    int r = cli_parse(&cli, argc, argv, err, errlen);
    if (r < 0)
        goto out;

    cfg->show_help |= cli.help;
    cfg->show_version |= cli.version;
    cfg->check_config |= cli.check_config;
    /* `pyhotd --help` must work whatever state the config file is in. */
    if (cli.help || cli.version)
        goto out;

    if (cli.config != NULL) {
        r = config_load_file(cfg, cli.config, err, errlen);
        if (r < 0)
            goto out;
    }

    if (cli.socket != NULL && (r = replace_string(&cfg->socket_path, cli.socket)) < 0)
        goto nomem;
    if (cli.entry != NULL && (r = replace_string(&cfg->entry, cli.entry)) < 0)
        goto nomem;
    if (cli.has_settle_ms)
        cfg->settle_ms = cli.settle_ms;
    if (cli.has_log_level)
        cfg->log_level = cli.log_level;
    if (cli.no_import)
        cfg->import = CONFIG_IMPORT_ON_DEMAND;
    if (cli.has_watch) {
        strv_free(&cfg->watch_roots, &cfg->n_watch_roots);
        cfg->watch_roots = cli.watch;
        cfg->n_watch_roots = cli.n_watch;
        cli.watch = NULL;
        cli.n_watch = 0;
    }
    if (cli.has_plugins) {
        strv_free(&cfg->plugin_dirs, &cfg->n_plugin_dirs);
        cfg->plugin_dirs = cli.plugins;
        cfg->n_plugin_dirs = cli.n_plugins;
        cli.plugins = NULL;
        cli.n_plugins = 0;
    }
    if (cli.has_python_paths) {
        strv_free(&cfg->python_paths, &cfg->n_python_paths);
        cfg->python_paths = cli.python_paths;
        cfg->n_python_paths = cli.n_python_paths;
        cli.python_paths = NULL;
        cli.n_python_paths = 0;
    }
    goto out;

nomem:
    snprintf(err, errlen, "out of memory");
out:
    cli_free(&cli);
    return r;
}

/* ---- the whole ----------------------------------------------------------------- */

void config_init(struct config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->log_level = LOG_LEVEL_INFO;
    cfg->settle_ms = 10;
    cfg->import = CONFIG_IMPORT_ON_DEMAND;
    cfg->defer_vcs_ms = 30000;
    cfg->poll_interval_ms = 300;
    cfg->reload_timeout_ms = 10000;
    cfg->strategy = CONFIG_STRATEGY_DEPENDENTS;
    cfg->exec_timeout_ms = 30000;
    cfg->run_prefork = 3;
    cfg->run_prefork_max_age_ms = 10000;
    cfg->max_clients = 64;
    cfg->max_output_bytes = 4194304;
    cfg->history_bytes = 8388608;
    cfg->request_timeout_ms = 10000;
    cfg->sandbox_pids = 64;
    cfg->sandbox_tmp_mb = 64;
}

void config_free(struct config *cfg) {
    if (cfg == NULL)
        return;
    free(cfg->config_path);
    free(cfg->socket_path);
    free(cfg->socket_group);
    free(cfg->entry);
    free(cfg->venv);
    free(cfg->plugin_pattern);
    free(cfg->plugin_api);
    strv_free(&cfg->plugin_dirs, &cfg->n_plugin_dirs);
    strv_free(&cfg->watch_roots, &cfg->n_watch_roots);
    strv_free(&cfg->include, &cfg->n_include);
    strv_free(&cfg->exclude, &cfg->n_exclude);
    strv_free(&cfg->poll_dirs, &cfg->n_poll_dirs);
    strv_free(&cfg->python_paths, &cfg->n_python_paths);
    strv_free(&cfg->preload, &cfg->n_preload);
    free(cfg->sandbox_user);
    strv_free(&cfg->sandbox_read, &cfg->n_sandbox_read);
    strv_free(&cfg->sandbox_write, &cfg->n_sandbox_write);
    config_init(cfg);
}

/* PEP 405: a virtual environment is a directory with pyvenv.cfg; its packages for this
 * interpreter are in lib/pythonX.Y/site-packages. One made for another Python version
 * would import extension modules built for another ABI, so it is refused. */
static int finish_venv(struct config *cfg, char *err, size_t errlen) {
    if (cfg->venv == NULL)
        return 0;
    char *real = realpath(cfg->venv, NULL);
    if (real == NULL) {
        int e = errno;
        snprintf(err, errlen, "venv %s: %s", cfg->venv, strerror(e));
        return -e;
    }
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof(path), "%s/pyvenv.cfg", real);
    if (stat(path, &st) < 0) {
        snprintf(err, errlen, "venv %s: no pyvenv.cfg there; not a virtual environment", cfg->venv);
        free(real);
        return -ENOENT;
    }
    snprintf(path, sizeof(path), "%s/lib/python%s/site-packages", real, PYHOT_PYTHON_VERSION);
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "venv %s: no lib/python%s/site-packages; it was made for another "
                 "Python than pyhotd's %s", cfg->venv, PYHOT_PYTHON_VERSION, PYHOT_PYTHON_VERSION);
        free(real);
        return -ENOENT;
    }
    free(cfg->venv);
    cfg->venv = real;
    return 0;
}

/* Replaces each directory of *list (as given) by its realpath, dropping duplicates; option
 * names the list in messages ("--watch"). */
static int finish_dirs(char ***list, size_t *count, const char *option, char *err, size_t errlen) {
    char **roots = NULL;
    size_t n = 0;
    int r = 0;

    for (size_t i = 0; i < *count; i++) {
        const char *given = (*list)[i];
        char *real = realpath(given, NULL);
        struct stat st;
        if (real == NULL || stat(real, &st) < 0) {
            r = -errno;
            snprintf(err, errlen, "%s %s: %s", option, given, strerror(errno));
            free(real);
            goto fail;
        }
        if (!S_ISDIR(st.st_mode)) {
            r = -ENOTDIR;
            snprintf(err, errlen, "%s %s: not a directory", option, given);
            free(real);
            goto fail;
        }
        if (strv_contains(roots, n, real)) {
            free(real);
            continue;
        }
        r = strv_push_owned(&roots, &n, real);
        if (r < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    strv_free(list, count);
    *list = roots;
    *count = n;
    return 0;

fail:
    strv_free(&roots, &n);
    return r;
}

/* socket_group: a group name (getgrnam_r(3)) or a decimal gid. */
static int finish_group(struct config *cfg, char *err, size_t errlen) {
    const char *name = cfg->socket_group;
    cfg->has_socket_gid = false;
    if (name == NULL)
        return 0;
    if (isdigit((unsigned char)name[0])) {
        char *end;
        errno = 0;
        unsigned long gid = strtoul(name, &end, 10);
        if (errno == 0 && *end == '\0' && gid < (unsigned long)UINT32_MAX) {
            cfg->socket_gid = (gid_t)gid;
            cfg->has_socket_gid = true;
            return 0;
        }
    }
    struct group grp, *found = NULL;
    char buf[16384];
    int e = getgrnam_r(name, &grp, buf, sizeof(buf), &found);
    if (found == NULL) {
        snprintf(err, errlen, "socket_group: no group named '%s'%s%s", name, e ? ": " : "",
                 e ? strerror(e) : "");
        return -EINVAL;
    }
    cfg->socket_gid = grp.gr_gid;
    cfg->has_socket_gid = true;
    return 0;
}

int config_finish(struct config *cfg, char *err, size_t errlen) {
    if (cfg->settle_ms > SETTLE_MS_MAX) {
        snprintf(err, errlen, "settle_ms: expected an integer from 0 to %u, got %u",
                 SETTLE_MS_MAX, cfg->settle_ms);
        return -EINVAL;
    }
    if (cfg->reload_timeout_ms < 1 || cfg->reload_timeout_ms > TIMEOUT_MS_MAX) {
        snprintf(err, errlen, "[reload] timeout_ms: expected an integer from 1 to %u, got %u",
                 TIMEOUT_MS_MAX, cfg->reload_timeout_ms);
        return -EINVAL;
    }
    if (cfg->exec_timeout_ms < 1 || cfg->exec_timeout_ms > TIMEOUT_MS_MAX) {
        snprintf(err, errlen, "[run] timeout_ms: expected an integer from 1 to %u, got %u",
                 TIMEOUT_MS_MAX, cfg->exec_timeout_ms);
        return -EINVAL;
    }
    if (cfg->max_clients < 1 || cfg->max_clients > MAX_CLIENTS_MAX) {
        snprintf(err, errlen, "[daemon] max_clients: expected an integer from 1 to %u, got %u",
                 MAX_CLIENTS_MAX, cfg->max_clients);
        return -EINVAL;
    }
    if (cfg->max_output_bytes < MAX_OUTPUT_MIN || cfg->max_output_bytes > MAX_OUTPUT_MAX) {
        snprintf(err, errlen, "[daemon] max_output_bytes: expected an integer from %u to %u, "
                 "got %u", MAX_OUTPUT_MIN, MAX_OUTPUT_MAX, cfg->max_output_bytes);
        return -EINVAL;
    }
    if (cfg->history_bytes > HISTORY_BYTES_MAX) {
        snprintf(err, errlen, "[daemon] history_bytes: expected an integer from 0 to %u, got %u",
                 HISTORY_BYTES_MAX, cfg->history_bytes);
        return -EINVAL;
    }
    if (cfg->request_timeout_ms < 1 || cfg->request_timeout_ms > TIMEOUT_MS_MAX) {
        snprintf(err, errlen, "[daemon] request_timeout_ms: expected an integer from 1 to %u, "
                 "got %u", TIMEOUT_MS_MAX, cfg->request_timeout_ms);
        return -EINVAL;
    }
    if (cfg->entry != NULL && !entry_valid(cfg->entry)) {
        snprintf(err, errlen, "entry: expected MODULE:FUNCTION, got '%s'", cfg->entry);
        return -EINVAL;
    }

    if (cfg->plugin_api != NULL && !entry_valid(cfg->plugin_api)) {
        snprintf(err, errlen, "[plugins] api: expected MODULE:ATTR, got '%s'", cfg->plugin_api);
        return -EINVAL;
    }
    if (cfg->plugin_pattern != NULL && !pattern_valid(cfg->plugin_pattern)) {
        snprintf(err, errlen, "[plugins] pattern: expected a file-name glob without '/', got '%s'",
                 cfg->plugin_pattern);
        return -EINVAL;
    }
    if (cfg->plugin_pattern == NULL && (cfg->plugin_pattern = strdup(CONFIG_PLUGIN_PATTERN)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }

    if (cfg->poll_interval_ms < POLL_INTERVAL_MS_MIN ||
        cfg->poll_interval_ms > POLL_INTERVAL_MS_MAX) {
        snprintf(err, errlen, "poll_interval_ms: expected an integer from %u to %u, got %u",
                 POLL_INTERVAL_MS_MIN, POLL_INTERVAL_MS_MAX, cfg->poll_interval_ms);
        return -EINVAL;
    }
    /* Compared with the roots, which are realpath'd; a poll directory that does not exist
     * yet (a mount point to come) stays as given. */
    for (size_t i = 0; i < cfg->n_poll_dirs; i++) {
        char *real = realpath(cfg->poll_dirs[i], NULL);
        if (real) {
            free(cfg->poll_dirs[i]);
            cfg->poll_dirs[i] = real;
        }
    }
    int r = finish_dirs(&cfg->watch_roots, &cfg->n_watch_roots, "--watch", err, errlen);
    if (r < 0)
        return r;
    r = finish_dirs(&cfg->plugin_dirs, &cfg->n_plugin_dirs, "--plugins", err, errlen);
    if (r < 0)
        return r;
    r = finish_group(cfg, err, errlen);
    if (r < 0)
        return r;
    r = finish_venv(cfg, err, errlen);
    if (r < 0)
        return r;
    /* A root daemon's sandboxed runs become this user, resolved here once (NSS), so that a
     * name that does not resolve (or root) is a config error now, not a failure of every
     * sandboxed run later; a SIGHUP resolves it again. */
    cfg->sandbox_change_user = geteuid() == 0;
    if (cfg->sandbox_change_user) {
        char why[512];
        r = sandbox_resolve_user(cfg->sandbox_user ? cfg->sandbox_user : "nobody",
                                 &cfg->sandbox_uid, &cfg->sandbox_gid, why, sizeof(why));
        if (r < 0) {
            snprintf(err, errlen, "[sandbox] user: %s", why);
            return r;
        }
    }

    /* Checked here rather than at bind(2) so that a bad path is a config error (exit 2)
     * that --check-config reports too. */
    if (cfg->socket_path == NULL) {
        char path[PATH_MAX];
        r = protocol_default_socket_path(path, sizeof(path));
        if (r < 0) {
            snprintf(err, errlen, "the default socket path (from PYHOT_SOCKET or "
                     "XDG_RUNTIME_DIR) is longer than %zu bytes; set --socket",
                     SUN_PATH_MAX - 1);
            return r;
        }
        cfg->socket_path = strdup(path);
        if (cfg->socket_path == NULL) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
    } else if (strlen(cfg->socket_path) >= SUN_PATH_MAX) {
        snprintf(err, errlen, "socket path %s is longer than %zu bytes", cfg->socket_path,
                 SUN_PATH_MAX - 1);
        return -ENAMETOOLONG;
    }
    return 0;
}

const char *config_usage(void) {
    return
        "pyhotd - hot-reload daemon for Python: watches script directories and reloads\n"
        "the changed modules in one persistent interpreter.\n"
        "\n"
        "Usage: pyhotd [--config FILE] [--watch DIR]... [--socket PATH] [--settle-ms N]\n"
        "              [--python-path DIR]... [--entry MODULE:FUNCTION]\n"
        "              [--plugins DIR]... [--no-import] [--log-level LEVEL]\n"
        "              [--check-config] [--version] [--help]\n"
        "\n"
        "Options:\n"
        "  -c, --config FILE       read FILE (INI; see pyhotd.conf) before the other\n"
        "                          options, which override it. Default: none.\n"
        "  -w, --watch DIR         watch DIR recursively and put it on sys.path; its\n"
        "                          modules reload once loaded. Repeatable; replaces the\n"
        "                          file's [watch] root list. Default: none.\n"
        "  -s, --socket PATH       control socket. Default: $PYHOT_SOCKET, else\n"
        "                          $XDG_RUNTIME_DIR/pyhot/pyhotd.sock, else\n"
        "                          /run/pyhotd/pyhotd.sock for root, else\n"
        "                          /tmp/pyhot-UID/pyhotd.sock.\n"
        "      --settle-ms N       settle window: a batch whose writes are not all\n"
        "                          finished, or of many files, waits N ms (0..60000)\n"
        "                          after the last change. Default: 10.\n"
        "      --python-path DIR   add DIR to sys.path after the watch roots.\n"
        "                          Repeatable; replaces the file's [python] path list.\n"
        "                          Default: none.\n"
        "      --entry MODULE:FUNCTION\n"
        "                          after start, call FUNCTION of MODULE on a thread of\n"
        "                          its own (the app's main). Default: none.\n"
        "      --plugins DIR       load DIR's plugin files (plugin_*.py) at start and\n"
        "                          again when they change. Repeatable; replaces the\n"
        "                          file's [plugins] dir list. Default: none.\n"
        "      --no-import         import nothing at start, even with [watch] import =\n"
        "                          all: modules load when the app, exec or run import\n"
        "                          them. Default: as [watch] import says.\n"
        "      --log-level LEVEL   error, warn, info or debug. Default: info.\n"
        "      --check-config      validate the configuration and exit: 0 when it is\n"
        "                          valid, 2 with the error when it is not.\n"
        "  -V, --version           print the version and exit.\n"
        "  -h, --help              print this help and exit.\n"
        "\n"
        "Exit status:\n"
        "  0  clean stop (SIGTERM, SIGINT, or the shutdown command)\n"
        "  1  runtime failure\n"
        "  2  usage or configuration error\n"
        "\n"
        "Environment:\n"
        "  PYHOT_SOCKET    the control socket when neither --socket nor [daemon] socket\n"
        "                  names one.\n"
        "  JOURNAL_STREAM  set by systemd when stderr is the journal: log lines then\n"
        "                  carry <N> priority prefixes and no timestamp.\n";
}
