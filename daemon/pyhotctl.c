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
#include <getopt.h>
#include <langinfo.h>
#include <locale.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol.h"
#include "pyhotctl.h"
#include "version.h"

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
        "metrics", "", "counters, histograms and gauges for Prometheus",
        "Prints the daemon's counters, histograms and gauges in the Prometheus text\n"
        "exposition format (version 0.0.4), for node_exporter's textfile collector (see\n"
        "docs/service.md). With --json, the response with the text and its content type.\n",
        0, 0, false, cmd_metrics, 0,
    },
    {
        "plugins", "", "the plugins of the plugin directories",
        "Prints a table of the plugins pyhotd loaded from its plugin directories\n"
        "(--plugins DIR): NAME, STATE (loaded, or error: its last run failed and it keeps\n"
        "the exports of the last one that worked), LOADED (when those exports were made,\n"
        "UTC) and the names it EXPORTS; a failed plugin's error on the line below it.\n"
        "See docs/plugins.md.\n",
        0, 0, false, cmd_plugins, 0,
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
        "Watches DIR (made absolute) recursively as a new root: it goes first on\n"
        "sys.path, its modules reload on change once loaded (with [watch] import = all,\n"
        "pyhotd imports them all at once, and import errors are printed on stderr; the\n"
        "watch stays). Exit status 1 when DIR is missing, is not a directory, is (or is\n"
        "inside, or holds) a root already, or cannot be watched.\n",
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
        "  -n, --lines N       first print the last N past events (kept: the last 1000,\n"
        "                      within pyhotd's [daemon] history_bytes)\n"
        "  -e, --event TYPE    only events of TYPE (reload, batch, ...); repeatable\n"
        "  -m, --module GLOB   only events of modules matching GLOB (fnmatch(3), e.g.\n"
        "                      'app.*'); events that name no module still show;\n"
        "                      repeatable\n"
        "\n"
        "On a terminal it first says what it follows. It waits for events as long as\n"
        "pyhotd runs (--timeout does not apply). Ends with status 0 on Ctrl-C (SIGINT,\n"
        "SIGTERM) or when pyhotd stops, 2 when the connection is lost (or pyhotd dropped\n"
        "it for reading too slowly).\n",
        0, 0, false, cmd_tail, CTL_OPT_COUNT | CTL_OPT_FILTER,
    },
    {
        "history", "[N] [-e TYPE]... [-m GLOB]...", "the last N events (default 100)",
        "Prints the last N events pyhotd kept (the last 1000, within its [daemon]\n"
        "history_bytes), oldest first, as tail does; N may also be given as -n N. -e and\n"
        "-m filter them as in tail (N counts the events that pass).\n",
        0, 1, false, cmd_history, CTL_OPT_COUNT | CTL_OPT_FILTER,
    },
    {
        "exec", "CODE", "run Python code in the daemon's interpreter",
        "Runs CODE (\"-\" reads it from stdin) in pyhotd's warm interpreter. Prints what\n"
        "the code wrote to stdout and stderr, exactly, then the value of its final\n"
        "expression statement on its own line, as the REPL shows it (nothing when the\n"
        "code ends with another statement, or the value is None). When the code\n"
        "raises, prints its output, then the traceback on stderr, and exits with 1.\n"
        "Use `pyhotctl exec -- CODE` when CODE starts with '-'.\n",
        1, 1, true, cmd_exec, 0,
    },
    {
        "run", "[OPTIONS] SCRIPT|-|-m MODULE [ARGS...]",
        "run a script in the warm interpreter",
        "Runs SCRIPT (a file, a directory with __main__.py, or a zip app), the script\n"
        "read from stdin (-), or -m MODULE as __main__ in pyhotd's warm interpreter, as\n"
        "python3 would, with sys.argv = [SCRIPT, ARGS...]. Its stdout and stderr stream\n"
        "here as it writes them; pyhotctl exits with its exit code (2 when SCRIPT\n"
        "cannot be opened, as python3).\n"
        "\n"
        "Options (before SCRIPT):\n"
        "  --set NAME=JSON  a global of the script (runpy's init_globals); repeatable\n"
        "  --timeout S      the run's own limit: interrupt it with TimeoutError after S\n"
        "                   seconds (killed, with --isolate); exit status 124\n"
        "  --get NAME       after the output, print NAME = the value the script left in\n"
        "                   NAME (JSON, or its repr and type); '*': every public global\n"
        "                   that is JSON. Repeatable; names not set go to stderr\n"
        "  --isolate        run in a child forked from the warm interpreter\n"
        "  --memory MB      (--isolate) address space the child may add (RLIMIT_AS)\n"
        "  --cpu S          (--isolate) CPU seconds (RLIMIT_CPU)\n"
        "  --cwd DIR        (--isolate) working directory (default: the current one)\n"
        "  --sandbox        --isolate, and no network, no files but the import paths,\n"
        "                   the script's directory, --cwd and a private TMPDIR, no\n"
        "                   privileges, no dangerous system calls ([sandbox] config)\n"
        "  --pids N         (--sandbox) processes the run may have (default 64)\n"
        "\n"
        "The global --timeout (how long to wait for a response) does not apply: run\n"
        "waits for the run's end, which only run --timeout limits. A run ended by\n"
        "signal N exits 128+N; a sandbox that cannot be set up, 125. See\n"
        "docs/run.md.\n",
        1, -1, true, cmd_run, CTL_OPT_RAW,
    },
    {
        "repl", "", "an interactive console into the daemon's interpreter",
        "Reads Python lines (with line editing and history in ~/.pyhot_history) and runs\n"
        "each complete input in the daemon's __main__ namespace, as the interactive\n"
        "interpreter does: \"... \" asks for more lines, expression values are echoed,\n"
        "tracebacks are shown. Ctrl-C interrupts the running statement (it gets\n"
        "KeyboardInterrupt) or drops the line being typed; Ctrl-D leaves.\n",
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

static const struct ctl_command *find_command(const char *name) {
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

/* The synopsis column of the command list in `pyhotctl --help`. */
#define USAGE_SYNOPSIS_WIDTH 22

static void usage(FILE *out) {
    char path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];

    fprintf(out,
            "Usage: pyhotctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]\n"
            "\n"
            "Talks to a running pyhotd over its control socket.\n"
            "\n"
            "Commands:\n");
    /* As git and systemctl: the synopsis, and its summary in a column; a synopsis too
     * long for the column goes on a line of its own (80 columns in all). */
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        int w = (int)(strlen(commands[i].name) + 1 + strlen(commands[i].args));

        fprintf(out, "  %s %s", commands[i].name, commands[i].args);
        if (w > USAGE_SYNOPSIS_WIDTH)
            fprintf(out, "\n%*s", USAGE_SYNOPSIS_WIDTH + 2, "");
        else
            fprintf(out, "%*s", USAGE_SYNOPSIS_WIDTH - w, "");
        fprintf(out, "  %s\n", commands[i].summary);
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
            "  -t, --timeout SECS   wait at most SECS for a response (default %d, 0: no\n"
            "                       limit); not for run and tail, which wait for their end\n"
            "                       (run --timeout limits a run)\n"
            "  -h, --help           this help; `pyhotctl COMMAND --help` for one command\n"
            "      --version        print the version\n"
            "\n"
            "Exit status: 0 success; 1 pyhotd reported an error (a failed reload, a Python\n"
            "exception); 2 usage error, or no answer from pyhotd.\n",
            DEFAULT_TIMEOUT_S);
}

