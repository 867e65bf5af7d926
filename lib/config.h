#ifndef PYHOT_CONFIG_H
#define PYHOT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "log.h"

/*
 * The daemon's configuration: defaults, then the INI file (libinih; sections [daemon],
 * [watch], [python], [reload], [run], [plugins]; config/pyhotd.conf documents every key), then the
 * command line, which overrides the file. A list option given on the command line
 * (--watch, --python-path, --plugins) replaces the file's list rather than adding to it.
 *
 * String lists are NULL-terminated arrays of owned strings with a count beside them.
 */
enum config_import {
    CONFIG_IMPORT_ON_DEMAND = 0, /* modules load when the app, exec, run or a plugin import them */
    CONFIG_IMPORT_ALL = 1,       /* import every module under the watch roots at start */
};

enum config_network {
    CONFIG_NETWORK_NONE = 0,     /* [sandbox] network = none: a namespace with no usable device */
    CONFIG_NETWORK_LOOPBACK,     /* a loopback of the run's own, up */
};

enum config_backend {
    CONFIG_BACKEND_INOTIFY = 0, /* Linux inotify (the default on Linux) */
    CONFIG_BACKEND_UV = 1,      /* libuv's uv_fs_event (kqueue, FSEvents; inotify on Linux) */
    CONFIG_BACKEND_POLL = 2,    /* every root polled (docs/watching.md) */
};

enum config_strategy {
    CONFIG_STRATEGY_DEPENDENTS = 0, /* reload changed modules and every module importing them */
    CONFIG_STRATEGY_MODULE = 1,     /* reload only the changed modules */
};

enum config_mode {
    CONFIG_MODE_DEFINITIONS = 0, /* run only the statements that changed or read a changed name */
    CONFIG_MODE_MODULE = 1,      /* run each module's whole top level again */
};

#define CONFIG_PLUGIN_PATTERN "plugin_*.py"

struct config {
    char *config_path;          /* file read, or NULL */

    /* [daemon] */
    char *socket_path;          /* NULL until config_finish() fills the default */
    enum log_level log_level;   /* default info */
    unsigned max_clients;       /* control connections at once; default 64; 1..65536 */
    unsigned max_output_bytes;  /* bytes waiting for one client before it is dropped as a
                                   slow consumer; default 4194304; 65536..1073741824 */
    unsigned history_bytes;     /* what the events kept for history and replay may cost
                                   (events.h: twice their encoded size); default 8388608;
                                   0..1073741824, 0 keeps none */
    unsigned request_timeout_ms; /* a partial request line must be completed within it;
                                   default 10000; 1..86400000 */
    char *socket_group;         /* group (name or number) also admitted to the socket, or NULL */
    bool has_socket_gid;        /* config_finish: socket_group resolved into socket_gid */
    gid_t socket_gid;

    /* [watch] */
    char **watch_roots;         /* absolute, as given after realpath(3) by config_finish() */
    size_t n_watch_roots;
    unsigned settle_ms;         /* default 10; 0..60000 */
    enum config_import import;  /* default on demand; --no-import sets it too */
    char **include;             /* globs; default none given = "*.py" (filter.h) */
    size_t n_include;
    char **exclude;
    size_t n_exclude;
    enum config_backend backend; /* default inotify */
    bool follow_symlinks;       /* watch directories reached through symlinks; default false */
    unsigned defer_vcs_ms;      /* longest hold of batches while .git/index.lock exists, ms;
                                 * default 30000; 0 = no hold */
    char **poll_dirs;           /* [watch] poll: roots at or below these (and these dirs
                                 * inside roots) are polled beside inotify; absolute,
                                 * realpath'd when they exist */
    size_t n_poll_dirs;
    unsigned poll_interval_ms;  /* default 300; 20..60000 */

    /* [python] */
    char **python_paths;        /* extra sys.path entries, after the watch roots */
    size_t n_python_paths;
    char **preload;             /* [python] preload: modules imported at start, so runs
                                   (docs/run.md) pay no import cost; failures are logged */
    size_t n_preload;
    char *entry;                /* "MODULE:FUNCTION" or NULL */
    char *venv;                 /* a virtual environment whose site-packages are importable
                                   as its own interpreter would have them; realpath'd */

