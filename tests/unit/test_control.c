/*
 * Unit tests of lib/control.c on a real Unix socket in a private temporary directory and
 * a real libuv loop: framing (lines split and joined across writes, "\r\n", empty lines),
 * replies, disconnects, the line and client limits, the lock against a second listener,
 * the directory check, and cleanup on close. Every wait is bounded (PUMP_MS).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "log.h"

#define PUMP_MS 2000
#define MAX_LINES 8

struct fixture {
    uv_loop_t loop;
    char dir[64];
    char path[96];
    struct control *control;
    char lines[MAX_LINES][128]; /* requests received */
    size_t n_lines;
    uint64_t last_client;
    size_t disconnects;
    bool closed;
};

static void on_request(struct control *control, uint64_t client, const char *line, size_t len,
                       void *data) {
    struct fixture *f = data;
    (void)control;
    assert_true(f->n_lines < MAX_LINES);
    snprintf(f->lines[f->n_lines++], sizeof(f->lines[0]), "%.*s", (int)len, line);
    f->last_client = client;
}

static void on_disconnect(struct control *control, uint64_t client, void *data) {
    struct fixture *f = data;
    (void)control;
    (void)client;
    f->disconnects++;
}

static void on_closed(void *data) {
    ((struct fixture *)data)->closed = true;
}

static int listen_on(struct fixture *f, size_t max_clients, size_t max_line,
                     struct control **out, char *err, size_t errlen) {
    struct control_options options = {
        .path = f->path,
        .max_clients = max_clients,
        .max_line = max_line,
        .on_request = on_request,
        .on_disconnect = on_disconnect,
        .data = f,
    };
    return control_listen(&f->loop, &options, out, err, errlen);
}

static int setup(void **state) {
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/pyhot-unit-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/s.sock", f->dir);
    uv_loop_init(&f->loop);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fixture *f = *state;
    if (f->control && !f->closed) {
        control_close(f->control, on_closed, f);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        assert_true(f->closed);
    }
    assert_int_equal(uv_loop_close(&f->loop), 0);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Runs the loop until *count reaches want or PUMP_MS pass; returns *count. */
static size_t pump_until(struct fixture *f, const size_t *count, size_t want) {
    for (int i = 0; i < PUMP_MS && *count < want; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return *count;
}

static int connect_client(const struct fixture *f) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", f->path);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    return fd;
}

/* Reads from fd, running the loop meanwhile, until buf holds a "\n" or EOF comes.
 * Returns the bytes read (0: EOF at once). */
static size_t read_reply(struct fixture *f, int fd, char *buf, size_t len) {
    size_t n = 0;
    for (int i = 0; i < PUMP_MS && !memchr(buf, '\n', n); i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1) == 1) {
            ssize_t r = read(fd, buf + n, len - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
        }
    }
    buf[n] = '\0';
    return n;
}

static void write_str(int fd, const char *s) {
    assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

static void test_framing_and_replies(void **state) {
    struct fixture *f = *state;
    char err[256];
    assert_int_equal(listen_on(f, 0, 0, &f->control, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    int fd = connect_client(f);
    write_str(fd, "{\"cmd\":\"a\"}\n\n{\"cmd\":");
    assert_int_equal(pump_until(f, &f->n_lines, 1), 1);
    write_str(fd, "\"b\"}\r\n");
    assert_int_equal(pump_until(f, &f->n_lines, 2), 2);
    assert_string_equal(f->lines[0], "{\"cmd\":\"a\"}");
    assert_string_equal(f->lines[1], "{\"cmd\":\"b\"}");

    assert_int_equal(control_send(f->control, f->last_client, "{\"ok\":true}\n", 12), 0);
    char buf[256];
    read_reply(f, fd, buf, sizeof(buf));
    assert_string_equal(buf, "{\"ok\":true}\n");

    struct control_stats stats;
    control_get_stats(f->control, &stats);
    assert_int_equal(stats.accepted, 1);
    assert_int_equal(control_client_count(f->control), 1);

    close(fd);
    assert_int_equal(pump_until(f, &f->disconnects, 1), 1);
    assert_int_equal(control_send(f->control, f->last_client, "x\n", 2), -ENOTCONN);

    control_close(f->control, on_closed, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(f->closed);
    char lock[128];
    snprintf(lock, sizeof(lock), "%s.lock", f->path);
    assert_int_equal(access(f->path, F_OK), -1);
    assert_int_equal(access(lock, F_OK), -1);
}

static void test_limits(void **state) {
    struct fixture *f = *state;
    char err[256], buf[512];
    assert_int_equal(listen_on(f, 1, 64, &f->control, err, sizeof(err)), 0);

    int first = connect_client(f);
    int second = connect_client(f);
    read_reply(f, second, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"too_many_clients\""));
    close(second);

    char line[101];
    memset(line, 'x', 100);
    line[100] = '\0';
    write_str(first, line);
    read_reply(f, first, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"request_too_large\""));
    assert_int_equal(f->n_lines, 0);
    close(first);

    struct control_stats stats;
    control_get_stats(f->control, &stats);
    assert_int_equal(stats.refused_too_many, 1);
    assert_int_equal(stats.dropped_too_large, 1);
}

static void test_one_listener_and_a_private_directory(void **state) {
    struct fixture *f = *state;
    char err[256];
    struct control *second = NULL;
    assert_int_equal(listen_on(f, 0, 0, &f->control, err, sizeof(err)), 0);
    assert_int_equal(listen_on(f, 0, 0, &second, err, sizeof(err)), -EADDRINUSE);
    assert_null(second);

    control_close(f->control, on_closed, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(chmod(f->dir, 0755), 0);
    assert_int_equal(listen_on(f, 0, 0, &second, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, f->dir));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_framing_and_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_listener_and_a_private_directory, setup,
                                        teardown),
    };

    log_init(LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
