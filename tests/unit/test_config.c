/* Unit tests of lib/config.c: defaults, the INI file, the command line, config_finish. */
#define _XOPEN_SOURCE 700 /* nftw(3), for removing the temporary directories */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

/* snprintf that fails the test instead of truncating. */
static void fmt(char *buf, size_t len, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static void fmt(char *buf, size_t len, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(buf, len, format, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < len);
}

/* A temporary directory per test: dir (its realpath) holds conf, the file under test. */
struct fixture {
    char dir[PATH_MAX];
    char conf[PATH_MAX];
    char cwd[PATH_MAX];
    struct config cfg;
    char err[1024];
};

static int setup(void **state) {
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    char tmpl[] = "/tmp/pyhot-test-config-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    assert_non_null(realpath(tmpl, fx->dir));
    fmt(fx->conf, sizeof(fx->conf), "%s/pyhotd.conf", fx->dir);
    assert_non_null(getcwd(fx->cwd, sizeof(fx->cwd)));
    config_init(&fx->cfg);
    *state = fx;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static int teardown(void **state) {
    struct fixture *fx = *state;
    config_free(&fx->cfg);
    assert_int_equal(chdir(fx->cwd), 0);
    assert_int_equal(nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    free(fx);
    unsetenv("PYHOT_SOCKET");
    return 0;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void make_dir(struct fixture *fx, const char *name) {
    char path[PATH_MAX];
    fmt(path, sizeof(path), "%s/%s", fx->dir, name);
    assert_int_equal(mkdir(path, 0700), 0);
}

static char *in_dir(struct fixture *fx, const char *name) {
    static char path[PATH_MAX];
    fmt(path, sizeof(path), "%s/%s", fx->dir, name);
    return path;
}

static int load(struct fixture *fx, const char *text) {
    write_file(fx->conf, text);
    fx->err[0] = '\0';
    return config_load_file(&fx->cfg, fx->conf, fx->err, sizeof(fx->err));
}

/* argv for config_parse_args; getopt_long permutes the array, so it must be writable. */
#define ARGS(...) ((char *[]){"pyhotd", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"pyhotd", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(fx, ...) \
    config_parse_args(&(fx)->cfg, ARGC(__VA_ARGS__), ARGS(__VA_ARGS__), (fx)->err, \
                      sizeof((fx)->err))

static void test_defaults(void **state) {
    struct config cfg;
    memset(&cfg, 0xA5, sizeof(cfg));
    config_init(&cfg);
    assert_null(cfg.config_path);
    assert_null(cfg.socket_path);
    assert_int_equal(cfg.log_level, LOG_LEVEL_INFO);
    assert_null(cfg.watch_roots);
    assert_int_equal(cfg.n_watch_roots, 0);
    assert_int_equal(cfg.settle_ms, 10);
    assert_int_equal(cfg.import, CONFIG_IMPORT_ON_DEMAND);
    assert_null(cfg.include);
    assert_int_equal(cfg.n_include, 0);
    assert_null(cfg.exclude);
    assert_int_equal(cfg.n_exclude, 0);
    assert_null(cfg.python_paths);
    assert_int_equal(cfg.n_python_paths, 0);
    assert_null(cfg.entry);
    assert_int_equal(cfg.reload_timeout_ms, 10000);
    assert_int_equal(cfg.strategy, CONFIG_STRATEGY_DEPENDENTS);
    assert_int_equal(cfg.mode, CONFIG_MODE_DEFINITIONS);
    assert_int_equal(cfg.exec_timeout_ms, 30000);
    assert_int_equal(cfg.sandbox_network, CONFIG_NETWORK_NONE);
    assert_null(cfg.sandbox_user);
    assert_null(cfg.sandbox_read);
    assert_null(cfg.sandbox_write);
    assert_int_equal(cfg.sandbox_pids, 64);
    assert_int_equal(cfg.sandbox_tmp_mb, 64);
    assert_int_equal(cfg.backend, CONFIG_BACKEND_INOTIFY);
    assert_null(cfg.poll_dirs);
    assert_int_equal(cfg.poll_interval_ms, 300);
    assert_false(cfg.check_config);
    assert_false(cfg.show_help);
    assert_false(cfg.show_version);
    config_free(&cfg);
    config_free(&cfg);
    config_free(NULL);
}

static void test_full_file(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "src");
    make_dir(fx, "plugins");
    char text[4096];
    fmt(text, sizeof(text),
             "; pyhotd configuration\n"
             "[daemon]\n"
             "socket = run/pyhotd.sock\n"
             "log_level = DEBUG\n"
             "\n"
             "[watch]\n"
             "root = src\n"
             "root = %s/plugins   ; absolute\n"
             "root = ./src/\n"
             "settle_ms = 0\n"
             "import = none\n"
             "include = *.py, pkg/*.pyi\textra_*\n"
             "include = more.py\n"
             "exclude = build/*\n"
             "exclude = ,test_*,\n"
             "\n"
             "[python]\n"
             "path = lib\n"
             "path = ./vendor//pure/\n"
             "path = /opt/py\n"
             "entry = app.main:run\n"
             "\n"
             "[reload]\n"
             "timeout_ms = 86400000\n"
             "strategy = module\n"
             "mode = module\n"
             "\n"
             "[run]\n"
             "timeout_ms = 1\n"
             "\n"
             "[sandbox]\n"
             "network = loopback\n"
             "user = daemon\n"
             "read = data\n"
             "read = /srv/models\n"
             "write = out\n"
             "pids = 8\n"
             "tmp_size_mb = 16\n",
             fx->dir);
    assert_int_equal(load(fx, text), 0);
    struct config *cfg = &fx->cfg;

    assert_string_equal(cfg->config_path, fx->conf);
    assert_string_equal(cfg->socket_path, in_dir(fx, "run/pyhotd.sock"));
    assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);

    /* Relative roots resolve against the file's directory; a duplicate is kept once. */
    assert_int_equal(cfg->n_watch_roots, 2);
    assert_string_equal(cfg->watch_roots[0], in_dir(fx, "src"));
    assert_string_equal(cfg->watch_roots[1], in_dir(fx, "plugins"));
    assert_null(cfg->watch_roots[2]);
    assert_int_equal(cfg->settle_ms, 0);
    assert_int_equal(cfg->import, CONFIG_IMPORT_ON_DEMAND);

    assert_int_equal(cfg->n_include, 4);
    assert_string_equal(cfg->include[0], "*.py");
    assert_string_equal(cfg->include[1], "pkg/*.pyi");
    assert_string_equal(cfg->include[2], "extra_*");
    assert_string_equal(cfg->include[3], "more.py");
    assert_null(cfg->include[4]);
    assert_int_equal(cfg->n_exclude, 2);
    assert_string_equal(cfg->exclude[0], "build/*");
    assert_string_equal(cfg->exclude[1], "test_*");

    assert_int_equal(cfg->n_python_paths, 3);
    assert_string_equal(cfg->python_paths[0], in_dir(fx, "lib"));
    assert_string_equal(cfg->python_paths[1], in_dir(fx, "vendor/pure"));
    assert_string_equal(cfg->python_paths[2], "/opt/py");
    assert_null(cfg->python_paths[3]);
    assert_string_equal(cfg->entry, "app.main:run");

    assert_int_equal(cfg->reload_timeout_ms, 86400000);
    assert_int_equal(cfg->strategy, CONFIG_STRATEGY_MODULE);
    assert_int_equal(cfg->mode, CONFIG_MODE_MODULE);
    assert_int_equal(cfg->exec_timeout_ms, 1);

    assert_int_equal(cfg->sandbox_network, CONFIG_NETWORK_LOOPBACK);
    assert_string_equal(cfg->sandbox_user, "daemon");
    assert_int_equal(cfg->n_sandbox_read, 2);
    assert_string_equal(cfg->sandbox_read[0], in_dir(fx, "data"));
    assert_string_equal(cfg->sandbox_read[1], "/srv/models");
    assert_int_equal(cfg->n_sandbox_write, 1);
    assert_string_equal(cfg->sandbox_write[0], in_dir(fx, "out"));
    assert_int_equal(cfg->sandbox_pids, 8);
    assert_int_equal(cfg->sandbox_tmp_mb, 16);

    assert_int_equal(config_finish(cfg, fx->err, sizeof(fx->err)), 0);
    assert_int_equal(cfg->n_watch_roots, 2);
    assert_string_equal(cfg->socket_path, in_dir(fx, "run/pyhotd.sock"));
}

static void test_relative_config_path(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "etc");
    make_dir(fx, "etc/scripts");
    write_file(in_dir(fx, "etc/p.conf"), "[watch]\nroot = scripts\n[python]\npath = ../lib\n");
    assert_int_equal(chdir(fx->dir), 0);
    assert_int_equal(config_load_file(&fx->cfg, "etc/p.conf", fx->err, sizeof(fx->err)), 0);
    assert_string_equal(fx->cfg.config_path, "etc/p.conf");
    assert_int_equal(fx->cfg.n_watch_roots, 1);
    assert_string_equal(fx->cfg.watch_roots[0], in_dir(fx, "etc/scripts"));
    assert_string_equal(fx->cfg.python_paths[0], in_dir(fx, "etc/../lib"));
}

struct bad_case {
    const char *text;
    int line;
    const char *message;
};

static void test_file_errors(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "src");
    write_file(in_dir(fx, "afile"), "x\n");
    char long_line[400];
    fmt(long_line, sizeof(long_line), "[python]\npath = /%0300d\n", 0);

    static const struct bad_case cases[] = {
        {"[daemon]\nlog_level = info\n[bogus]\nx = 1\n", 3, "unknown section [bogus]"},
        {"[watch]\nsettle_ms = 5\n[bogus]\n", 3, "unknown section [bogus]"},
        {"[watch]\n\nsettle = 5\n", 3, "unknown key 'settle' in section [watch]"},
        {"[daemon]\nroot = src\n", 2, "unknown key 'root' in section [daemon]"},
        {"settle_ms = 5\n", 1, "key 'settle_ms' outside any section"},
        {"[watch]\nsettle_ms = abc\n", 2,
         "settle_ms: expected an integer from 0 to 60000, got 'abc'"},
        {"[watch]\nsettle_ms = 12ms\n", 2,
         "settle_ms: expected an integer from 0 to 60000, got '12ms'"},
        {"[watch]\nsettle_ms = -1\n", 2,
         "settle_ms: expected an integer from 0 to 60000, got '-1'"},
        {"[watch]\nsettle_ms = +5\n", 2,
         "settle_ms: expected an integer from 0 to 60000, got '+5'"},
        {"[watch]\nsettle_ms =\n", 2, "settle_ms: expected an integer from 0 to 60000, got ''"},
        {"[watch]\n# comment\nsettle_ms = 60001\n", 3,
         "settle_ms: expected an integer from 0 to 60000, got '60001'"},
        {"[watch]\nsettle_ms = 99999999999999999999999\n", 2,
         "settle_ms: expected an integer from 0 to 60000, got '99999999999999999999999'"},
        {"[reload]\ntimeout_ms = 0\n", 2,
         "timeout_ms: expected an integer from 1 to 86400000, got '0'"},
        {"[run]\ntimeout_ms = 86400001\n", 2,
         "timeout_ms: expected an integer from 1 to 86400000, got '86400001'"},
        {"[sandbox]\nnetwork = host\n", 2, "network: expected none or loopback, got 'host'"},
        {"[sandbox]\npids = 0\n", 2, "pids: expected an integer from 1 to 65536, got '0'"},
        {"[sandbox]\ntmp_size_mb = 65537\n", 2,
         "tmp_size_mb: expected an integer from 1 to 65536, got '65537'"},
        {"[daemon]\nlog_level = loud\n", 2,
         "log_level: expected error, warn, info or debug, got 'loud'"},
        {"[watch]\nimport = some\n", 2, "import: expected on-demand or all, got 'some'"},
        {"[reload]\nmode = lines\n", 2, "mode: expected definitions or module, got 'lines'"},
        {"[watch]\nbackend = kqueue\n", 2, "backend: expected inotify, uv or poll, got 'kqueue'"},
        {"[watch]\npoll_interval_ms = 10\n", 2,
         "poll_interval_ms: expected an integer from 20 to 60000, got '10'"},
        {"[watch]\npoll =\n", 2, "poll: empty value"},
        {"[reload]\nstrategy = all\n", 2, "strategy: expected dependents or module, got 'all'"},
        {"[python]\nentry = app\n", 2, "entry: expected MODULE:FUNCTION, got 'app'"},
        {"[python]\nentry = :main\n", 2, "entry: expected MODULE:FUNCTION, got ':main'"},
        {"[python]\nentry = app:\n", 2, "entry: expected MODULE:FUNCTION, got 'app:'"},
        {"[python]\nentry = a:b:c\n", 2, "entry: expected MODULE:FUNCTION, got 'a:b:c'"},
        {"[watch]\nroot = src\nroot = missing\n", 3, "root = missing: No such file or directory"},
        {"[watch]\nroot = afile\n", 2, "root = afile: not a directory"},
        {"[watch]\ninclude = , ,\n", 2, "include: expected one or more globs"},
        {"[daemon]\nsocket =\n", 2, "socket: empty value"},
        {"[watch]\nsettle_ms 5\n", 2, "syntax error: expected [section] or key = value"},
        {"[watch\nsettle_ms = 5\n", 1, "syntax error: expected [section] or key = value"},
        /* inih keeps going after an error; the first one is reported, whatever its kind. */
        {"[watch]\nbogus = 1\njunk\n", 2, "unknown key 'bogus' in section [watch]"},
        {"[watch]\njunk\nbogus = 1\n", 2, "syntax error: expected [section] or key = value"},
        {NULL, 2, "line longer than 199 bytes"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *text = cases[i].text != NULL ? cases[i].text : long_line;
        config_free(&fx->cfg);
        int r = load(fx, text);
        char want[1024];
        fmt(want, sizeof(want), "%s:%d: %s", fx->conf, cases[i].line, cases[i].message);
        if (r != -EINVAL || strcmp(fx->err, want) != 0)
            fail_msg("case %zu: got %d '%s', want '%s'", i, r, fx->err, want);
    }
}

static void test_poll_keys(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "share");
    assert_int_equal(load(fx, "[watch]\nbackend = poll\npoll = share\npoll = /mnt/later\n"
                              "poll_interval_ms = 500\n"), 0);
    assert_int_equal(fx->cfg.backend, CONFIG_BACKEND_POLL);
    assert_int_equal(fx->cfg.poll_interval_ms, 500);
    assert_int_equal(fx->cfg.n_poll_dirs, 2);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), 0);
    char *real = realpath(in_dir(fx, "share"), NULL);
    assert_non_null(real);
    assert_string_equal(fx->cfg.poll_dirs[0], real);  /* realpath'd, to compare with roots */
    assert_string_equal(fx->cfg.poll_dirs[1], "/mnt/later");  /* not there yet: as given */
    free(real);
}