    /* [reload] */
    unsigned reload_timeout_ms; /* deadline of a reload batch; default 10000 */
    enum config_strategy strategy;
    enum config_mode mode;      /* default definitions (docs/reload.md) */

    /* [plugins] (docs/plugins.md) */
    char **plugin_dirs;         /* directories of plugin files; realpath'd by config_finish() */
    size_t n_plugin_dirs;
    char *plugin_pattern;       /* file-name glob; config_finish() defaults it to
                                   CONFIG_PLUGIN_PATTERN */
    char *plugin_api;           /* "MODULE:ATTR": a dict whose items are the plugins' injected
                                   globals, or NULL */

    /* [run] */
    unsigned exec_timeout_ms;   /* deadline of exec and run jobs; default 30000 */
    unsigned run_prefork;       /* ready children per kind of isolated run (docs/run.md
                                   "Ready children"); default 3; 0..CONFIG_PREFORK_MAX */
    unsigned run_prefork_max_age_ms; /* a ready child older than this is replaced; default
                                        10000; 0: never */

    /* [sandbox]: run --sandbox (docs/run.md "Sandbox") */
    enum config_network sandbox_network; /* default none */
    char *sandbox_user;         /* the user a root daemon's sandboxed runs become; NULL = nobody */
    bool sandbox_change_user;   /* set by config_finish: the daemon is root, runs become */
    uid_t sandbox_uid;          /* sandbox_user's uid */
    gid_t sandbox_gid;          /* and its primary group */
    char **sandbox_read;        /* paths sandboxed runs may also read */
    size_t n_sandbox_read;
    char **sandbox_write;       /* paths sandboxed runs may also read and write */
    size_t n_sandbox_write;
    unsigned sandbox_pids;      /* default for --pids: processes of the run; default 64; 1..65536 */
    unsigned sandbox_tmp_mb;    /* size of a run's private TMPDIR (tmpfs), MiB; default 64;
                                   1..65536 */

    /* command-line only */
    bool check_config;          /* --check-config: validate and exit */
    bool show_help;             /* --help */
    bool show_version;          /* --version */
};

/* Most ready children per kind ([run] prefork); PY_PREFORK_MAX in py_host.h. */
#define CONFIG_PREFORK_MAX 16

/* Fills cfg with the defaults; nothing is allocated. */
void config_init(struct config *cfg);

/* Releases every owned string and list and re-initialises cfg. NULL is allowed. */
void config_free(struct config *cfg);

/* Reads the INI file at path into cfg, on top of what cfg holds. Returns 0; -ENOENT or
 * another -errno when the file cannot be opened; -EINVAL for a syntax error, an unknown
 * section or key, or a bad value. err receives "FILE:LINE: message" (errlen bytes). */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);

/* Parses the command line (argv[0] is the program) into cfg: first --config FILE is
 * loaded with config_load_file(), then every other option overrides it. Returns 0, or
 * -EINVAL for a usage error (unknown option, missing or bad argument) or any error of
 * config_load_file, with a message in err. --help and --version only set their flags. */
int config_parse_args(struct config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Validates and completes cfg after parsing: watch roots must be existing directories
 * (each replaced by its realpath), settle_ms within 0..60000, entry of the form
 * MODULE:FUNCTION, plugin directories existing directories (realpath'd), the plugin
 * pattern a glob without '/' (defaulted to CONFIG_PLUGIN_PATTERN), the plugin api
 * MODULE:ATTR, socket_group a known group name (getgrnam(3)) or a number, resolved
 * into socket_gid, venv a virtual environment (pyvenv.cfg, PEP 405) for this Python
 * version (lib/pythonX.Y/site-packages), and socket_path defaulted
 * (protocol_default_socket_path()).
 * Returns 0, or -EINVAL / -ENOENT / -ENOTDIR with a message in err. */
int config_finish(struct config *cfg, char *err, size_t errlen);

/* The text of `pyhotd --help`. */
const char *config_usage(void);

#endif
