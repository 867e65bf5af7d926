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
#include "watch_backend.h"

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

static void setup_with(struct fixture *f, enum watch_backend_kind backend, unsigned settle_ms,
                       const char *poll_dir, bool follow_symlinks) {
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->guard);
    char err[256];
    assert_int_equal(filter_new(NULL, 0, NULL, 0, &f->filter, err, sizeof(err)), 0);
    snprintf(f->root, sizeof(f->root), "/tmp/pyhot-unit-watch-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    const char *poll_dirs[] = {f->root};
    struct watch_options o = {
        .settle_ms = settle_ms, .filter = f->filter, .backend = backend, .defer_vcs_ms = 1000,
        .follow_symlinks = follow_symlinks,
        .poll_interval_ms = 20, .poll_dirs = poll_dir ? poll_dirs : NULL,
        .n_poll_dirs = poll_dir ? 1 : 0,
        .on_batch = on_batch, .on_error = on_error, .on_notice = on_notice, .data = f,
    };
    assert_int_equal(watch_new(&f->loop, &o, &f->watch, err, sizeof(err)), 0);
}

static void setup(struct fixture *f, enum watch_backend_kind backend) {
    setup_with(f, backend, 5, NULL, false);
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

/* ---- adaptive settle ---------------------------------------------------------------- */

static size_t paths_in_batches(struct fixture *f) {
    size_t n = 0;
    for (size_t i = 0; i < f->n_batches; i++)
        n += f->batches[i]->n_paths;
    return n;
}

/* A finished write (IN_CLOSE_WRITE) leaves at once once the queue is drained: with a
 * settle window of 3 s, the batch is there long before it. */
static void test_adaptive_settle_complete_write(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_INOTIFY, 3000, NULL, false);
    char err[256];
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    write_file(f.root, "m.py", "X = 1\n");
    run_for(&f, 500);
    assert_int_equal(f.n_batches, 1);
    struct watch_stats st;
    watch_get_stats(f.watch, &st);
    assert_int_equal(st.fast_batches, 1);
    /* An editor's rename-over (write a temporary, rename it onto the module) too. */
    write_file(f.root, "m.py.tmp", "X = 2\n");
    char from[128], to[128];
    snprintf(from, sizeof(from), "%s/m.py.tmp", f.root);
    snprintf(to, sizeof(to), "%s/m.py", f.root);
    assert_int_equal(rename(from, to), 0);
    run_for(&f, 500);
    assert_int_equal(f.n_batches, 2);
    teardown(&f);
}

/* A file still open for writing holds the batch for the settle window, even when another
 * path of it is complete; once closed, one batch carries both. */
static void test_adaptive_settle_waits_for_open_write(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_INOTIFY, 1500, NULL, false);
    char err[256], path[128];
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    snprintf(path, sizeof(path), "%s/slow.py", f.root);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("A = 1\n", fp);
    fflush(fp);                    /* IN_CREATE, IN_MODIFY; no IN_CLOSE_WRITE yet */
    write_file(f.root, "done.py", "B = 1\n");
    run_for(&f, 500);
    assert_int_equal(f.n_batches, 0);
    fclose(fp);
    assert_true(run_until(&f, has_batch));
    assert_int_equal(f.n_batches, 1);
    assert_int_equal(f.batches[0]->n_paths, 2);
    teardown(&f);
}

/* Many files changing at once wait the settle window: one batch, not one per drain. */
static void test_adaptive_settle_storm_waits(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_INOTIFY, 300, NULL, false);
    char err[256];
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    for (int i = 0; i < 40; i++) {
        char name[32];
        snprintf(name, sizeof(name), "m%02d.py", i);
        write_file(f.root, name, "X = 1\n");
    }
    run_for(&f, 1000);
    assert_int_equal(paths_in_batches(&f), 40);
    assert_true(f.n_batches <= 2);
    teardown(&f);
}

/* Files found by listing a new directory may still be being written, and their own
 * events may follow: their batch waits the settle window. */
static void test_adaptive_settle_waits_for_found_files(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_INOTIFY, 1500, NULL, false);
    char err[256], dir[128];
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    snprintf(dir, sizeof(dir), "%s/pkg", f.root);
    assert_int_equal(mkdir(dir, 0755), 0);
    write_file(dir, "x.py", "X = 1\n");   /* before the loop runs: found by the scan */
    run_for(&f, 500);
    assert_int_equal(f.n_batches, 0);
    assert_true(run_until(&f, has_batch));
    assert_int_equal(f.batches[0]->n_paths, 1);
    teardown(&f);
}

/* The uv backend cannot tell a finished write: it keeps the settle window. */
static void test_adaptive_settle_not_for_uv(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_UV, 1500, NULL, false);
    char err[256];
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    write_file(f.root, "m.py", "X = 1\n");
    run_for(&f, 500);
    assert_int_equal(f.n_batches, 0);
    assert_true(run_until(&f, has_batch));
    teardown(&f);
}

/* ---- polling ------------------------------------------------------------------------- */

