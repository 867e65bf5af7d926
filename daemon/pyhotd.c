/* pyhotd: options and wiring only; the daemon itself is lib/daemon.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon.h"
#include "log.h"
#include "py_host.h"
#include "protocol.h"
#include "version.h"

int main(int argc, char **argv) {
    /* Before any thread exists: SIGUSR1 belongs to the python thread alone. */
    if (py_host_block_signals() < 0) {
        fprintf(stderr, "pyhotd: cannot block SIGUSR1\n");
        return 1;
    }
    struct config cfg;
    char err[2048];
    /* getopt permutes argv; the daemon re-parses the original order on SIGHUP. */
    char **original_argv = calloc((size_t)argc + 1, sizeof(*original_argv));
    if (!original_argv) {
        fprintf(stderr, "pyhotd: out of memory\n");
        return 1;
    }
    memcpy(original_argv, argv, (size_t)argc * sizeof(*argv));
    config_init(&cfg);
    if (config_parse_args(&cfg, argc, argv, err, sizeof(err)) < 0) {
        fprintf(stderr, "pyhotd: %s\nTry 'pyhotd --help'.\n", err);
        config_free(&cfg);
        free(original_argv);
        return 2;
    }
    if (cfg.show_help) {
        fputs(config_usage(), stdout);
        config_free(&cfg);
        free(original_argv);
        return 0;
    }
    if (cfg.show_version) {
        printf("pyhotd %s (Python %s, protocol %d)\n", PYHOT_VERSION, py_host_python_version(),
               PROTOCOL_VERSION);
        config_free(&cfg);
        free(original_argv);
        return 0;
    }
    if (config_finish(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pyhotd: %s\n", err);
        config_free(&cfg);
        free(original_argv);
        return 2;
    }
    if (cfg.check_config) {
        printf("pyhotd: configuration OK%s%s\n", cfg.config_path ? ": " : "",
               cfg.config_path ? cfg.config_path : "");
        config_free(&cfg);
        free(original_argv);
        return 0;
    }
    log_init(cfg.log_level);
    int code = daemon_run(&cfg, argc, original_argv);
    config_free(&cfg);
    free(original_argv);
    return code;
}