static void test_unopenable_file(void **state) {
    struct fixture *fx = *state;
    const char *missing = in_dir(fx, "nope.conf");
    char want[PATH_MAX + 64];
    assert_int_equal(config_load_file(&fx->cfg, missing, fx->err, sizeof(fx->err)), -ENOENT);
    fmt(want, sizeof(want), "%s: No such file or directory", missing);
    assert_string_equal(fx->err, want);

    assert_int_equal(config_load_file(&fx->cfg, fx->dir, fx->err, sizeof(fx->err)), -EISDIR);
    fmt(want, sizeof(want), "%s: Is a directory", fx->dir);
    assert_string_equal(fx->err, want);

    /* Through the command line: the same error, and nothing else applied. */
    assert_int_equal(PARSE(fx, "--config", (char *)missing, "--settle-ms", "7"), -ENOENT);
    fmt(want, sizeof(want), "%s: No such file or directory", missing);
    assert_string_equal(fx->err, want);
    assert_int_equal(fx->cfg.settle_ms, 10);
}

static void test_args_override_file(void **state) {
    struct fixture *fx = *state;
    write_file(fx->conf,
               "[daemon]\nsocket = /tmp/file.sock\nlog_level = warn\n"
               "[watch]\nsettle_ms = 50\nimport = all\n"
               "[python]\nentry = app:main\n"
               "[reload]\ntimeout_ms = 500\n");
    assert_int_equal(PARSE(fx, "--settle-ms", "20", "-s", "/tmp/cli.sock", "--log-level",
                           "debug", "--no-import", "--check-config", "-c", fx->conf),
                     0);
    struct config *cfg = &fx->cfg;
    assert_string_equal(cfg->config_path, fx->conf);
    assert_int_equal(cfg->settle_ms, 20);
    assert_string_equal(cfg->socket_path, "/tmp/cli.sock");
    assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
    assert_int_equal(cfg->import, CONFIG_IMPORT_ON_DEMAND);
    assert_true(cfg->check_config);
    /* What the command line did not name keeps the file's value. */
    assert_string_equal(cfg->entry, "app:main");
    assert_int_equal(cfg->reload_timeout_ms, 500);

    assert_int_equal(PARSE(fx, "--config", fx->conf, "--entry", "other.mod:start"), 0);
    assert_string_equal(cfg->entry, "other.mod:start");
    assert_string_equal(cfg->socket_path, "/tmp/file.sock");
}

