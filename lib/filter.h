#ifndef PYHOT_FILTER_H
#define PYHOT_FILTER_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Which paths under a watch root matter. Globs use fnmatch(3) with FNM_PATHNAME unset, so
 * "*" also matches "/"; a glob without "/" is matched against the base name, one with "/"
 * against the path relative to the root.
 *
 * Directories: a directory whose name is on the default ignore list (__pycache__, .git,
 * .hg, .svn, .venv, venv, node_modules, .mypy_cache, .pytest_cache, .tox) or that matches
 * an exclude glob never gets a watch.
 *
 * Files: a file is accepted when it matches an include glob (default "*.py") and neither
 * an exclude glob nor the default ignore list of files (*.py[cod], *.swp, *.swx, *.swo,
 * *~, .#*, #*#, 4913, *___jb_tmp___, *___jb_old___, *.tmp).
 */
struct filter;

/* Builds a filter. include may be NULL/0 for the default ("*.py"); exclude may be NULL/0.
 * The strings are copied. Returns 0 and sets *out, or -ENOMEM / -EINVAL (an empty glob),
 * writing a message into err (errlen bytes) on failure. */
int filter_new(const char *const *include, size_t n_include, const char *const *exclude,
               size_t n_exclude, struct filter **out, char *err, size_t errlen);

/* Frees the filter. NULL is allowed. */
void filter_free(struct filter *filter);

/* true when the directory with base name `name` and root-relative path `relpath` (may be
 * equal to name) must not be watched. */
bool filter_ignores_dir(const struct filter *filter, const char *relpath, const char *name);

/* true when a change to the file with base name `name` and root-relative path `relpath`
 * can trigger a reload. */
bool filter_accepts_file(const struct filter *filter, const char *relpath, const char *name);

#endif
