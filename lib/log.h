#ifndef PYHOT_LOG_H
#define PYHOT_LOG_H

/*
 * Levelled logging to stderr, safe from any thread. Each message is formatted into one
 * buffer and written with a single write(2), so lines from the loop thread and the
 * python thread never interleave. When JOURNAL_STREAM is set (systemd connected stderr
 * to the journal, see systemd.exec(5)) each line starts with a "<N>" priority prefix
 * (sd-daemon(3)) and no timestamp, since journald adds its own.
 */

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
};

/* Sets the threshold and detects journald from the environment. Call once at start,
 * before other threads exist; later calls only change the threshold. */
void log_init(enum log_level level);

/* Changes the threshold; messages above it are dropped. Thread-safe. */
void log_set_level(enum log_level level);

/* Current threshold. */
enum log_level log_get_level(void);

/* Parses "error", "warn"/"warning", "info" or "debug" (case-insensitive) into *out.
 * Returns 0, or -EINVAL leaving *out untouched. */
int log_level_parse(const char *name, enum log_level *out);

/* The lower-case name of a level ("error", "warn", "info", "debug"). */
const char *log_level_name(enum log_level level);

/* printf-style messages; a trailing newline is added. Lines longer than 4096 bytes are
 * truncated. */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