static void test_list_replacement(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "a");
    make_dir(fx, "b");
    make_dir(fx, "c");
    write_file(fx->conf, "[watch]\nroot = a\nroot = b\n[python]\npath = p1\npath = p2\n");

    /* Without --watch the file's lists stand. */
    assert_int_equal(PARSE(fx, "--config", fx->conf), 0);
    assert_int_equal(fx->cfg.n_watch_roots, 2);
    assert_int_equal(fx->cfg.n_python_paths, 2);
    config_free(&fx->cfg);

    /* With it the command line's list replaces the file's, not adds to it. */
    char c_dir[PATH_MAX];
    fmt(c_dir, sizeof(c_dir), "%s", in_dir(fx, "c"));
    assert_int_equal(PARSE(fx, "-w", c_dir, "--config", fx->conf, "--python-path", "/x",
                           "--python-path", "/y/"),
                     0);
    assert_int_equal(fx->cfg.n_watch_roots, 1);
    assert_string_equal(fx->cfg.watch_roots[0], c_dir);
    assert_null(fx->cfg.watch_roots[1]);
    assert_int_equal(fx->cfg.n_python_paths, 2);
    assert_string_equal(fx->cfg.python_paths[0], "/x");
    assert_string_equal(fx->cfg.python_paths[1], "/y");
    assert_null(fx->cfg.python_paths[2]);

    /* Repeated --watch accumulates. */
    config_free(&fx->cfg);
    assert_int_equal(PARSE(fx, "--config", fx->conf, "--watch", in_dir(fx, "a"), "--watch",
                           c_dir),
                     0);
    assert_int_equal(fx->cfg.n_watch_roots, 2);
    assert_string_equal(fx->cfg.watch_roots[1], c_dir);
}