static bool has_two_batches(struct fixture *f) {
    return f->n_batches >= 2;
}

static bool batch_has(struct watch_batch *b, const char *path) {
    for (size_t i = 0; i < b->n_paths; i++)
        if (strcmp(b->paths[i], path) == 0)
            return true;
    return false;
}

/* backend = poll: no inotify at all; loaded files are compared every interval, new
 * directories and files found by the directory cycle, deletions reported. */
static void test_poll_backend(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_POLL, 5, NULL, false);
    char err[256], pkg[128], mod[160], sub[160], subm[192];
    snprintf(pkg, sizeof(pkg), "%s/pkg", f.root);
    assert_int_equal(mkdir(pkg, 0755), 0);
    write_file(pkg, "mod.py", "X = 1\n");
    snprintf(mod, sizeof(mod), "%s/mod.py", pkg);
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    const char *why = NULL;
    assert_string_equal(watch_root_method(f.watch, 0, &why), "poll");
    assert_string_equal(why, "backend = poll");
    const char *loaded[] = {mod};
    assert_int_equal(watch_set_loaded(f.watch, loaded, 1), 0);
    struct watch_stats st;
    watch_get_stats(f.watch, &st);
    assert_string_equal(st.backend, "poll");
    assert_int_equal(st.polled_dirs, 2);
    assert_int_equal(st.polled_files, 1);
    assert_int_equal(st.polled_loaded, 1);
    run_for(&f, 100);
    assert_int_equal(f.n_batches, 0);   /* nothing changed: nothing reported */

    /* The same size, written within the file system's clock tick: the hash tells. */
    write_file(pkg, "mod.py", "X = 2\n");
    assert_true(run_until(&f, has_batch));
    assert_int_equal(f.batches[0]->n_paths, 1);
    assert_string_equal(f.batches[0]->paths[0], mod);

    /* A new directory with a file in it, found by the directory cycle. */
    snprintf(sub, sizeof(sub), "%s/sub", pkg);
    assert_int_equal(mkdir(sub, 0755), 0);
    write_file(sub, "new.py", "N = 1\n");
    snprintf(subm, sizeof(subm), "%s/new.py", sub);
    assert_true(run_until(&f, has_two_batches));
    assert_true(batch_has(f.batches[1], subm));

    /* Deleted: reported (gone). */
    assert_int_equal(unlink(mod), 0);
    for (int i = 0; i < 300 && f.n_batches < 3; i++)
        run_for(&f, 10);
    assert_int_equal(f.n_batches, 3);
    assert_true(batch_has(f.batches[2], mod));

    /* Held batches wait, as for inotify roots. */
    watch_hold(f.watch, WATCH_HOLD_PAUSE);
    write_file(sub, "new.py", "N = 22\n");
    run_for(&f, 300);
    assert_int_equal(f.n_batches, 3);
    watch_release(f.watch, WATCH_HOLD_PAUSE);
    for (int i = 0; i < 300 && f.n_batches < 4; i++)
        run_for(&f, 10);
    assert_int_equal(f.n_batches, 4);
    teardown(&f);
}

/* inotify and the poll both watch the root (poll = DIR): a local edit is seen by both and
 * goes out once. */
static void test_poll_beside_inotify_reports_once(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_INOTIFY, 5, "root", false);
    char err[256], mod[128];
    write_file(f.root, "m.py", "X = 1\n");
    snprintf(mod, sizeof(mod), "%s/m.py", f.root);
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    assert_string_equal(watch_root_method(f.watch, 0, NULL), "inotify+poll");
    const char *loaded[] = {mod};
    assert_int_equal(watch_set_loaded(f.watch, loaded, 1), 0);
    for (int round = 0; round < 3; round++) {
        char text[32];
        snprintf(text, sizeof(text), "X = %d\n", round + 10);
        write_file(f.root, "m.py", text);
        run_for(&f, 400);   /* 20 poll intervals, and 5 directory cycles */
        assert_int_equal(f.n_batches, (size_t)round + 1);
    }
    /* A new directory: inotify reports its file before the poll knows the directory. */
    char sub[128], subm[160];
    snprintf(sub, sizeof(sub), "%s/sub", f.root);
    assert_int_equal(mkdir(sub, 0755), 0);
    write_file(sub, "n.py", "N = 1\n");
    snprintf(subm, sizeof(subm), "%s/n.py", sub);
    run_for(&f, 400);
    size_t seen = 0;
    for (size_t i = 0; i < f.n_batches; i++)
        seen += batch_has(f.batches[i], subm);
    assert_int_equal(seen, 1);
    teardown(&f);
}

