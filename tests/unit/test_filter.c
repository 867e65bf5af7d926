/* Unit tests of lib/filter.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filter.h"

static struct filter *make(const char *const *include, size_t n_include,
                           const char *const *exclude, size_t n_exclude) {
    struct filter *f = NULL;
    char err[256] = "";
    assert_int_equal(filter_new(include, n_include, exclude, n_exclude, &f, err, sizeof(err)), 0);
    assert_non_null(f);
    return f;
}

static void test_default_include(void **state) {
    struct filter *f = make(NULL, 0, NULL, 0);
    assert_true(filter_accepts_file(f, "app.py", "app.py"));
    assert_true(filter_accepts_file(f, "pkg/sub/mod.py", "mod.py"));
    assert_false(filter_accepts_file(f, "notes.txt", "notes.txt"));
    assert_false(filter_accepts_file(f, "pkg/data.json", "data.json"));
    assert_false(filter_accepts_file(f, "app.pyi", "app.pyi"));
    filter_free(f);
}

static void test_default_file_ignores(void **state) {
    /* Each of these would otherwise pass an include of "*". */
    static const char *const all[] = {"*"};
    static const char *const ignored[] = {
        "x.pyc", "x.pyo", "x.pyd", "x.py.swp", ".x.py.swp", ".x.py.swx", ".x.py.swo",
        "x.py~", ".#x.py", "#x.py#", "4913", "x.py___jb_tmp___", "x.py___jb_old___",
        "x.tmp",
    };
    struct filter *f = make(all, 1, NULL, 0);
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
        char rel[64];
        snprintf(rel, sizeof(rel), "pkg/%s", ignored[i]);
        if (filter_accepts_file(f, rel, ignored[i]))
            fail_msg("%s was accepted", ignored[i]);
    }
    assert_true(filter_accepts_file(f, "x.py", "x.py"));
    assert_true(filter_accepts_file(f, "4914", "4914"));
    assert_true(filter_accepts_file(f, "notes.txt", "notes.txt"));
    filter_free(f);

    /* The default ignores hold with the default include too. */
    f = make(NULL, 0, NULL, 0);
    assert_false(filter_accepts_file(f, "x.pyc", "x.pyc"));
    assert_false(filter_accepts_file(f, ".#x.py", ".#x.py"));
    assert_false(filter_accepts_file(f, "x.py~", "x.py~"));
    filter_free(f);
}

static void test_default_dir_ignores(void **state) {
    static const char *const ignored[] = {
        "__pycache__", ".git", ".hg", ".svn", ".venv", "venv", "node_modules",
        ".mypy_cache", ".pytest_cache", ".tox",
    };
    struct filter *f = make(NULL, 0, NULL, 0);
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
        char rel[64];
        snprintf(rel, sizeof(rel), "a/b/%s", ignored[i]);
        if (!filter_ignores_dir(f, ignored[i], ignored[i]))
            fail_msg("%s was watched", ignored[i]);
        if (!filter_ignores_dir(f, rel, ignored[i]))
            fail_msg("%s was watched", rel);
    }
    assert_false(filter_ignores_dir(f, "src", "src"));
    assert_false(filter_ignores_dir(f, "pkg/venvs", "venvs"));
    assert_false(filter_ignores_dir(f, "git", "git"));
    filter_free(f);
}

static void test_include_globs(void **state) {
    /* Without "/": the base name, at any depth. */
    static const char *const names[] = {"*.py", "*.pyi"};
    struct filter *f = make(names, 2, NULL, 0);
    assert_true(filter_accepts_file(f, "a.pyi", "a.pyi"));
    assert_true(filter_accepts_file(f, "deep/er/a.pyi", "a.pyi"));
    assert_true(filter_accepts_file(f, "a.py", "a.py"));
    assert_false(filter_accepts_file(f, "a.txt", "a.txt"));
    filter_free(f);

    /* With "/": the root-relative path; "*" also crosses "/". */
    static const char *const paths[] = {"pkg/*.py"};
    f = make(paths, 1, NULL, 0);
    assert_true(filter_accepts_file(f, "pkg/a.py", "a.py"));
    assert_true(filter_accepts_file(f, "pkg/sub/a.py", "a.py"));
    assert_false(filter_accepts_file(f, "a.py", "a.py"));
    assert_false(filter_accepts_file(f, "other/a.py", "a.py"));
    assert_false(filter_accepts_file(f, "pkg/a.pyc", "a.pyc"));
    filter_free(f);
}

static void test_exclude_globs(void **state) {
    /* Without "/": base names of files and directories. */
    static const char *const names[] = {"test_*", "build"};
    struct filter *f = make(NULL, 0, names, 2);
    assert_false(filter_accepts_file(f, "tests/test_a.py", "test_a.py"));
    assert_false(filter_accepts_file(f, "test_a.py", "test_a.py"));
    assert_true(filter_accepts_file(f, "tests/a.py", "a.py"));
    assert_true(filter_ignores_dir(f, "test_data", "test_data"));
    assert_true(filter_ignores_dir(f, "src/build", "build"));
    assert_false(filter_ignores_dir(f, "tests", "tests"));
    filter_free(f);

    /* With "/": root-relative paths; "gen/" + "*" also keeps the directory unwatched. */
    static const char *const paths[] = {"gen/*", "pkg/*_pb2.py"};
    f = make(NULL, 0, paths, 2);
    assert_false(filter_accepts_file(f, "gen/a.py", "a.py"));
    assert_false(filter_accepts_file(f, "gen/deep/a.py", "a.py"));
    assert_false(filter_accepts_file(f, "pkg/msg_pb2.py", "msg_pb2.py"));
    assert_true(filter_accepts_file(f, "pkg/msg.py", "msg.py"));
    assert_true(filter_accepts_file(f, "src/gen/a.py", "a.py"));
    assert_true(filter_ignores_dir(f, "gen", "gen"));
    assert_true(filter_ignores_dir(f, "gen/deep", "deep"));
    assert_false(filter_ignores_dir(f, "src/gen", "gen"));
    assert_false(filter_ignores_dir(f, "pkg", "pkg"));
    filter_free(f);
}

static void test_exclude_beats_include(void **state) {
    static const char *const include[] = {"*.py"};
    static const char *const exclude[] = {"conftest.py"};
    struct filter *f = make(include, 1, exclude, 1);
    assert_false(filter_accepts_file(f, "tests/conftest.py", "conftest.py"));
    assert_true(filter_accepts_file(f, "tests/test_x.py", "test_x.py"));
    filter_free(f);
}

static void test_bad_globs(void **state) {
    struct filter *f = NULL;
    char err[256] = "";
    static const char *const empty[] = {"*.py", ""};
    assert_int_equal(filter_new(empty, 2, NULL, 0, &f, err, sizeof(err)), -EINVAL);
    assert_null(f);
    assert_string_equal(err, "include: empty glob");
    assert_int_equal(filter_new(NULL, 0, empty, 2, &f, err, sizeof(err)), -EINVAL);
    assert_null(f);
    assert_string_equal(err, "exclude: empty glob");
    filter_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_include),
        cmocka_unit_test(test_default_file_ignores),
        cmocka_unit_test(test_default_dir_ignores),
        cmocka_unit_test(test_include_globs),
        cmocka_unit_test(test_exclude_globs),
        cmocka_unit_test(test_exclude_beats_include),
        cmocka_unit_test(test_bad_globs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