static void test_relative_args(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "src");
    assert_int_equal(chdir(fx->dir), 0);
    assert_int_equal(PARSE(fx, "--watch", "src", "--watch", "./src/", "--python-path", "lib/./x"),
                     0);
    assert_string_equal(fx->cfg.python_paths[0], in_dir(fx, "lib/x"));

    /* Roots resolve against the cwd in config_finish(); the duplicate goes. */
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), 0);
    assert_int_equal(fx->cfg.n_watch_roots, 1);
    assert_string_equal(fx->cfg.watch_roots[0], in_dir(fx, "src"));
}

static void test_help_version(void **state) {
    struct fixture *fx = *state;
    assert_int_equal(PARSE(fx, "--help"), 0);
    assert_true(fx->cfg.show_help);
    assert_false(fx->cfg.show_version);
    config_free(&fx->cfg);

    assert_int_equal(PARSE(fx, "-h"), 0);
    assert_true(fx->cfg.show_help);
    config_free(&fx->cfg);

    assert_int_equal(PARSE(fx, "--version"), 0);
    assert_true(fx->cfg.show_version);
    assert_false(fx->cfg.show_help);
    config_free(&fx->cfg);

    assert_int_equal(PARSE(fx, "-V"), 0);
    assert_true(fx->cfg.show_version);
    config_free(&fx->cfg);

    /* --help works whatever the config file's state. */
    assert_int_equal(PARSE(fx, "--config", in_dir(fx, "missing.conf"), "--help"), 0);
    assert_true(fx->cfg.show_help);

    const char *usage = config_usage();
    /* The synopsis (DESIGN.md's command line), wrapped to fit 80 columns. */
    assert_non_null(strstr(usage,
        "\nUsage: pyhotd [--config FILE] [--watch DIR]... [--socket PATH] [--settle-ms N]\n"
        "              [--python-path DIR]... [--entry MODULE:FUNCTION]\n"
        "              [--plugins DIR]... [--no-import] [--log-level LEVEL]\n"
        "              [--check-config] [--version] [--help]\n"));
    for (const char *line = usage; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > 80)
            fail_msg("a line of %zu columns: %.*s", len, (int)len, line);
        line += len + (end != NULL);
    }
    static const char *const words[] = {
        "--config FILE", "--watch DIR", "--socket PATH", "--settle-ms N", "--python-path DIR",
        "--entry MODULE:FUNCTION", "--plugins DIR", "--no-import", "--log-level LEVEL", "--check-config",
        "--version", "--help", "Default: 10", "Default: info", "PYHOT_SOCKET",
        "JOURNAL_STREAM", "0  clean stop", "1  runtime failure", "2  usage or configuration error",
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strstr(usage, words[i]) == NULL)
            fail_msg("usage lacks '%s'", words[i]);
}

