/*
 * The control protocol: decoding of request lines, argument accessors, encoders of
 * responses, events and requests. Pure: no I/O, no globals, no logging; every failure is
 * reported through the caller's buffers (lib/protocol.h, docs/protocol.md).
 */
#include "protocol.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/*
 * Reals (durations in milliseconds) are written with at most 15 significant digits:
 * every decimal of up to 15 digits survives the trip through a double, so 1.24 goes out
 * as 1.24 rather than 1.2399999999999999.
 */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    size_t need, i;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        need = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        need = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        need = 4;
    else
        return 0;
    if (n < need)
        return 0;
    for (i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    }
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
        return 0;
    return need;
}

/*
 * Replaces every byte that is not part of valid UTF-8 with '?', in place. Messages quote
 * the client's bytes (jansson's "near '...'") and may be cut by a short buffer, and an
 * error that is not UTF-8 could not be sent back at all.
 */
static void utf8_sanitize(char *str) {
    unsigned char *s = (unsigned char *)str;
    size_t n = strlen(str), k;

    while (n > 0) {
        k = utf8_seq(s, n);
        if (k == 0) {
            *s = '?';
            k = 1;
        }
        s += k;
        n -= k;
    }
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:  return "an object";
    case JSON_ARRAY:   return "an array";
    case JSON_STRING:  return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL:    return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE:   return "a boolean";
    case JSON_NULL:    return "null";
    }
    return "a JSON value";
}

/* Fills the failure outputs of protocol_decode_request; id may be NULL (not usable). */
static int decode_fail(const char **code, const char *what, json_t **id_out, json_t *id) {
    if (code != NULL)
        *code = what;
    if (id_out != NULL)
        *id_out = (id != NULL && !json_is_null(id)) ? json_incref(id) : NULL;
    return -EINVAL;
}

int protocol_decode_request(const char *line, size_t len, struct protocol_request *req,
                            const char **code, json_t **id_out, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root, *id, *cmd;
    const char *nul;
    size_t content = len;

    if (id_out != NULL)
        *id_out = NULL;
    if (line == NULL)
        len = content = 0;

    /* The limit is on the line without its terminator; a caller may pass "...\r\n". */
    if (content > 0 && line[content - 1] == '\n')
        content--;
    if (content > 0 && line[content - 1] == '\r')
        content--;
    if (content > PROTOCOL_MAX_LINE) {
        set_err(err, errlen, "request line of %zu bytes exceeds the limit of %d bytes",
                content, PROTOCOL_MAX_LINE);
        return decode_fail(code, PROTOCOL_E_TOO_LARGE, id_out, NULL);
    }
    nul = len > 0 ? memchr(line, '\0', len) : NULL;
    if (nul != NULL) {
        set_err(err, errlen, "NUL byte at column %zu", (size_t)(nul - line) + 1);
        return decode_fail(code, PROTOCOL_E_PARSE, id_out, NULL);
    }

    /*
     * The EOF check stays on: the whole line must be one value, followed by nothing but
     * whitespace (which covers a trailing "\r" or "\n"). JSON_DECODE_ANY lets a scalar or
     * an array through the parser so that it is reported as invalid_request, not as a
     * parse error. "\u0000" in strings stays refused, so every string is a C string.
     */
    root = json_loadb(len > 0 ? line : "", len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                      &jerr);
    if (root == NULL) {
        set_err(err, errlen, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        if (err != NULL && errlen > 0)
            utf8_sanitize(err);
        return decode_fail(code, PROTOCOL_E_PARSE, id_out, NULL);
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "a request must be a JSON object, not %s", type_name(root));
        json_decref(root);
        return decode_fail(code, PROTOCOL_E_INVALID, id_out, NULL);
    }

    id = json_object_get(root, "id");
    if (id != NULL && !json_is_null(id) && !json_is_integer(id) && !json_is_string(id)) {
        set_err(err, errlen, "\"id\" must be an integer or a string, not %s", type_name(id));
        json_decref(root);
        return decode_fail(code, PROTOCOL_E_INVALID, id_out, NULL);
    }
    if (id == NULL)
        id = json_null();

    cmd = json_object_get(root, "cmd");
    if (cmd == NULL || json_is_null(cmd)) {
        set_err(err, errlen, "missing \"cmd\"");
        goto invalid;
    }
    if (!json_is_string(cmd)) {
        set_err(err, errlen, "\"cmd\" must be a string, not %s", type_name(cmd));
        goto invalid;
    }
    if (json_string_length(cmd) == 0) {
        set_err(err, errlen, "\"cmd\" is empty");
        goto invalid;
    }

    req->root = root;
    req->id = id;
    req->cmd = json_string_value(cmd);
    if (code != NULL)
        *code = NULL;
    return 0;

invalid:
    /* The id is usable: take our reference before the object that holds it goes. */
    decode_fail(code, PROTOCOL_E_INVALID, id_out, id);
    json_decref(root);
    return -EINVAL;
}

