#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_MAX_MESSAGE 4096

static atomic_int log_threshold = LOG_LEVEL_INFO;
static atomic_bool log_journal;
static atomic_bool log_initialized;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const level_labels[] = {"ERROR", "WARN", "INFO", "DEBUG"};
/* sd-daemon(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. */
static const char *const level_prefixes[] = {"<3>", "<4>", "<6>", "<7>"};

static bool level_valid(enum log_level level) {
    return (int)level >= LOG_LEVEL_ERROR && (int)level <= LOG_LEVEL_DEBUG;
}

/* systemd.exec(5): JOURNAL_STREAM is "DEVICE:INODE" of the stream systemd connected; a
 * process that inherited the variable but whose stderr goes elsewhere (a shell started
 * from a unit, a redirect) must not use journal prefixes. */
static bool stderr_is_journal(void) {
    const char *stream = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!stream || sscanf(stream, "%llu:%llu", &dev, &ino) != 2)
        return false;
    if (fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(enum log_level level) {
    log_set_level(level);
    if (atomic_exchange(&log_initialized, true))
        return;
    atomic_store(&log_journal, stderr_is_journal());
}

void log_set_level(enum log_level level) {
    if (level_valid(level))
        atomic_store(&log_threshold, (int)level);
}

enum log_level log_get_level(void) {
    return (enum log_level)atomic_load(&log_threshold);
}

int log_level_parse(const char *name, enum log_level *out) {
    if (name == NULL)
        return -EINVAL;
    for (int i = LOG_LEVEL_ERROR; i <= LOG_LEVEL_DEBUG; i++) {
        if (strcasecmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        *out = LOG_LEVEL_WARN;
        return 0;
    }
    return -EINVAL;
}

const char *log_level_name(enum log_level level) {
    return level_valid(level) ? level_names[level] : "unknown";
}

/* Cuts len back so that buf[0..len) does not end inside a UTF-8 sequence: a truncated
 * line must still be valid UTF-8 for the journal and for JSON consumers of the log. */
static size_t utf8_boundary(const char *buf, size_t len) {
    size_t end = len;
    size_t back = 0;
    while (end > 0 && back < 4 && ((unsigned char)buf[end - 1] & 0xC0) == 0x80) {
        end--;
        back++;
    }
    if (end == 0)
        return len;
    unsigned char lead = (unsigned char)buf[end - 1];
    size_t need;
    if (lead < 0x80)
        return len;
    else if ((lead & 0xE0) == 0xC0)
        need = 2;
    else if ((lead & 0xF0) == 0xE0)
        need = 3;
    else if ((lead & 0xF8) == 0xF0)
        need = 4;
    else
        return len;
    return back + 1 >= need ? len : end - 1;
}

static void log_write(enum log_level level, const char *fmt, va_list ap) {
    if ((int)level > atomic_load(&log_threshold))
        return;

    int saved_errno = errno;
    char buf[64 + LOG_MAX_MESSAGE + 1];
    size_t len;

    if (atomic_load(&log_journal)) {
        len = (size_t)snprintf(buf, 64, "%s", level_prefixes[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        len = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
        len += (size_t)snprintf(buf + len, 64 - len, ".%03ldZ pyhotd %s: ",
                                ts.tv_nsec / 1000000L, level_labels[level]);
    }

    /* %m in fmt must see the caller's errno. */
    errno = saved_errno;
    int n = vsnprintf(buf + len, LOG_MAX_MESSAGE + 1, fmt, ap);
    if (n > 0) {
        size_t msg = (size_t)n;
        if (msg > LOG_MAX_MESSAGE)
            msg = utf8_boundary(buf + len, LOG_MAX_MESSAGE);
        len += msg;
    }
    buf[len++] = '\n';

    /* One write(2) per line keeps lines whole between threads; a short write (a full
     * pipe) only continues the same line. */
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        p += w;
        len -= (size_t)w;
    }
    errno = saved_errno;
}

#define LOG_FN(name, level)                 \
    void name(const char *fmt, ...)         \
    {                                       \
        va_list ap;                         \
        va_start(ap, fmt);                  \
        log_write(level, fmt, ap);          \
        va_end(ap);                         \
    }

LOG_FN(log_error, LOG_LEVEL_ERROR)
LOG_FN(log_warn, LOG_LEVEL_WARN)
LOG_FN(log_info, LOG_LEVEL_INFO)
LOG_FN(log_debug, LOG_LEVEL_DEBUG)