struct arg_case {
    const char *args[4];
    const char *message;
};

static void test_bad_args(void **state) {
    struct fixture *fx = *state;
    static const struct arg_case cases[] = {
        {{"--bogus"}, "unknown option '--bogus'"},
        {{"-x"}, "unknown option '-x'"},
        {{"--s", "x"}, "ambiguous option '--s'"},
        {{"--watch"}, "option '--watch' requires an argument"},
        {{"-s"}, "option '-s' requires an argument"},
        {{"--settle-ms"}, "option '--settle-ms' requires an argument"},
        {{"--help=yes"}, "option '--help' does not take an argument"},
        {{"--no-import=1"}, "option '--no-import' does not take an argument"},
        {{"stray"}, "unexpected argument 'stray'"},
        {{"--settle-ms", "abc"}, "--settle-ms: expected an integer from 0 to 60000, got 'abc'"},
        {{"--settle-ms", "-1"}, "--settle-ms: expected an integer from 0 to 60000, got '-1'"},
        {{"--settle-ms", "60001"}, "--settle-ms: expected an integer from 0 to 60000, got '60001'"},
        {{"--settle-ms", "1e3"}, "--settle-ms: expected an integer from 0 to 60000, got '1e3'"},
        {{"--settle-ms", ""}, "--settle-ms: expected an integer from 0 to 60000, got ''"},
        {{"--log-level", "loud"}, "--log-level: expected error, warn, info or debug, got 'loud'"},
        {{"--entry", "app"}, "--entry: expected MODULE:FUNCTION, got 'app'"},
        {{"--entry", "app:main:x"}, "--entry: expected MODULE:FUNCTION, got 'app:main:x'"},
        {{"--watch", ""}, "--watch: empty directory name"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *argv[6] = {"pyhotd"};
        int argc = 1;
        for (size_t k = 0; k < 4 && cases[i].args[k] != NULL; k++)
            argv[argc++] = (char *)cases[i].args[k];
        config_free(&fx->cfg);
        fx->err[0] = '\0';
        int r = config_parse_args(&fx->cfg, argc, argv, fx->err, sizeof(fx->err));
        if (r != -EINVAL || strcmp(fx->err, cases[i].message) != 0)
            fail_msg("case %zu: got %d '%s', want '%s'", i, r, fx->err, cases[i].message);
    }

    /* Limits are accepted; getopt state does not leak from one call into the next. */
    assert_int_equal(PARSE(fx, "--settle-ms", "60000"), 0);
    assert_int_equal(fx->cfg.settle_ms, 60000);
    assert_int_equal(PARSE(fx, "--settle-ms", "0", "--log-level", "WARNING"), 0);
    assert_int_equal(fx->cfg.settle_ms, 0);
    assert_int_equal(fx->cfg.log_level, LOG_LEVEL_WARN);
}

static void test_finish(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "src");
    write_file(in_dir(fx, "afile"), "");
    char want[PATH_MAX + 64];

    setenv("PYHOT_SOCKET", "/tmp/pyhot-test.sock", 1);
    assert_int_equal(PARSE(fx, "--watch", in_dir(fx, "src")), 0);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), 0);
    assert_string_equal(fx->cfg.socket_path, "/tmp/pyhot-test.sock");
    assert_string_equal(fx->cfg.watch_roots[0], in_dir(fx, "src"));
    config_free(&fx->cfg);

    assert_int_equal(PARSE(fx, "--watch", in_dir(fx, "src"), "--watch", "/nonexistent/pyhot"), 0);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -ENOENT);
    assert_string_equal(fx->err, "--watch /nonexistent/pyhot: No such file or directory");
    config_free(&fx->cfg);

    assert_int_equal(PARSE(fx, "--watch", in_dir(fx, "afile")), 0);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -ENOTDIR);
    fmt(want, sizeof(want), "--watch %s: not a directory", in_dir(fx, "afile"));
    assert_string_equal(fx->err, want);
    config_free(&fx->cfg);

    /* Values set by a program rather than parsed are checked too. */
    fx->cfg.entry = strdup("nocolon");
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -EINVAL);
    assert_string_equal(fx->err, "entry: expected MODULE:FUNCTION, got 'nocolon'");
    config_free(&fx->cfg);

    fx->cfg.settle_ms = 60001;
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -EINVAL);
    config_free(&fx->cfg);

    char long_path[200];
    memset(long_path, 'x', sizeof(long_path) - 1);
    long_path[0] = '/';
    long_path[sizeof(long_path) - 1] = '\0';
    assert_int_equal(PARSE(fx, "--socket", long_path), 0);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -ENAMETOOLONG);
    config_free(&fx->cfg);

    setenv("PYHOT_SOCKET", long_path, 1);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -ENAMETOOLONG);
    assert_null(fx->cfg.socket_path);
}

