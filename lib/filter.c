#include "filter.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct filter {
    char **include;
    size_t n_include;
    char **exclude;
    size_t n_exclude;
};

static const char *const default_include[] = {"*.py"};

static const char *const ignored_dirs[] = {
    "__pycache__", ".git", ".hg", ".svn", ".venv", "venv",
    "node_modules", ".mypy_cache", ".pytest_cache", ".tox",
};

/* Compiled bytecode, editor swap and backup files, and the temporary files editors write
 * before renaming over the original (vim's 4913 probe, JetBrains' safe write). */
static const char *const ignored_files[] = {
    "*.py[cod]", "*.swp", "*.swx", "*.swo", "*~", ".#*", "#*#", "4913",
    "*___jb_tmp___", "*___jb_old___", "*.tmp",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void globs_free(char **globs, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(globs[i]);
    free(globs);
}

static int globs_copy(const char *const *src, size_t n, const char *what, char ***out,
                      char *err, size_t errlen) {
    char **globs = calloc(n > 0 ? n : 1, sizeof(*globs));
    if (globs == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (src[i] == NULL || src[i][0] == '\0') {
            snprintf(err, errlen, "%s: empty glob", what);
            globs_free(globs, i);
            return -EINVAL;
        }
        globs[i] = strdup(src[i]);
        if (globs[i] == NULL) {
            snprintf(err, errlen, "out of memory");
            globs_free(globs, i);
            return -ENOMEM;
        }
    }
    *out = globs;
    return 0;
}

int filter_new(const char *const *include, size_t n_include, const char *const *exclude,
               size_t n_exclude, struct filter **out, char *err, size_t errlen) {
    if (include == NULL || n_include == 0) {
        include = default_include;
        n_include = COUNT(default_include);
    }
    if (exclude == NULL)
        n_exclude = 0;

    struct filter *filter = calloc(1, sizeof(*filter));
    if (filter == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int r = globs_copy(include, n_include, "include", &filter->include, err, errlen);
    if (r < 0) {
        free(filter);
        return r;
    }
    filter->n_include = n_include;
    r = globs_copy(exclude, n_exclude, "exclude", &filter->exclude, err, errlen);
    if (r < 0) {
        filter_free(filter);
        return r;
    }
    filter->n_exclude = n_exclude;
    *out = filter;
    return 0;
}

void filter_free(struct filter *filter) {
    if (filter == NULL)
        return;
    globs_free(filter->include, filter->n_include);
    globs_free(filter->exclude, filter->n_exclude);
    free(filter);
}

static bool glob_matches(const char *glob, const char *relpath, const char *name) {
    return fnmatch(glob, strchr(glob, '/') != NULL ? relpath : name, 0) == 0;
}

static bool any_matches(char *const *globs, size_t n, const char *relpath, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (glob_matches(globs[i], relpath, name))
            return true;
    return false;
}

bool filter_ignores_dir(const struct filter *filter, const char *relpath, const char *name) {
    for (size_t i = 0; i < COUNT(ignored_dirs); i++)
        if (strcmp(name, ignored_dirs[i]) == 0)
            return true;
    if (any_matches(filter->exclude, filter->n_exclude, relpath, name))
        return true;

    /* An exclude glob like "build/" followed by "*" names everything under a directory;
     * it also matches "build/" (the star matches nothing), so the directory itself is
     * not watched rather than watched only to drop every event under it. */
    if (filter->n_exclude == 0)
        return false;
    size_t len = strlen(relpath);
    char stack[512];
    char *slashed = len + 2 <= sizeof(stack) ? stack : malloc(len + 2);
    if (slashed == NULL)
        return false;
    memcpy(slashed, relpath, len);
    slashed[len] = '/';
    slashed[len + 1] = '\0';
    bool ignored = false;
    for (size_t i = 0; i < filter->n_exclude && !ignored; i++)
        if (strchr(filter->exclude[i], '/') != NULL)
            ignored = fnmatch(filter->exclude[i], slashed, 0) == 0;
    if (slashed != stack)
        free(slashed);
    return ignored;
}

bool filter_accepts_file(const struct filter *filter, const char *relpath, const char *name) {
    for (size_t i = 0; i < COUNT(ignored_files); i++)
        if (fnmatch(ignored_files[i], name, 0) == 0)
            return false;
    if (!any_matches(filter->include, filter->n_include, relpath, name))
        return false;
    return !any_matches(filter->exclude, filter->n_exclude, relpath, name);
}
