/* Unit tests of lib/watch.c with each backend: real inotify / uv_fs_event on a temporary
 * directory, a private loop, and a check at the end of each test that every handle was
 * closed (uv_loop_close returns 0). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "filter.h"
#include "watch.h"

struct fixture {
    uv_loop_t loop;
    struct filter *filter;
    struct watch *watch;
    char root[64];
    struct watch_batch *batches[16];
    size_t n_batches;
    size_t n_errors;
    size_t n_restored;
    bool closed;
    uv_timer_t guard;
};

static void on_batch(struct watch *watch, struct watch_batch *batch, void *data) {
    struct fixture *f = data;
    (void)watch;
    if (f->n_batches < 16)
        f->batches[f->n_batches++] = batch;
    else
        watch_batch_free(batch);
}

static void on_error(struct watch *watch, const char *root, const char *message, void *data) {
    struct fixture *f = data;
    (void)watch;
    (void)root;
    (void)message;
    f->n_errors++;
}

static void on_notice(struct watch *watch, const struct watch_notice *n, void *data) {
    struct fixture *f = data;
    (void)watch;
    if (n->kind == WATCH_NOTICE_RESTORED)
        f->n_restored++;
}

static void on_guard(uv_timer_t *t) {
    uv_stop(t->loop);
}

/* Runs the loop until cond holds, at most 5 s. */
static bool run_until(struct fixture *f, bool (*cond)(struct fixture *)) {
    for (int i = 0; i < 500 && !cond(f); i++) {
        uv_timer_start(&f->guard, on_guard, 10, 0);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    return cond(f);
}

/* Runs the loop for about ms milliseconds. */
static void run_for(struct fixture *f, int ms) {
    for (int i = 0; i < ms / 10; i++) {
        uv_timer_start(&f->guard, on_guard, 10, 0);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static bool has_batch(struct fixture *f) {
    return f->n_batches > 0;
}

static bool has_restored(struct fixture *f) {
    return f->n_restored > 0;
}

static void write_file(const char *dir, const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void setup(struct fixture *f, enum watch_backend_kind backend) {
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->guard);
    char err[256];
    assert_int_equal(filter_new(NULL, 0, NULL, 0, &f->filter, err, sizeof(err)), 0);
    snprintf(f->root, sizeof(f->root), "/tmp/pyhot-unit-watch-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    struct watch_options o = {
        .settle_ms = 5, .filter = f->filter, .backend = backend, .defer_vcs_ms = 1000,
        .on_batch = on_batch, .on_error = on_error, .on_notice = on_notice, .data = f,
    };
    assert_int_equal(watch_new(&f->loop, &o, &f->watch, err, sizeof(err)), 0);
}

static void on_closed(void *data) {
    ((struct fixture *)data)->closed = true;
}

static void teardown(struct fixture *f) {
    watch_close(f->watch, on_closed, f);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);   /* nothing left open */
    for (size_t i = 0; i < f->n_batches; i++)
        watch_batch_free(f->batches[i]);
    filter_free(f->filter);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->root);
    assert_int_equal(system(cmd), 0);
}

static void batch_of_one_write(enum watch_backend_kind backend) {
    struct fixture f;
    setup(&f, backend);
    char err[256];
    assert_int_equal(mkdir(strcat(strcpy((char[128]){0}, f.root), "/pkg"), 0755), 0);
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    assert_int_equal(watch_dir_count(f.watch), 2);
    write_file(f.root, "m.py", "X = 1\n");
    write_file(f.root, "notes.txt", "x\n");
    assert_true(run_until(&f, has_batch));
    assert_int_equal(f.batches[0]->n_paths, 1);
    char want[128];
    snprintf(want, sizeof(want), "%s/m.py", f.root);
    assert_string_equal(f.batches[0]->paths[0], want);
    struct watch_stats st;
    watch_get_stats(f.watch, &st);
    assert_int_equal(st.batches, 1);
    assert_string_equal(st.backend, backend == WATCH_BACKEND_UV ? "uv" : "inotify");
    teardown(&f);
}

static void test_batch_inotify(void **state) {
    (void)state;
    batch_of_one_write(WATCH_BACKEND_INOTIFY);
}

static void test_batch_uv(void **state) {
    (void)state;
    batch_of_one_write(WATCH_BACKEND_UV);
}

static void test_holds(void **state) {
    (void)state;
    struct fixture f;
    setup(&f, WATCH_BACKEND_INOTIFY);
    char err[256];
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    watch_hold(f.watch, WATCH_HOLD_PAUSE);
    watch_hold(f.watch, WATCH_HOLD_BUSY);
    write_file(f.root, "a.py", "A = 1\n");
    write_file(f.root, "b.py", "B = 1\n");
    run_for(&f, 300);   /* settle_ms is 5: a batch would have gone by now */
    assert_int_equal(f.n_batches, 0);
    struct watch_stats st;
    watch_get_stats(f.watch, &st);
    assert_int_equal(st.pending, 2);
    assert_int_equal(st.holds, WATCH_HOLD_PAUSE | WATCH_HOLD_BUSY);
    watch_release(f.watch, WATCH_HOLD_PAUSE);
    assert_int_equal(f.n_batches, 0);   /* still busy */
    watch_release(f.watch, WATCH_HOLD_BUSY);
    watch_release(f.watch, WATCH_HOLD_BUSY);   /* twice: harmless */
    assert_true(run_until(&f, has_batch));
    assert_int_equal(f.batches[0]->n_paths, 2);
    teardown(&f);
}

static void test_root_lost_and_restored(void **state) {
    (void)state;
    for (int backend = 0; backend < 2; backend++) {
        struct fixture f;
        setup(&f, (enum watch_backend_kind)backend);
        char root[128], err[256];
        snprintf(root, sizeof(root), "%s/r", f.root);
        assert_int_equal(mkdir(root, 0755), 0);
        assert_int_equal(watch_add_root(f.watch, root, err, sizeof(err)), 0);
        assert_int_equal(rmdir(root), 0);
        for (int i = 0; i < 100 && f.n_errors == 0; i++) {
            uv_timer_start(&f.guard, on_guard, 10, 0);
            uv_run(&f.loop, UV_RUN_ONCE);
        }
        assert_int_equal(f.n_errors, 1);
        const char *message = NULL;
        assert_int_equal(watch_root_state(f.watch, 0, &message), WATCH_ROOT_LOST);
        assert_non_null(message);
        assert_int_equal(mkdir(root, 0755), 0);
        assert_true(run_until(&f, has_restored));
        assert_int_equal(watch_root_state(f.watch, 0, NULL), WATCH_ROOT_WATCHING);
        write_file(root, "m.py", "X = 1\n");
        assert_true(run_until(&f, has_batch));
        teardown(&f);
    }
}

static void test_missing_root(void **state) {
    (void)state;
    struct fixture f;
    setup(&f, WATCH_BACKEND_INOTIFY);
    char err[256];
    assert_int_equal(watch_add_root(f.watch, "/nonexistent/pyhot/root", err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/pyhot/root"));
    assert_string_equal(watch_root_path(f.watch, 0), "/nonexistent/pyhot/root");
    assert_int_not_equal(watch_root_state(f.watch, 0, NULL), WATCH_ROOT_WATCHING);
    assert_int_equal(watch_root_state(f.watch, 0, NULL), WATCH_ROOT_FAILED);
    teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_inotify),
        cmocka_unit_test(test_batch_uv),
        cmocka_unit_test(test_holds),
        cmocka_unit_test(test_root_lost_and_restored),
        cmocka_unit_test(test_missing_root),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
