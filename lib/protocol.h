#ifndef PYHOT_PROTOCOL_H
#define PYHOT_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * The control protocol (docs/protocol.md): one JSON object per line, UTF-8, "\n"-terminated,
 * in each direction. Pure functions, no I/O: fuzzable and shared by pyhotd and pyhotctl.
 *
 *   request   {"id": ID, "cmd": "NAME", ...arguments as further members...}
 *   response  {"id": ID, "ok": true, "result": ...}
 *             {"id": ID, "ok": false, "error": {"code": "...", "message": "...", ...}}
 *   event     {"event": "NAME", "seq": N, "time": "RFC 3339 UTC", ...}
 *
 * ID is any JSON string or integer the client chooses, echoed back; null when absent or
 * when the request could not be parsed far enough to read it.
 */
#define PROTOCOL_VERSION 1

/* Longest request line accepted, in bytes, without its "\n". */
#define PROTOCOL_MAX_LINE (1024 * 1024)

/* Stable error codes (the "code" member of an error). */
#define PROTOCOL_E_PARSE           "parse_error"       /* not JSON, or not UTF-8 */
#define PROTOCOL_E_INVALID         "invalid_request"   /* not an object, no/bad cmd or id */
#define PROTOCOL_E_UNKNOWN_COMMAND "unknown_command"
#define PROTOCOL_E_BAD_ARGUMENT    "bad_argument"
#define PROTOCOL_E_NOT_FOUND       "not_found"         /* no such module or path */
#define PROTOCOL_E_PYTHON          "python_error"      /* the code raised; details in error */
#define PROTOCOL_E_TIMEOUT         "timeout"           /* the job passed its deadline */
#define PROTOCOL_E_INTERRUPTED     "interrupted"       /* exec/repl: interrupt command, or a
                                                          reload waited (KeyboardInterrupt) */
#define PROTOCOL_E_TOO_LARGE       "request_too_large"
#define PROTOCOL_E_SHUTTING_DOWN   "shutting_down"
#define PROTOCOL_E_INTERNAL        "internal_error"
#define PROTOCOL_E_RELOAD_FAILED   "reload_failed"     /* the batch failed; details in error */
#define PROTOCOL_E_PERMISSION      "permission_denied" /* peer uid refused (SO_PEERCRED) */
#define PROTOCOL_E_TOO_MANY        "too_many_clients"  /* connection limit reached */
#define PROTOCOL_E_REQUEST_TIMEOUT "request_timeout"   /* a partial line was not finished */
#define PROTOCOL_E_ALREADY_WATCHED "already_watched"   /* watch: DIR is, is under or holds a root */
#define PROTOCOL_E_WATCH_FAILED    "watch_failed"      /* watch: the kernel refused (limits, access) */
#define PROTOCOL_E_SANDBOX        "sandbox_failed"    /* run --sandbox: cannot be set up */

struct protocol_request {
    json_t *root;     /* the whole request object (owned; arguments are its members) */
    json_t *id;       /* borrowed from root; JSON null when absent */
    const char *cmd;  /* borrowed from root */
};

/* Decodes one request line of len bytes (no "\n" needed; embedded NULs are an error).
 * Returns 0 and fills *req (release with protocol_request_clear), or -EINVAL with the
 * error code (one of PROTOCOL_E_*) in *code, a message in err (errlen bytes), and, when
 * the line was an object with a usable id, a new reference to that id in *id_out
 * (else NULL). *req is untouched on failure. */
int protocol_decode_request(const char *line, size_t len, struct protocol_request *req,
                            const char **code, json_t **id_out, char *err, size_t errlen);

/* Releases what protocol_decode_request filled. NULL and cleared requests are allowed. */
void protocol_request_clear(struct protocol_request *req);

/* Argument accessors: the member `name` of the request. Each returns 0 and sets *out
 * (borrowed for strings), -ENOENT when absent (or null), -EINVAL when of the wrong type,
 * with a message naming the argument in err. */
int protocol_arg_string(const struct protocol_request *req, const char *name,
                        const char **out, char *err, size_t errlen);
int protocol_arg_int(const struct protocol_request *req, const char *name, int64_t min,
                     int64_t max, int64_t *out, char *err, size_t errlen);
/* A string or an array of strings; *out is a new reference to an array of strings. */
int protocol_arg_string_list(const struct protocol_request *req, const char *name,
                             json_t **out, char *err, size_t errlen);

/* Encoders. Each returns a malloc'd "\n"-terminated line (caller frees) and its length in
 * *len (may be NULL), or NULL on allocation failure. id may be NULL (encoded as null);
 * it is not stolen. result is stolen (NULL encodes as null). */
char *protocol_encode_ok(json_t *id, json_t *result, size_t *len);
/* The same with result already encoded (a compact JSON value of result_len bytes, e.g.
 * from protocol_encode_value): the response is id's encoding spliced around it. */
char *protocol_encode_ok_encoded(json_t *id, const char *result, size_t result_len, size_t *len);
/* Encodes value compactly, without "\n"; caller frees; NULL on allocation failure. */
char *protocol_encode_value(json_t *value, size_t *len);
/* error members beyond code and message come from `details` (an object, stolen; may be
 * NULL), e.g. type, traceback. */
char *protocol_encode_error(json_t *id, const char *code, const char *message,
                            json_t *details, size_t *len);
/* Encodes any JSON value compactly on one line (the event, a request). Not stolen. */
char *protocol_encode_line(json_t *value, size_t *len);

/* Encodes a request {"id": id, "cmd": cmd, ...members of args}; args (an object or NULL)
 * is not stolen. */
char *protocol_encode_request(int64_t id, const char *cmd, json_t *args, size_t *len);

/* Writes the current UTC time as RFC 3339 with milliseconds ("2026-11-27T04:19:43.123Z")
 * into buf (at least 25 bytes). Returns buf. */
char *protocol_format_time(char *buf, size_t len);

/* The default socket path (DESIGN "Control protocol"): $PYHOT_SOCKET when set; else
 * $XDG_RUNTIME_DIR/pyhot/pyhotd.sock; else, for root, /run/pyhotd/pyhotd.sock; else
 * /tmp/pyhot-UID/pyhotd.sock. Returns 0, or -ENAMETOOLONG when it does not fit in len
 * bytes or in sockaddr_un's sun_path (108 bytes, unix(7)). */
int protocol_default_socket_path(char *buf, size_t len);

#endif