void protocol_request_clear(struct protocol_request *req) {
    if (req == NULL)
        return;
    json_decref(req->root);
    req->root = NULL;
    req->id = NULL;
    req->cmd = NULL;
}

/* The member `name` of the request, or NULL when absent or null. */
static json_t *arg_get(const struct protocol_request *req, const char *name) {
    json_t *v;

    if (req == NULL || req->root == NULL)
        return NULL;
    v = json_object_get(req->root, name);
    return json_is_null(v) ? NULL : v;
}

int protocol_arg_string(const struct protocol_request *req, const char *name,
                        const char **out, char *err, size_t errlen) {
    json_t *v = arg_get(req, name);

    if (v == NULL) {
        set_err(err, errlen, "missing argument \"%s\"", name);
        return -ENOENT;
    }
    if (!json_is_string(v)) {
        set_err(err, errlen, "argument \"%s\" must be a string, not %s", name, type_name(v));
        return -EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

int protocol_arg_int(const struct protocol_request *req, const char *name, int64_t min,
                     int64_t max, int64_t *out, char *err, size_t errlen) {
    json_t *v = arg_get(req, name);
    int64_t n;

    if (v == NULL) {
        set_err(err, errlen, "missing argument \"%s\"", name);
        return -ENOENT;
    }
    if (!json_is_integer(v)) {
        set_err(err, errlen, "argument \"%s\" must be an integer, not %s", name,
                type_name(v));
        return -EINVAL;
    }
    n = (int64_t)json_integer_value(v);
    if (n < min || n > max) {
        set_err(err, errlen, "argument \"%s\" must be between %lld and %lld, not %lld",
                name, (long long)min, (long long)max, (long long)n);
        return -EINVAL;
    }
    *out = n;
    return 0;
}

int protocol_arg_string_list(const struct protocol_request *req, const char *name,
                             json_t **out, char *err, size_t errlen) {
    json_t *v = arg_get(req, name);
    json_t *list, *item;
    size_t i;

    if (v == NULL) {
        set_err(err, errlen, "missing argument \"%s\"", name);
        return -ENOENT;
    }
    if (json_is_string(v)) {
        list = json_array();
        if (list == NULL || json_array_append(list, v) < 0) {
            json_decref(list);
            set_err(err, errlen, "out of memory");
            return -ENOMEM;
        }
        *out = list;
        return 0;
    }
    if (!json_is_array(v)) {
        set_err(err, errlen, "argument \"%s\" must be a string or an array of strings, not %s",
                name, type_name(v));
        return -EINVAL;
    }
    json_array_foreach(v, i, item) {
        if (!json_is_string(item)) {
            set_err(err, errlen, "argument \"%s\": item %zu must be a string, not %s", name,
                    i, type_name(item));
            return -EINVAL;
        }
    }
    /* A copy of its own, so that the caller may change it without touching the request. */
    list = json_copy(v);
    if (list == NULL) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    *out = list;
    return 0;
}

/*
 * The encoder: jansson's, written in one pass. json_dumpb() measures the value, then
 * writes it (two walks); json_dump_callback() walks once into our buffer, which grows as
 * needed. JSON_REAL_PRECISION(15) writes durations as people read them ("12.3", not
 * "12.300000000000001").
 */
#define ENCODE_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

struct out {
    char *data;
    size_t len, cap;
    int failed;
};

static int out_reserve(struct out *o, size_t n) {
    size_t cap;
    char *data;

    if (o->failed)
        return -1;
    if (o->len + n <= o->cap)
        return 0;
    cap = o->cap ? o->cap : 256;
    while (cap < o->len + n)
        cap *= 2;
    data = realloc(o->data, cap);
    if (data == NULL) {
        o->failed = 1;
        return -1;
    }
    o->data = data;
    o->cap = cap;
    return 0;
}

static void out_put(struct out *o, const char *s, size_t n) {
    if (out_reserve(o, n) == 0) {
        memcpy(o->data + o->len, s, n);
        o->len += n;
    }
}

static int out_dump(const char *buffer, size_t size, void *data) {
    struct out *o = data;

    out_put(o, buffer, size);
    return o->failed ? -1 : 0;
}

/* Appends value compactly; marks o failed on error. */
static void out_value(struct out *o, const json_t *value) {
    if (json_dump_callback(value, out_dump, o, ENCODE_FLAGS | JSON_ENCODE_ANY) < 0)
        o->failed = 1;
}

/* Ends o with "\n" and a NUL; returns its buffer (owned by the caller) or NULL. */
static char *out_finish(struct out *o, size_t *len) {
    out_put(o, "\n", 2);
    if (o->failed) {
        free(o->data);
        return NULL;
    }
    if (len != NULL)
        *len = o->len - 1;
    return o->data;
}

/* Dumps value compactly and appends "\n". */
static char *encode(const json_t *value, size_t *len) {
    struct out o = { 0 };

    out_value(&o, value);
    return out_finish(&o, len);
}

/* {"id": id, "ok": ok, ...}; id is not stolen. */
static json_t *response_new(json_t *id, int ok) {
    json_t *resp = json_object();

    if (resp == NULL)
        return NULL;
    if (json_object_set(resp, "id", id != NULL ? id : json_null()) < 0 ||
        json_object_set_new(resp, "ok", json_boolean(ok)) < 0) {
        json_decref(resp);
        return NULL;
    }
    return resp;
}

char *protocol_encode_ok(json_t *id, json_t *result, size_t *len) {
    /* {"id":ID,"ok":true,"result":RESULT}, written directly (no response object). */
    struct out o = { 0 };

    out_put(&o, "{\"id\":", sizeof("{\"id\":") - 1);
    out_value(&o, id != NULL ? id : json_null());
    out_put(&o, ",\"ok\":true,\"result\":", sizeof(",\"ok\":true,\"result\":") - 1);
    out_value(&o, result != NULL ? result : json_null());
    out_put(&o, "}", 1);
    json_decref(result);
    return out_finish(&o, len);
}

char *protocol_encode_ok_encoded(json_t *id, const char *result, size_t result_len, size_t *len) {
    struct out o = { 0 };

    out_put(&o, "{\"id\":", sizeof("{\"id\":") - 1);
    out_value(&o, id != NULL ? id : json_null());
    out_put(&o, ",\"ok\":true,\"result\":", sizeof(",\"ok\":true,\"result\":") - 1);
    out_put(&o, result, result_len);
    out_put(&o, "}", 1);
    return out_finish(&o, len);
}

char *protocol_encode_value(json_t *value, size_t *len) {
    struct out o = { 0 };

    out_value(&o, value);
    out_put(&o, "", 1);
    if (o.failed) {
        free(o.data);
        return NULL;
    }
    if (len != NULL)
        *len = o.len - 1;
    return o.data;
}

/* message as a JSON string, its invalid UTF-8 replaced (json_string() refuses it). */
static json_t *message_string(const char *message) {
    json_t *v;
    char *copy;

    if (message == NULL)
        return json_string("");
    v = json_string(message);
    if (v != NULL)
        return v;
    copy = strdup(message);
    if (copy == NULL)
        return NULL;
    utf8_sanitize(copy);
    v = json_string(copy);
    free(copy);
    return v;
}

char *protocol_encode_error(json_t *id, const char *code, const char *message,
                            json_t *details, size_t *len) {
    json_t *resp = response_new(id, 0);
    json_t *error = json_object();
    char *line = NULL;
    int r = 0;

    if (resp == NULL || error == NULL)
        goto out;
    /* code and message go first and win over members of the same name in details. */
    r |= json_object_set_new(error, "code",
                             json_string(code != NULL ? code : PROTOCOL_E_INTERNAL));
    r |= json_object_set_new(error, "message", message_string(message));
    if (json_is_object(details)) {
        const char *key;
        json_t *value;

        json_object_foreach(details, key, value) {
            if (strcmp(key, "code") != 0 && strcmp(key, "message") != 0)
                r |= json_object_set(error, key, value);
        }
    }
    if (r == 0 && json_object_set(resp, "error", error) == 0)
        line = encode(resp, len);
out:
    json_decref(error);
    json_decref(details);
    json_decref(resp);
    return line;
}

char *protocol_encode_line(json_t *value, size_t *len) {
    if (value == NULL)
        return NULL;
    return encode(value, len);
}

char *protocol_encode_request(int64_t id, const char *cmd, json_t *args, size_t *len) {
    json_t *req = json_object();
    char *line = NULL;
    int r = 0;

    if (req == NULL)
        return NULL;
    r |= json_object_set_new(req, "id", json_integer((json_int_t)id));
    r |= json_object_set_new(req, "cmd", json_string(cmd != NULL ? cmd : ""));
    if (json_is_object(args)) {
        const char *key;
        json_t *value;

        json_object_foreach(args, key, value) {
            if (strcmp(key, "id") != 0 && strcmp(key, "cmd") != 0)
                r |= json_object_set(req, key, value);
        }
    }
    if (r == 0)
        line = encode(req, len);
    json_decref(req);
    return line;
}

char *protocol_format_time(char *buf, size_t len) {
    struct timespec ts;
    struct tm tm;
    char date[32];

    if (buf == NULL || len == 0)
        return buf;
    buf[0] = '\0';
    if (clock_gettime(CLOCK_REALTIME, &ts) < 0 || gmtime_r(&ts.tv_sec, &tm) == NULL)
        return buf;
    if (strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        return buf;
    snprintf(buf, len, "%s.%03ldZ", date, ts.tv_nsec / 1000000L);
    return buf;
}

int protocol_default_socket_path(char *buf, size_t len) {
    const char *env;
    size_t max = sizeof(((struct sockaddr_un *)NULL)->sun_path);
    int n;

    if (len < max)
        max = len;

    env = getenv("PYHOT_SOCKET");
    if (env != NULL && env[0] != '\0') {
        n = snprintf(buf, len, "%s", env);
    } else {
        /* Relative values of XDG variables are invalid and ignored (XDG Base Directory). */
        env = getenv("XDG_RUNTIME_DIR");
        if (env != NULL && env[0] == '/') {
            size_t l = strlen(env);

            while (l > 1 && env[l - 1] == '/')
                l--;
            n = snprintf(buf, len, "%.*s/pyhot/pyhotd.sock", (int)(l > 1 ? l : 0), env);
        } else if (geteuid() == 0) {
            n = snprintf(buf, len, "/run/pyhotd/pyhotd.sock");
        } else {
            n = snprintf(buf, len, "/tmp/pyhot-%lu/pyhotd.sock", (unsigned long)geteuid());
        }
    }
    /* n + 1 bytes are needed: the path and its NUL. */
    if (n < 0 || (size_t)n + 1 > max) {
        if (len > 0)
            buf[0] = '\0';
        return -ENAMETOOLONG;
    }
    return 0;
}
