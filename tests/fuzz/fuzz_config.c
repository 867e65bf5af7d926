/*
 * libFuzzer target for the configuration parser (lib/config.c): any bytes go in as the
 * INI file given to config_load_file(), then config_finish() completes what loaded.
 *
 * Checked: a failure fills err with "FILE:..." and returns a negative errno; a success
 * leaves the lists NULL-terminated with their counts, numbers within their documented
 * ranges, and config_free() releasing everything (LeakSanitizer watches that).
 *
 * config_load_file() takes a path, so each input is written to one file in a private
 * directory made once with mkdtemp(3) (removed at exit): relative paths in the input
 * resolve inside it, and nothing outside it is ever written. Absolute paths in the input
 * are only looked at (realpath(3), stat(2)), as pyhotd would.
 *
 * Built and run by `make fuzz` (clang, -fsanitize=fuzzer,address,undefined); by hand:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib \
 *       tests/fuzz/fuzz_config.c lib/config.c lib/log.c lib/protocol.c \
 *       -linih -ljansson -o /tmp/fuzz_config
 *   mkdir -p /tmp/corpus-config && /tmp/fuzz_config -artifact_prefix=/tmp/ -max_len=4096 \
 *       /tmp/corpus-config tests/fuzz/corpus/config
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char dir[PATH_MAX];
static char path[PATH_MAX];

static void cleanup(void) {
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *tmp = getenv("TMPDIR");

    (void)argc;
    (void)argv;
    snprintf(dir, sizeof(dir), "%s/pyhot-fuzz-config-XXXXXX", tmp && tmp[0] == '/' ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("fuzz_config: mkdtemp");
        abort();
    }
    snprintf(path, sizeof(path), "%s/pyhotd.conf", dir);
    atexit(cleanup);
    log_init(LOG_LEVEL_ERROR);
    return 0;
}

static void check_list(char **v, size_t n) {
    if ((n == 0) != (v == NULL) || (v != NULL && v[n] != NULL))
        abort();
    for (size_t i = 0; i < n; i++)
        if (v[i] == NULL || v[i][0] == '\0')
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct config cfg;
    char err[1024];
    int fd, r;

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (size > 0 && write(fd, data, size) != (ssize_t)size)) {
        perror("fuzz_config: writing the input");
        abort();
    }
    close(fd);

    config_init(&cfg);
    err[0] = '\0';
    r = config_load_file(&cfg, path, err, sizeof(err));
    if (r < 0) {
        if (r >= 0 || err[0] == '\0' || strncmp(err, path, strlen(path)) != 0)
            abort();
    } else {
        if (cfg.config_path == NULL || strcmp(cfg.config_path, path) != 0)
            abort();
        err[0] = '\0';
        r = config_finish(&cfg, err, sizeof(err));
        if (r < 0 && err[0] == '\0')
            abort();
        if (r == 0) {
            if (cfg.socket_path == NULL || cfg.settle_ms > 60000 || cfg.max_clients < 1 ||
                cfg.max_output_bytes < 65536 || cfg.request_timeout_ms < 1 ||
                cfg.reload_timeout_ms < 1 || cfg.exec_timeout_ms < 1 ||
                (cfg.socket_group != NULL) != cfg.has_socket_gid)
                abort();
            for (size_t i = 0; i < cfg.n_watch_roots; i++)
                if (cfg.watch_roots[i][0] != '/')
                    abort();
        }
    }
    check_list(cfg.watch_roots, cfg.n_watch_roots);
    check_list(cfg.include, cfg.n_include);
    check_list(cfg.exclude, cfg.n_exclude);
    check_list(cfg.python_paths, cfg.n_python_paths);
    config_free(&cfg);
    return 0;
}