static void command_usage(FILE *out, const struct ctl_command *cmd) {
    fprintf(out, "Usage: pyhotctl [OPTIONS] %s%s%s\n\n%s", cmd->name, cmd->args[0] ? " " : "",
            cmd->args, cmd->help);
    fprintf(out, "\nOptions: --socket PATH, --json, --timeout SECONDS (see pyhotctl --help).\n");
}

/* --timeout SECS: 0 is no limit (-1). */
static int parse_timeout(const char *arg, int *out_ms) {
    long long ms;

    if (parse_seconds("--timeout", arg, &ms) < 0)
        return -EINVAL;
    *out_ms = ms == 0 ? -1 : (int)ms;
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

/*
 * Parses options from argv[optind] on, stopping at the first operand when stop is set.
 * Returns 0, 1 when help was asked for, 3 for --version, or -EINVAL after a message.
 */
static int parse_options(struct ctl *ctl, int argc, char **argv, bool stop) {
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

int main(int argc, char **argv) {
    struct ctl ctl = { .timeout_ms = DEFAULT_TIMEOUT_S * 1000, .fd = -1, .count = -1 };
    const struct ctl_command *cmd;
    struct sigaction sa = { .sa_handler = SIG_IGN };
    int r, cmd_argc, operands;
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
        optind = 0; /* it gets its whole command line, its name first */
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
    operands = cmd_argc - (cmd->options & CTL_OPT_RAW ? 1 : 0);
    if (operands < cmd->min_args || (cmd->max_args >= 0 && operands > cmd->max_args)) {
        fail("%s: %s", cmd->name, operands < cmd->min_args ? "missing argument"
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
