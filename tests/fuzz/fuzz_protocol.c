/*
 * libFuzzer target for the request decoder (lib/protocol.c): any bytes go in as one
 * request line; a decoded request is re-encoded, and the line that comes out must be one
 * "\n"-terminated line, byte for byte what jansson's json_dumpb() writes, that decodes
 * again to a request that encodes to the same line.
 * Errors must carry a code and a message, and the request must stay untouched. A decoded
 * request's "events", "modules" and "history" members also go through the argument
 * parsers of subscribe and history (lib/events.c), as the daemon would read them.
 *
 * Build and run from the top of the tree (clang; jansson itself is not instrumented, so
 * coverage guidance stops at its API, which is what this target is about):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib \
 *       tests/fuzz/fuzz_protocol.c lib/protocol.c lib/events.c lib/log.c \
 *       -ljansson -lm -o /tmp/fuzz_protocol
 *   mkdir -p /tmp/corpus && /tmp/fuzz_protocol -artifact_prefix=/tmp/ -max_len=4096 \
 *       /tmp/corpus tests/fuzz/corpus/protocol
 *
 * libFuzzer writes every new input into the first directory it is given, hence the scratch
 * directory first and the committed seeds (tests/fuzz/corpus/protocol) second; crashing
 * inputs go to -artifact_prefix (by default the current directory: keep them out of the tree).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "protocol.h"

/*
 * Reals go out with 15 significant digits, so the few within 5e-15 of DBL_MAX round up
 * past it and no longer parse ("real number overflow"). No duration gets there; the
 * round trip is not checked for such requests.
 */
static int has_huge_real(const json_t *v) {
    const char *key;
    json_t *item;
    size_t i;

    switch (json_typeof(v)) {
    case JSON_REAL:
        return fabs(json_real_value(v)) >= 1.797693134862315e308;
    case JSON_ARRAY:
        json_array_foreach(v, i, item) {
            if (has_huge_real(item))
                return 1;
        }
        return 0;
    case JSON_OBJECT:
        json_object_foreach((json_t *)v, key, item) {
            if (has_huge_real(item))
                return 1;
        }
        return 0;
    default:
        return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define JANSSON_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t poison;
    struct protocol_request req = { &poison, &poison, "poison" };
    struct protocol_request again;
    const char *code = NULL;
    json_t *id = NULL;
    char err[256];
    char *line;
    size_t len = 0;

    err[0] = '\0';
    if (protocol_decode_request((const char *)data, size, &req, &code, &id, err,
                                sizeof(err)) < 0) {
        if (code == NULL || err[0] == '\0' || req.root != &poison || req.id != &poison)
            abort();
        if (id != NULL && !json_is_integer(id) && !json_is_string(id))
            abort();
        /* What the daemon would answer. */
        line = protocol_encode_error(id, code, err, NULL, &len);
        if (line == NULL || memchr(line, '\n', len - 1) != NULL)
            abort();
        free(line);
        json_decref(id);
        return 0;
    }
    if (id != NULL || req.cmd == NULL || req.cmd[0] == '\0' || req.id == NULL)
        abort();

    line = protocol_encode_line(req.root, &len);
    if (line == NULL || len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1))
        abort();
    /* pyhotd's encoder (jansson, one pass) writes exactly what json_dumpb() writes. */
    {
        size_t n = json_dumpb(req.root, NULL, 0, JANSSON_FLAGS);
        char *ref = malloc(n + 1);

        if (ref == NULL || json_dumpb(req.root, ref, n, JANSSON_FLAGS) != n || n != len - 1 ||
            memcmp(ref, line, n) != 0)
            abort();
        free(ref);
    }
    /* Encoding is stable: the line decodes to the same request, which encodes to the
     * same line. (Lines, not json_equal: reals go out with 15 significant digits, so a
     * real of 17 digits changes once, then never again.) Escapes can make the line
     * longer than the input, past the limit only when the input was near it. */
    if (protocol_decode_request(line, len, &again, &code, &id, err, sizeof(err)) == 0) {
        size_t len2 = 0;
        char *line2 = protocol_encode_line(again.root, &len2);

        if (line2 == NULL || len2 != len || memcmp(line, line2, len) != 0 ||
            strcmp(again.cmd, req.cmd) != 0)
            abort();
        free(line2);
        protocol_request_clear(&again);
    } else if (strcmp(code, PROTOCOL_E_TOO_LARGE) != 0 && !has_huge_real(req.root)) {
        abort();
    } else {
        json_decref(id);
    }
    free(line);

    /* The arguments of subscribe and history, as commands.c reads them. */
    {
        struct events_filter filter;
        int64_t n;

        if (events_filter_parse(json_object_get(req.root, "events"),
                                json_object_get(req.root, "modules"), &filter, err,
                                sizeof(err)) == 0) {
            if (filter.n_types > EVENTS_FILTER_MAX_ITEMS ||
                filter.n_modules > EVENTS_FILTER_MAX_ITEMS)
                abort();
            /* The request itself stands in for an event. */
            events_filter_match(&filter, req.root);
            events_filter_clear(&filter);
        } else if (err[0] == '\0') {
            abort();
        }
        if (protocol_arg_int(&req, "history", 0, INT32_MAX, &n, err, sizeof(err)) == 0 &&
            (n < 0 || n > INT32_MAX))
            abort();
    }

    line = protocol_encode_ok(req.id, json_incref(req.root), &len);
    if (line == NULL || memchr(line, '\n', len - 1) != NULL)
        abort();
    {
        json_t *resp = json_pack("{s:O, s:b, s:O}", "id", req.id, "ok", 1, "result", req.root);
        size_t n = json_dumpb(resp, NULL, 0, JANSSON_FLAGS);
        char *ref = malloc(n + 1);

        if (ref == NULL || json_dumpb(resp, ref, n, JANSSON_FLAGS) != n || n != len - 1 ||
            memcmp(ref, line, n) != 0)
            abort();
        free(ref);
        json_decref(resp);
    }
    free(line);
    protocol_request_clear(&req);
    return 0;
}