/* A polled root that disappears is reported once, and again when it is back. */
static void test_poll_root_lost_and_restored(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_POLL, 5, NULL, false);
    char root[128], err[256];
    snprintf(root, sizeof(root), "%s/r", f.root);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(watch_add_root(f.watch, root, err, sizeof(err)), 0);
    assert_int_equal(rmdir(root), 0);
    for (int i = 0; i < 100 && f.n_errors == 0; i++)
        run_for(&f, 10);
    assert_int_equal(f.n_errors, 1);
    const char *message = NULL;
    assert_int_equal(watch_root_state(f.watch, 0, &message), WATCH_ROOT_LOST);
    assert_non_null(strstr(message, "gone"));
    run_for(&f, 100);
    assert_int_equal(f.n_errors, 1);   /* once */
    assert_int_equal(mkdir(root, 0755), 0);
    write_file(root, "m.py", "X = 1\n");
    assert_true(run_until(&f, has_restored));
    assert_int_equal(watch_root_state(f.watch, 0, NULL), WATCH_ROOT_WATCHING);
    assert_true(run_until(&f, has_batch));   /* the file found when it came back */
    teardown(&f);
}

/* backend = poll: git's index.lock is polled too; batches wait while it exists. */
static void test_poll_defers_while_git_works(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_POLL, 5, NULL, false);
    char err[256], git[128], lock[160];
    snprintf(git, sizeof(git), "%s/.git", f.root);
    assert_int_equal(mkdir(git, 0755), 0);
    write_file(f.root, "m.py", "X = 1\n");
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    snprintf(lock, sizeof(lock), "%s/index.lock", git);
    write_file(git, "index.lock", "");
    run_for(&f, 100);
    struct watch_stats st;
    watch_get_stats(f.watch, &st);
    assert_int_equal(st.holds, WATCH_HOLD_VCS);
    write_file(f.root, "m.py", "X = 2\n");
    write_file(f.root, "n.py", "N = 1\n");
    run_for(&f, 300);
    assert_int_equal(f.n_batches, 0);
    assert_int_equal(unlink(lock), 0);
    assert_true(run_until(&f, has_batch));
    run_for(&f, 100);
    assert_int_equal(f.n_batches, 1);
    assert_int_equal(f.batches[0]->n_paths, 2);
    teardown(&f);
}

/* A symlink back up the tree (followed) is walked once, not until PATH_MAX. */
static void test_poll_symlink_loop(void **state) {
    (void)state;
    struct fixture f;
    setup_with(&f, WATCH_BACKEND_POLL, 5, NULL, true);
    char err[256], dir[128], link[160];
    snprintf(dir, sizeof(dir), "%s/a", f.root);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(link, sizeof(link), "%s/loop", dir);
    assert_int_equal(symlink(f.root, link), 0);
    write_file(dir, "m.py", "X = 1\n");
    assert_int_equal(watch_add_root(f.watch, f.root, err, sizeof(err)), 0);
    struct watch_stats st;
    watch_get_stats(f.watch, &st);
    assert_int_equal(st.polled_dirs, 2);
    assert_int_equal(st.polled_files, 1);
    teardown(&f);
}

static void test_fs_types(void **state) {
    (void)state;
    assert_true(watch_fs_name_is_remote("nfs4"));
    assert_true(watch_fs_name_is_remote("cifs"));
    assert_true(watch_fs_name_is_remote("fuse.sshfs"));
    assert_true(watch_fs_name_is_remote("fuse"));
    assert_true(watch_fs_name_is_remote("9p"));
    assert_true(watch_fs_name_is_remote("virtiofs"));
    assert_true(watch_fs_name_is_remote("vboxsf"));
    assert_false(watch_fs_name_is_remote("fuseblk"));
    assert_false(watch_fs_name_is_remote("ext4"));
    assert_false(watch_fs_name_is_remote("overlay"));
    assert_false(watch_fs_name_is_remote("tmpfs"));
    assert_true(watch_fs_magic_is_remote(0x6969));         /* NFS */
    assert_true(watch_fs_magic_is_remote(0x65735546));     /* FUSE */
    assert_true(watch_fs_magic_is_remote((long)0xff534d42)); /* CIFS */
    assert_false(watch_fs_magic_is_remote(0xef53));        /* ext4 */
    assert_false(watch_fs_magic_is_remote(0x01021994));    /* tmpfs */
    assert_false(watch_fs_magic_is_remote(0x794c7630));    /* overlay */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_inotify),
        cmocka_unit_test(test_batch_uv),
        cmocka_unit_test(test_holds),
        cmocka_unit_test(test_root_lost_and_restored),
        cmocka_unit_test(test_missing_root),
        cmocka_unit_test(test_adaptive_settle_complete_write),
        cmocka_unit_test(test_adaptive_settle_waits_for_open_write),
        cmocka_unit_test(test_adaptive_settle_storm_waits),
        cmocka_unit_test(test_adaptive_settle_waits_for_found_files),
        cmocka_unit_test(test_adaptive_settle_not_for_uv),
        cmocka_unit_test(test_poll_backend),
        cmocka_unit_test(test_poll_beside_inotify_reports_once),
        cmocka_unit_test(test_poll_root_lost_and_restored),
        cmocka_unit_test(test_poll_defers_while_git_works),
        cmocka_unit_test(test_poll_symlink_loop),
        cmocka_unit_test(test_fs_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