/* config/pyhotd.conf parses as shipped, and the defaults it documents are the real ones. */
static void test_shipped_file(void **state) {
    struct fixture *fx = *state;
    char shipped[PATH_MAX];
    const char *me = __FILE__;
    const char *tail = strstr(me, "tests/unit/test_config.c");
    assert_non_null(tail);
    fmt(shipped, sizeof(shipped), "%.*sconfig/pyhotd.conf", (int)(tail - me), me);
    /* CMake compiles with absolute paths; a relative __FILE__ only works from the top. */
    if (me[0] != '/' && access(shipped, R_OK) != 0)
        skip();
    assert_int_equal(config_load_file(&fx->cfg, shipped, fx->err, sizeof(fx->err)), 0);
    struct config defaults;
    config_init(&defaults);
    assert_null(fx->cfg.socket_path);
    assert_int_equal(fx->cfg.n_watch_roots, 0);
    assert_int_equal(fx->cfg.n_include, 0);
    config_free(&fx->cfg);

    /* Uncomment every example but the roots and plugin dirs (they name directories that need not exist). */
    FILE *in = fopen(shipped, "r");
    FILE *out = fopen(fx->conf, "w");
    assert_non_null(in);
    assert_non_null(out);
    char line[512];
    int uncommented = 0;
    while (fgets(line, sizeof(line), in) != NULL) {
        bool example = line[0] == ';' && strncmp(line, ";root", 5) != 0 &&
                       strncmp(line, ";dir", 4) != 0;
        fputs(example ? line + 1 : line, out);
        uncommented += example;
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
    assert_true(uncommented >= 11);

    assert_int_equal(config_load_file(&fx->cfg, fx->conf, fx->err, sizeof(fx->err)), 0);
    assert_string_equal(fx->cfg.socket_path, "/run/pyhotd/pyhotd.sock");
    assert_int_equal(fx->cfg.log_level, defaults.log_level);
    assert_int_equal(fx->cfg.settle_ms, defaults.settle_ms);
    assert_int_equal(fx->cfg.import, defaults.import);
    assert_int_equal(fx->cfg.n_include, 1);
    assert_string_equal(fx->cfg.include[0], "*.py");
    assert_int_equal(fx->cfg.n_exclude, 2);
    assert_int_equal(fx->cfg.n_python_paths, 1);
    assert_string_equal(fx->cfg.entry, "app:main");
    assert_int_equal(fx->cfg.reload_timeout_ms, defaults.reload_timeout_ms);
    assert_int_equal(fx->cfg.strategy, defaults.strategy);
    assert_int_equal(fx->cfg.exec_timeout_ms, defaults.exec_timeout_ms);
    assert_int_equal(fx->cfg.sandbox_network, defaults.sandbox_network);
    assert_string_equal(fx->cfg.sandbox_user, "nobody");
    assert_int_equal(fx->cfg.n_sandbox_read, 1);
    assert_int_equal(fx->cfg.n_sandbox_write, 1);
    assert_int_equal(fx->cfg.sandbox_pids, defaults.sandbox_pids);
    assert_int_equal(fx->cfg.sandbox_tmp_mb, defaults.sandbox_tmp_mb);
    assert_string_equal(fx->cfg.plugin_pattern, CONFIG_PLUGIN_PATTERN);
    assert_string_equal(fx->cfg.plugin_api, "app:PLUGIN_API");
}

static void test_plugins(void **state) {
    struct fixture *fx = *state;
    make_dir(fx, "p1");
    make_dir(fx, "p2");
    assert_int_equal(load(fx, "[plugins]\ndir = p1\ndir = p2\ndir = p1\npattern = ext_*.py\n"
                              "api = host.api:API\n"), 0);
    assert_int_equal(fx->cfg.n_plugin_dirs, 2);
    assert_string_equal(fx->cfg.plugin_dirs[0], in_dir(fx, "p1"));
    assert_string_equal(fx->cfg.plugin_pattern, "ext_*.py");
    assert_string_equal(fx->cfg.plugin_api, "host.api:API");

    /* --plugins replaces the file's list; the pattern defaults. */
    config_free(&fx->cfg);
    assert_int_equal(chdir(fx->dir), 0);
    assert_int_equal(PARSE(fx, "--plugins", "p2"), 0);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), 0);
    assert_int_equal(fx->cfg.n_plugin_dirs, 1);
    assert_string_equal(fx->cfg.plugin_dirs[0], in_dir(fx, "p2"));
    assert_string_equal(fx->cfg.plugin_pattern, "plugin_*.py");
    assert_null(fx->cfg.plugin_api);

    config_free(&fx->cfg);
    assert_int_equal(PARSE(fx, "--plugins", "nope"), 0);
    assert_int_equal(config_finish(&fx->cfg, fx->err, sizeof(fx->err)), -ENOENT);
    assert_string_equal(fx->err, "--plugins nope: No such file or directory");

    /* Errors name the file and line. */
    static const char *const bad[][2] = {
        {"[plugins]\n\ndir = missing\n", ":3: dir = missing: No such file or directory"},
        {"[plugins]\npattern = sub/plugin_*.py\n",
         ":2: pattern: expected a file-name glob without '/', got 'sub/plugin_*.py'"},
        {"[plugins]\napi = host\n", ":2: api: expected MODULE:ATTR, got 'host'"},
        {"[plugins]\nfile = x\n", ":2: unknown key 'file' in section [plugins]"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        config_free(&fx->cfg);
        assert_int_equal(load(fx, bad[i][0]), -EINVAL);
        char expected[PATH_MAX + 200];
        fmt(expected, sizeof(expected), "%s%s", fx->conf, bad[i][1]);
        assert_string_equal(fx->err, expected);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test_setup_teardown(test_full_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relative_config_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poll_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unopenable_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_args_override_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_replacement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relative_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shipped_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plugins, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
