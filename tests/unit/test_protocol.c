/*
 * Unit tests of lib/protocol.c: every error path of the request decoder, the argument
 * accessors, the encoders, the time format and the default socket path.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

static json_t *parse_line(const char *line, size_t len);

/* A request filled with values no decoder would produce, to see that it stays untouched. */
static json_t sentinel_json;
static const char sentinel_cmd[] = "sentinel";

static void req_poison(struct protocol_request *req) {
    req->root = &sentinel_json;
    req->id = &sentinel_json;
    req->cmd = sentinel_cmd;
}

static void assert_req_untouched(const struct protocol_request *req) {
    assert_ptr_equal(req->root, &sentinel_json);
    assert_ptr_equal(req->id, &sentinel_json);
    assert_ptr_equal(req->cmd, sentinel_cmd);
}

/* Decodes s (strlen bytes) and expects success. */
static void decode_ok(const char *s, struct protocol_request *req) {
    const char *code = "unset";
    json_t *id = (json_t *)&sentinel_json;
    char err[256] = "";

    assert_int_equal(protocol_decode_request(s, strlen(s), req, &code, &id, err, sizeof(err)), 0);
    assert_null(code);
    assert_null(id);
    assert_non_null(req->root);
    assert_non_null(req->id);
    assert_non_null(req->cmd);
}

/* Decodes len bytes of s and expects failure with `want` as the code; returns the id
 * (a new reference or NULL) and leaves the message in err. */
static json_t *decode_fail(const char *s, size_t len, const char *want, char *err, size_t errlen) {
    struct protocol_request req;
    const char *code = NULL;
    json_t *id = (json_t *)&sentinel_json;

    req_poison(&req);
    err[0] = '\0';
    assert_int_equal(protocol_decode_request(s, len, &req, &code, &id, err, errlen), -EINVAL);
    assert_non_null(code);
    assert_string_equal(code, want);
    assert_true(err[0] != '\0');
    assert_req_untouched(&req);
    assert_ptr_not_equal(id, &sentinel_json);
    return id;
}

static void decode_fail_noid(const char *s, const char *want) {
    char err[256];

    assert_null(decode_fail(s, strlen(s), want, err, sizeof(err)));
}

/* ---- decode: success ---- */

static void test_decode_minimal(void **state) {
    struct protocol_request req;

    decode_ok("{\"id\":1,\"cmd\":\"ping\"}", &req);
    assert_string_equal(req.cmd, "ping");
    assert_true(json_is_integer(req.id));
    assert_int_equal(json_integer_value(req.id), 1);
    protocol_request_clear(&req);
    assert_null(req.root);
    assert_null(req.id);
    assert_null(req.cmd);
    protocol_request_clear(&req); /* cleared twice is fine */
    protocol_request_clear(NULL);
}

static void test_decode_ids(void **state) {
    struct protocol_request req;

    decode_ok("{\"id\":\"abc\",\"cmd\":\"status\"}", &req);
    assert_string_equal(json_string_value(req.id), "abc");
    protocol_request_clear(&req);

    decode_ok("{\"cmd\":\"status\"}", &req);
    assert_true(json_is_null(req.id));
    protocol_request_clear(&req);

    decode_ok("{\"id\":null,\"cmd\":\"status\"}", &req);
    assert_true(json_is_null(req.id));
    protocol_request_clear(&req);

    decode_ok("{\"id\":-9007199254740993,\"cmd\":\"status\"}", &req);
    assert_true(json_integer_value(req.id) == -9007199254740993LL);
    protocol_request_clear(&req);

    decode_ok("{\"id\":\"\",\"cmd\":\"x\"}", &req);
    assert_string_equal(json_string_value(req.id), "");
    protocol_request_clear(&req);
}

static void test_decode_trailing_whitespace(void **state) {
    static const char *lines[] = {
        "{\"cmd\":\"ping\"}\r",
        "{\"cmd\":\"ping\"}\r\n",
        "{\"cmd\":\"ping\"}\n",
        "  {\"cmd\":\"ping\"} \t ",
        "{ \"cmd\" : \"ping\" }",
    };
    struct protocol_request req;

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        decode_ok(lines[i], &req);
        assert_string_equal(req.cmd, "ping");
        protocol_request_clear(&req);
    }
}

static void test_decode_arguments_and_unicode(void **state) {
    struct protocol_request req;

    decode_ok("{\"id\":2,\"cmd\":\"r\xc3\xa9load\",\"targets\":[\"a\",\"b\"],\"n\":{\"x\":[]}}",
              &req);
    assert_string_equal(req.cmd, "r\xc3\xa9load");
    assert_int_equal(json_array_size(json_object_get(req.root, "targets")), 2);
    protocol_request_clear(&req);
}

static void test_decode_null_outputs(void **state) {
    struct protocol_request req;
    const char *s = "{\"cmd\":\"ping\"}";

    assert_int_equal(protocol_decode_request(s, strlen(s), &req, NULL, NULL, NULL, 0), 0);
    protocol_request_clear(&req);
    s = "{\"id\":3}";
    assert_int_equal(protocol_decode_request(s, strlen(s), &req, NULL, NULL, NULL, 0), -EINVAL);
    s = "nope";
    assert_int_equal(protocol_decode_request(s, strlen(s), &req, NULL, NULL, NULL, 0), -EINVAL);
}

static void test_decode_not_nul_terminated(void **state) {
    /* The decoder reads exactly len bytes: what follows them does not count. */
    const char buf[] = "{\"cmd\":\"ping\"}garbage";
    struct protocol_request req;
    const char *code;
    json_t *id;
    char err[128];

    assert_int_equal(protocol_decode_request(buf, 14, &req, &code, &id, err, sizeof(err)), 0);
    assert_string_equal(req.cmd, "ping");
    protocol_request_clear(&req);
}

/* ---- decode: request_too_large ---- */

/* A valid request of exactly n bytes: {"cmd":"x","p":"aaa..."}. */
static char *padded_request(size_t n) {
    static const char head[] = "{\"cmd\":\"x\",\"p\":\"";
    char *s = malloc(n + 2);

    assert_non_null(s);
    memcpy(s, head, sizeof(head) - 1);
    memset(s + sizeof(head) - 1, 'a', n - (sizeof(head) - 1) - 2);
    memcpy(s + n - 2, "\"}", 2);
    s[n] = '\0';
    return s;
}

static void test_decode_too_large(void **state) {
    struct protocol_request req;
    char err[256];
    char *s;

    /* Exactly the limit is accepted, with or without a "\r\n" after it. */
    s = padded_request(PROTOCOL_MAX_LINE);
    assert_int_equal(strlen(s), PROTOCOL_MAX_LINE);
    decode_ok(s, &req);
    protocol_request_clear(&req);
    s[PROTOCOL_MAX_LINE] = '\r';
    s[PROTOCOL_MAX_LINE + 1] = '\n';
    assert_int_equal(protocol_decode_request(s, PROTOCOL_MAX_LINE + 2, &req, NULL, NULL,
                                             NULL, 0), 0);
    protocol_request_clear(&req);
    free(s);

    /* One byte more is not, even though it is valid JSON with an id. */
    s = padded_request(PROTOCOL_MAX_LINE + 1);
    assert_null(decode_fail(s, PROTOCOL_MAX_LINE + 1, PROTOCOL_E_TOO_LARGE, err, sizeof(err)));
    assert_non_null(strstr(err, "limit"));
    free(s);

    /* The length alone decides: no need to parse garbage of that size. */
    s = malloc(PROTOCOL_MAX_LINE * 2);
    assert_non_null(s);
    memset(s, '{', PROTOCOL_MAX_LINE * 2);
    assert_null(decode_fail(s, PROTOCOL_MAX_LINE * 2, PROTOCOL_E_TOO_LARGE, err, sizeof(err)));
    free(s);
}

/* ---- decode: parse_error ---- */

static void test_decode_embedded_nul(void **state) {
    static const char s[] = "{\"id\":1,\"cmd\":\"pi\0ng\"}";
    char err[256];

    assert_null(decode_fail(s, sizeof(s) - 1, PROTOCOL_E_PARSE, err, sizeof(err)));
    assert_non_null(strstr(err, "NUL"));
    assert_non_null(strstr(err, "column 18")); /* 1-based, like jansson's */

    /* A NUL after the value, in what would otherwise be trailing whitespace. */
    assert_null(decode_fail("{\"cmd\":\"a\"}\0", 12, PROTOCOL_E_PARSE, err, sizeof(err)));
    /* A NUL alone. */
    assert_null(decode_fail("\0", 1, PROTOCOL_E_PARSE, err, sizeof(err)));
}

static void test_decode_escaped_nul(void **state) {
    /* "\u0000" is valid JSON, but strings must stay C strings. */
    decode_fail_noid("{\"id\":1,\"cmd\":\"a\\u0000b\"}", PROTOCOL_E_PARSE);
}

static void test_decode_invalid_json(void **state) {
    static const char *lines[] = {
        "{\"cmd\":",
        "{\"cmd\":\"ping\"",
        "{cmd:\"ping\"}",
        "{'cmd':'ping'}",
        "{\"cmd\":\"ping\",}",
        "{\"cmd\":\"ping\"} x",
        "{\"cmd\":\"ping\"}{\"cmd\":\"ping\"}",
        "{\"cmd\":\"ping\"}\n{\"cmd\":\"ping\"}",
        "{\"cmd\":\"a\nb\"}",          /* a raw newline inside a string */
        "{\"cmd\":\"ping\",\"n\":NaN}",
        "{\"cmd\":\"ping\",\"n\":01}",
        "",
        "   ",
        "\r\n",
        "nul",
    };
    char err[256];

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        assert_null(decode_fail(lines[i], strlen(lines[i]), PROTOCOL_E_PARSE, err, sizeof(err)));
        assert_non_null(strstr(err, "column"));
    }
}

static void test_decode_parse_error_message(void **state) {
    char err[256];

    assert_null(decode_fail("{\"cmd\":\"ping\" x}", 16, PROTOCOL_E_PARSE, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid JSON at column 15"));

    /* A short err buffer is truncated, never overrun. */
    {
        char small[8];

        memset(small, 'z', sizeof(small));
        assert_null(decode_fail("{", 1, PROTOCOL_E_PARSE, small, 5));
        assert_int_equal(strlen(small), 4);
        assert_int_equal(small[5], 'z');
    }
}

static void test_decode_invalid_utf8(void **state) {
    decode_fail_noid("{\"id\":1,\"cmd\":\"\xff\"}", PROTOCOL_E_PARSE);
    decode_fail_noid("{\"id\":1,\"cmd\":\"\xc3\"}", PROTOCOL_E_PARSE);      /* truncated */
    decode_fail_noid("{\"id\":1,\"cmd\":\"\xc0\xaf\"}", PROTOCOL_E_PARSE);  /* overlong */
    decode_fail_noid("{\"id\":1,\"cmd\":\"\xed\xa0\x80\"}", PROTOCOL_E_PARSE); /* surrogate */
    decode_fail_noid("{\"id\":1,\"\xfe\":1,\"cmd\":\"a\"}", PROTOCOL_E_PARSE); /* in a key */
}

/* Is s valid UTF-8? jansson decides, as the daemon's encoder would. */
static int is_utf8(const char *s) {
    json_t *v = json_string(s);

    json_decref(v);
    return v != NULL;
}

static void test_decode_message_is_utf8(void **state) {
    /* jansson quotes the bytes near the error; an invalid escape followed by a cut
     * multibyte sequence would put invalid UTF-8 into the message. */
    static const char s[] = "{\"id\\\xc5\x8b\x92uitruid\":trueit";
    static const char t[] = "{\"cmd\":\"\xc3\xa9\xc3\xa9\\q\"}";
    char err[256], small[64];
    char *line;
    size_t len;
    json_t *v;

    assert_null(decode_fail(s, sizeof(s) - 1, PROTOCOL_E_PARSE, err, sizeof(err)));
    assert_true(is_utf8(err));
    line = protocol_encode_error(NULL, PROTOCOL_E_PARSE, err, NULL, &len);
    v = parse_line(line, len);
    json_decref(v);
    free(line);

    /* "invalid JSON at column 12: invalid escape near '"\xc3\xa9\xc3\xa9\\q'": buffers that
     * cut one of the two-byte characters in half. */
    assert_null(decode_fail(t, sizeof(t) - 1, PROTOCOL_E_PARSE, err, sizeof(err)));
    assert_non_null(strstr(err, "\xc3\xa9\xc3\xa9"));
    for (size_t n = 45; n < sizeof(small); n++) {
        assert_null(decode_fail(t, sizeof(t) - 1, PROTOCOL_E_PARSE, small, n));
        assert_true(is_utf8(small));
    }
}

static void test_decode_duplicate_keys(void **state) {
    decode_fail_noid("{\"id\":1,\"cmd\":\"ping\",\"cmd\":\"stop\"}", PROTOCOL_E_PARSE);
    decode_fail_noid("{\"id\":1,\"id\":2,\"cmd\":\"ping\"}", PROTOCOL_E_PARSE);
}

static void test_decode_too_deep(void **state) {
    size_t depth = 5000, n = 0;
    char *s = malloc(2 * depth + 32);
    char err[256];

    assert_non_null(s);
    n += (size_t)sprintf(s, "{\"cmd\":\"x\",\"a\":");
    for (size_t i = 0; i < depth; i++)
        s[n++] = '[';
    for (size_t i = 0; i < depth; i++)
        s[n++] = ']';
    s[n++] = '}';
    assert_null(decode_fail(s, n, PROTOCOL_E_PARSE, err, sizeof(err)));
    free(s);
}

/* ---- decode: invalid_request ---- */

static void test_decode_not_an_object(void **state) {
    static const char *lines[] = {
        "[]", "[{\"id\":1,\"cmd\":\"ping\"}]", "1", "-2.5", "\"ping\"", "true", "false", "null",
    };
    char err[256];

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        assert_null(decode_fail(lines[i], strlen(lines[i]), PROTOCOL_E_INVALID, err,
                                sizeof(err)));
        assert_non_null(strstr(err, "object"));
    }
}

static void test_decode_bad_id(void **state) {
    static const char *lines[] = {
        "{\"id\":1.5,\"cmd\":\"ping\"}",
        "{\"id\":1e3,\"cmd\":\"ping\"}",
        "{\"id\":true,\"cmd\":\"ping\"}",
        "{\"id\":false,\"cmd\":\"ping\"}",
        "{\"id\":[1],\"cmd\":\"ping\"}",
        "{\"id\":{},\"cmd\":\"ping\"}",
        "{\"id\":1.5}",  /* a bad id is reported before a missing cmd */
    };
    char err[256];

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        assert_null(decode_fail(lines[i], strlen(lines[i]), PROTOCOL_E_INVALID, err,
                                sizeof(err)));
        assert_non_null(strstr(err, "\"id\""));
    }
}

static void test_decode_bad_cmd_returns_id(void **state) {
    static const char *cmds[] = {
        "",                 /* missing */
        ",\"cmd\":null",
        ",\"cmd\":\"\"",
        ",\"cmd\":1",
        ",\"cmd\":[\"ping\"]",
        ",\"cmd\":{}",
        ",\"cmd\":true",
    };
    char line[128], err[256];
    json_t *id;

    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        /* integer id: handed back */
        snprintf(line, sizeof(line), "{\"id\":42%s}", cmds[i]);
        id = decode_fail(line, strlen(line), PROTOCOL_E_INVALID, err, sizeof(err));
        assert_non_null(id);
        assert_true(json_is_integer(id));
        assert_int_equal(json_integer_value(id), 42);
        assert_non_null(strstr(err, "\"cmd\""));
        /* It is our reference: it outlives the decoded object. */
        assert_int_equal(id->refcount, 1);
        json_decref(id);

        /* string id */
        snprintf(line, sizeof(line), "{\"id\":\"req-7\"%s}", cmds[i]);
        id = decode_fail(line, strlen(line), PROTOCOL_E_INVALID, err, sizeof(err));
        assert_non_null(id);
        assert_string_equal(json_string_value(id), "req-7");
        json_decref(id);

        /* null id and absent id: nothing to hand back */
        snprintf(line, sizeof(line), "{\"id\":null%s}", cmds[i]);
        assert_null(decode_fail(line, strlen(line), PROTOCOL_E_INVALID, err, sizeof(err)));
        snprintf(line, sizeof(line), "{\"x\":1%s}", cmds[i]);
        assert_null(decode_fail(line, strlen(line), PROTOCOL_E_INVALID, err, sizeof(err)));
    }
}

/* ---- argument accessors ---- */

static struct protocol_request args_req;

static int args_setup(void **state) {
    static const char s[] =
        "{\"id\":1,\"cmd\":\"t\",\"s\":\"text\",\"empty\":\"\",\"nul\":null,\"i\":5,"
        "\"neg\":-3,\"big\":9223372036854775807,\"r\":5.0,\"b\":true,\"o\":{},"
        "\"a\":[\"x\",\"y\"],\"a0\":[],\"amixed\":[\"x\",2],\"anull\":[null],"
        "\"anested\":[[\"x\"]]}";

    return protocol_decode_request(s, sizeof(s) - 1, &args_req, NULL, NULL, NULL, 0);
}

static int args_teardown(void **state) {
    protocol_request_clear(&args_req);
    return 0;
}

static void test_arg_string(void **state) {
    const char *out = "untouched";
    char err[128];

    assert_int_equal(protocol_arg_string(&args_req, "s", &out, err, sizeof(err)), 0);
    assert_string_equal(out, "text");
    assert_int_equal(protocol_arg_string(&args_req, "empty", &out, err, sizeof(err)), 0);
    assert_string_equal(out, "");

    out = "untouched";
    assert_int_equal(protocol_arg_string(&args_req, "absent", &out, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "\"absent\""));
    assert_int_equal(protocol_arg_string(&args_req, "nul", &out, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "\"nul\""));

    static const char *wrong[] = { "i", "r", "b", "o", "a" };
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        err[0] = '\0';
        assert_int_equal(protocol_arg_string(&args_req, wrong[i], &out, err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, wrong[i]));
        assert_non_null(strstr(err, "string"));
    }
    assert_string_equal(out, "untouched");

    /* NULL err is allowed. */
    assert_int_equal(protocol_arg_string(&args_req, "i", &out, NULL, 0), -EINVAL);
}

static void test_arg_int(void **state) {
    int64_t out = 99;
    char err[128];

    assert_int_equal(protocol_arg_int(&args_req, "i", 0, 10, &out, err, sizeof(err)), 0);
    assert_int_equal(out, 5);
    assert_int_equal(protocol_arg_int(&args_req, "i", 5, 5, &out, err, sizeof(err)), 0);
    assert_int_equal(protocol_arg_int(&args_req, "neg", -3, 0, &out, err, sizeof(err)), 0);
    assert_int_equal(out, -3);
    assert_int_equal(protocol_arg_int(&args_req, "big", 0, INT64_MAX, &out, err, sizeof(err)), 0);
    assert_true(out == INT64_MAX);

    out = 99;
    assert_int_equal(protocol_arg_int(&args_req, "absent", 0, 10, &out, err, sizeof(err)),
                     -ENOENT);
    assert_non_null(strstr(err, "\"absent\""));
    assert_int_equal(protocol_arg_int(&args_req, "nul", 0, 10, &out, err, sizeof(err)), -ENOENT);

    /* 5.0 is a real, not an integer. */
    static const char *wrong[] = { "s", "r", "b", "o", "a" };
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        assert_int_equal(protocol_arg_int(&args_req, wrong[i], 0, 10, &out, err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "integer"));
    }

    /* Out of range on either side. */
    assert_int_equal(protocol_arg_int(&args_req, "i", 6, 10, &out, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "between 6 and 10"));
    assert_int_equal(protocol_arg_int(&args_req, "i", 0, 4, &out, err, sizeof(err)), -EINVAL);
    assert_int_equal(protocol_arg_int(&args_req, "neg", 0, 10, &out, err, sizeof(err)), -EINVAL);
    assert_int_equal(protocol_arg_int(&args_req, "big", 0, INT64_MAX - 1, &out, err,
                                      sizeof(err)), -EINVAL);
    assert_int_equal(out, 99);
}

static void test_arg_string_list(void **state) {
    json_t *out = NULL;
    char err[128];

    /* A single string becomes a list of one. */
    assert_int_equal(protocol_arg_string_list(&args_req, "s", &out, err, sizeof(err)), 0);
    assert_true(json_is_array(out));
    assert_int_equal(json_array_size(out), 1);
    assert_string_equal(json_string_value(json_array_get(out, 0)), "text");
    json_decref(out);

    /* An array is handed back as a copy of its own. */
    assert_int_equal(protocol_arg_string_list(&args_req, "a", &out, err, sizeof(err)), 0);
    assert_int_equal(json_array_size(out), 2);
    assert_string_equal(json_string_value(json_array_get(out, 1)), "y");
    assert_ptr_not_equal(out, json_object_get(args_req.root, "a"));
    json_array_append_new(out, json_string("z"));
    assert_int_equal(json_array_size(json_object_get(args_req.root, "a")), 2);
    json_decref(out);

    assert_int_equal(protocol_arg_string_list(&args_req, "a0", &out, err, sizeof(err)), 0);
    assert_int_equal(json_array_size(out), 0);
    json_decref(out);

    out = NULL;
    assert_int_equal(protocol_arg_string_list(&args_req, "absent", &out, err, sizeof(err)),
                     -ENOENT);
    assert_int_equal(protocol_arg_string_list(&args_req, "nul", &out, err, sizeof(err)),
                     -ENOENT);
    assert_null(out);

    static const char *wrong[] = { "i", "r", "b", "o" };
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        assert_int_equal(protocol_arg_string_list(&args_req, wrong[i], &out, err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "array of strings"));
    }
    assert_int_equal(protocol_arg_string_list(&args_req, "amixed", &out, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "item 1"));
    assert_int_equal(protocol_arg_string_list(&args_req, "anull", &out, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "item 0"));
    assert_int_equal(protocol_arg_string_list(&args_req, "anested", &out, err, sizeof(err)),
                     -EINVAL);
    assert_null(out);
}

/* ---- encoders ---- */

/* Checks that line is one "\n"-terminated line of len bytes and parses it. */
static json_t *parse_line(const char *line, size_t len) {
    json_error_t jerr;
    json_t *v;

    assert_non_null(line);
    assert_int_equal(strlen(line), len);
    assert_true(len >= 2);
    assert_int_equal(line[len - 1], '\n');
    assert_null(memchr(line, '\n', len - 1));
    assert_null(memchr(line, '\r', len));
    v = json_loadb(line, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    assert_non_null(v);
    return v;
}

static void test_encode_ok_ids(void **state) {
    size_t len = 0;
    char *line;
    json_t *id, *v;

    line = protocol_encode_ok(NULL, NULL, &len);
    assert_string_equal(line, "{\"id\":null,\"ok\":true,\"result\":null}\n");
    assert_int_equal(len, strlen(line));
    free(line);

    id = json_integer(17);
    line = protocol_encode_ok(id, json_pack("{s:b}", "pong", 1), &len);
    assert_string_equal(line, "{\"id\":17,\"ok\":true,\"result\":{\"pong\":true}}\n");
    assert_int_equal(id->refcount, 1); /* not stolen */
    json_decref(id);
    free(line);

    id = json_string("a\"b\n");
    line = protocol_encode_ok(id, json_integer(3), &len);
    v = parse_line(line, len);
    assert_string_equal(json_string_value(json_object_get(v, "id")), "a\"b\n");
    assert_true(json_is_true(json_object_get(v, "ok")));
    assert_int_equal(json_integer_value(json_object_get(v, "result")), 3);
    json_decref(v);
    json_decref(id);
    free(line);

    /* len may be NULL. */
    line = protocol_encode_ok(NULL, NULL, NULL);
    assert_non_null(line);
    free(line);
}

static void test_encode_ok_steals_result(void **state) {
    json_t *result = json_pack("{s:s}", "k", "v");
    char *line;

    json_incref(result); /* keep one reference of our own to watch the count */
    line = protocol_encode_ok(NULL, result, NULL);
    assert_non_null(line);
    assert_int_equal(result->refcount, 1);
    json_decref(result);
    free(line);
}

static void test_encode_round_trip(void **state) {
    static const char in[] =
        "{\"id\":\"x-1\",\"cmd\":\"exec\",\"code\":\"print('a\\nb')\\n\",\"u\":\"\xc3\xa9\xe2\x82\xac\"}";
    struct protocol_request req;
    json_t *copy, *back;
    char *line;
    size_t len;

    decode_ok(in, &req);
    /* Re-encoding the request gives an equal object on one line. */
    line = protocol_encode_line(req.root, &len);
    back = parse_line(line, len);
    assert_true(json_equal(back, req.root));
    json_decref(back);
    free(line);

    /* A response carrying the request as its result decodes back to it. */
    copy = json_deep_copy(req.root);
    line = protocol_encode_ok(req.id, copy, &len);
    back = parse_line(line, len);
    assert_true(json_equal(json_object_get(back, "result"), req.root));
    assert_true(json_equal(json_object_get(back, "id"), req.id));
    json_decref(back);
    free(line);
    protocol_request_clear(&req);
}

static void test_encode_error(void **state) {
    json_t *id = json_integer(4), *details, *v, *err;
    char *line;
    size_t len;

    line = protocol_encode_error(id, PROTOCOL_E_UNKNOWN_COMMAND, "unknown command \"x\"", NULL,
                                 &len);
    assert_string_equal(line, "{\"id\":4,\"ok\":false,\"error\":{\"code\":\"unknown_command\","
                              "\"message\":\"unknown command \\\"x\\\"\"}}\n");
    free(line);

    /* Details are merged; code and message win over members of the same name. */
    details = json_pack("{s:s,s:s,s:i,s:s,s:s}", "type", "ValueError", "traceback",
                        "Traceback (most recent call last):\n  File \"<exec>\", line 1\n",
                        "line", 1, "code", "other", "message", "other");
    json_incref(details);
    line = protocol_encode_error(id, PROTOCOL_E_PYTHON, "bad value", details, &len);
    assert_int_equal(details->refcount, 1); /* stolen */
    json_decref(details);
    v = parse_line(line, len);
    assert_false(json_is_true(json_object_get(v, "ok")));
    assert_int_equal(json_integer_value(json_object_get(v, "id")), 4);
    assert_null(json_object_get(v, "result"));
    err = json_object_get(v, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "python_error");
    assert_string_equal(json_string_value(json_object_get(err, "message")), "bad value");
    assert_string_equal(json_string_value(json_object_get(err, "type")), "ValueError");
    assert_int_equal(json_integer_value(json_object_get(err, "line")), 1);
    assert_non_null(strstr(json_string_value(json_object_get(err, "traceback")), "\n  File"));
    assert_int_equal(json_object_size(err), 5);
    json_decref(v);
    free(line);

    /* A null id, and details that are not an object (ignored, still released). */
    line = protocol_encode_error(NULL, PROTOCOL_E_PARSE, "x", json_integer(1), &len);
    assert_string_equal(line, "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"parse_error\","
                              "\"message\":\"x\"}}\n");
    free(line);

    /* String id; NULL code and message still give a well-formed error. */
    json_decref(id);
    id = json_string("abc");
    line = protocol_encode_error(id, NULL, NULL, NULL, &len);
    v = parse_line(line, len);
    assert_string_equal(json_string_value(json_object_get(v, "id")), "abc");
    err = json_object_get(v, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "internal_error");
    assert_string_equal(json_string_value(json_object_get(err, "message")), "");
    json_decref(v);
    free(line);
    json_decref(id);
}

static void test_encode_error_invalid_utf8(void **state) {
    char *line;
    size_t len;
    json_t *v;

    /* Invalid bytes of a message become '?'; the rest is kept. */
    line = protocol_encode_error(NULL, PROTOCOL_E_INTERNAL, "a\xff\xc3\xa9\xc3", NULL, &len);
    v = parse_line(line, len);
    assert_string_equal(json_string_value(json_object_get(json_object_get(v, "error"),
                                                          "message")), "a?\xc3\xa9?");
    json_decref(v);
    free(line);

    /* Overlong forms, surrogates and code points past U+10FFFF are invalid too. */
    line = protocol_encode_error(NULL, PROTOCOL_E_INTERNAL,
                                 "\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80|\xf0\x9f\x98\x80", NULL,
                                 &len);
    v = parse_line(line, len);
    assert_string_equal(json_string_value(json_object_get(json_object_get(v, "error"),
                                                          "message")),
                        "??|???|????|\xf0\x9f\x98\x80");
    json_decref(v);
    free(line);
}

static void test_encode_line(void **state) {
    json_t *ev = json_pack("{s:s,s:i,s:s,s:s,s:f}", "event", "reload", "seq", 3, "time",
                           "2026-11-27T04:19:43.123Z", "message", "line1\nline2\r\n\ttab\x01",
                           "duration_ms", 1.24);
    json_t *s, *back;
    char *line;
    size_t len;

    line = protocol_encode_line(ev, &len);
    back = parse_line(line, len);
    assert_true(json_equal(back, ev));
    /* Compact, in insertion order, and reals without binary noise. */
    assert_string_equal(line, "{\"event\":\"reload\",\"seq\":3,\"time\":\"2026-11-27T04:19:43.123Z\","
                              "\"message\":\"line1\\nline2\\r\\n\\ttab\\u0001\","
                              "\"duration_ms\":1.24}\n");
    assert_int_equal(ev->refcount, 1); /* not stolen */
    json_decref(back);
    free(line);
    json_decref(ev);

    /* Any value, not only objects. */
    s = json_string("a\nb");
    line = protocol_encode_line(s, &len);
    assert_string_equal(line, "\"a\\nb\"\n");
    assert_int_equal(len, 7);
    free(line);
    json_decref(s);

    assert_null(protocol_encode_line(NULL, &len));
}

/* The encoder (jansson's json_dump_callback, one pass) writes what json_dumpb() writes,
 * for the values pyhotd sends: escapes, UTF-8, integers at both ends, reals, nesting. */
static void test_encode_matches_jansson(void **state) {
    static const char *const values[] = {
        "\"plain\"", "\"q\\\"b\\\\s\\/ \\b\\f\\n\\r\\t \\u0001\\u001f\\u007f\"",
        "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \\u2028\"", "0", "-1",
        "9223372036854775807", "-9223372036854775808", "1.24", "0.1", "1e-7", "-2.5e+300",
        "1e15", "123456789012345678.0", "5e-324", "1.7976931348623157e308", "[]", "{}",
        "[1,[2,[3,{\"a\":[true,false,null]}]]]", "{\"z\":1,\"a\":2,\"\":{\"k\\n\":\"v\"}}",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        json_error_t jerr;
        json_t *v = json_loads(values[i], JSON_DECODE_ANY, &jerr);
        size_t len, n;
        char *line, *ref;

        assert_non_null(v);
        line = protocol_encode_line(v, &len);
        assert_non_null(line);
        n = json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
        ref = malloc(n + 1);
        assert_non_null(ref);
        json_dumpb(v, ref, n, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
        ref[n] = '\0';
        assert_int_equal(len, n + 1);
        line[len - 1] = '\0';
        assert_string_equal(line, ref);
        free(ref);
        free(line);
        json_decref(v);
    }
}

static void test_encode_request(void **state) {
    json_t *args = json_pack("{s:[s,s],s:s,s:i}", "targets", "app.handlers", "/a/b.py",
                             "cmd", "evil", "id", 99);
    struct protocol_request req;
    char *line;
    size_t len;

    line = protocol_encode_request(1, "ping", NULL, &len);
    assert_string_equal(line, "{\"id\":1,\"cmd\":\"ping\"}\n");
    assert_int_equal(len, strlen(line));
    free(line);

    /* The request's own id and cmd win over members of args, which is not stolen. */
    line = protocol_encode_request(INT64_MAX, "reload", args, &len);
    assert_string_equal(line, "{\"id\":9223372036854775807,\"cmd\":\"reload\","
                              "\"targets\":[\"app.handlers\",\"/a/b.py\"]}\n");
    assert_int_equal(args->refcount, 1);

    /* What we encode, we decode. */
    assert_int_equal(protocol_decode_request(line, len, &req, NULL, NULL, NULL, 0), 0);
    assert_string_equal(req.cmd, "reload");
    assert_true(json_integer_value(req.id) == INT64_MAX);
    protocol_request_clear(&req);
    free(line);
    json_decref(args);

    /* args that are not an object are ignored. */
    args = json_integer(1);
    line = protocol_encode_request(-5, "status", args, NULL);
    assert_string_equal(line, "{\"id\":-5,\"cmd\":\"status\"}\n");
    free(line);
    json_decref(args);
}

/* ---- format_time ---- */

static void test_format_time(void **state) {
    char buf[64], small[10];
    struct tm tm = { 0 };
    time_t before, after, t;
    int ms = -1;

    before = time(NULL);
    assert_ptr_equal(protocol_format_time(buf, sizeof(buf)), buf);
    after = time(NULL);

    /* YYYY-MM-DDTHH:MM:SS.mmmZ */
    assert_int_equal(strlen(buf), 24);
    for (int i = 0; i < 24; i++) {
        switch (i) {
        case 4: case 7:   assert_int_equal(buf[i], '-'); break;
        case 10:          assert_int_equal(buf[i], 'T'); break;
        case 13: case 16: assert_int_equal(buf[i], ':'); break;
        case 19:          assert_int_equal(buf[i], '.'); break;
        case 23:          assert_int_equal(buf[i], 'Z'); break;
        default:          assert_true(buf[i] >= '0' && buf[i] <= '9');
        }
    }
    assert_int_equal(sscanf(buf, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                            &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms), 7);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    t = timegm(&tm);
    assert_true(t >= before && t <= after); /* UTC, not local time */
    assert_true(ms >= 0 && ms <= 999);

    /* Exactly 25 bytes are enough; fewer truncate but stay terminated. */
    assert_int_equal(strlen(protocol_format_time(buf, 25)), 24);
    memset(small, 'x', sizeof(small));
    protocol_format_time(small, 5);
    assert_int_equal(strlen(small), 4);
    assert_int_equal(small[5], 'x');
}

/* ---- default socket path ---- */

static char *saved_env[2];
static const char *env_names[2] = { "PYHOT_SOCKET", "XDG_RUNTIME_DIR" };

static int env_setup(void **state) {
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(env_names[i]);

        saved_env[i] = v != NULL ? strdup(v) : NULL;
    }
    unsetenv("PYHOT_SOCKET");
    unsetenv("XDG_RUNTIME_DIR");
    return 0;
}

static int env_teardown(void **state) {
    for (int i = 0; i < 2; i++) {
        if (saved_env[i] != NULL)
            setenv(env_names[i], saved_env[i], 1);
        else
            unsetenv(env_names[i]);
        free(saved_env[i]);
        saved_env[i] = NULL;
    }
    return 0;
}

/* The path when neither variable applies. */
static void expected_fallback(char *buf, size_t len) {
    if (geteuid() == 0)
        snprintf(buf, len, "/run/pyhotd/pyhotd.sock");
    else
        snprintf(buf, len, "/tmp/pyhot-%lu/pyhotd.sock", (unsigned long)geteuid());
}

static void test_socket_pyhot_socket(void **state) {
    char buf[256];

    setenv("PYHOT_SOCKET", "/srv/app/ctl.sock", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/srv/app/ctl.sock");

    /* It wins over XDG_RUNTIME_DIR; a relative value is the user's choice and kept. */
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    setenv("PYHOT_SOCKET", "rel/ctl.sock", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "rel/ctl.sock");
}

static void test_socket_xdg(void **state) {
    char buf[256];

    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/run/user/1000/pyhot/pyhotd.sock");

    setenv("XDG_RUNTIME_DIR", "/run/user/1000//", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/run/user/1000/pyhot/pyhotd.sock");

    setenv("XDG_RUNTIME_DIR", "/", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/pyhot/pyhotd.sock");

    /* An empty PYHOT_SOCKET counts as unset. */
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    setenv("PYHOT_SOCKET", "", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/run/user/1000/pyhot/pyhotd.sock");
}

static void test_socket_fallback(void **state) {
    char buf[256], want[256];

    expected_fallback(want, sizeof(want));
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, want);

    /* Empty and relative XDG_RUNTIME_DIR are ignored (XDG Base Directory spec). */
    setenv("XDG_RUNTIME_DIR", "", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, want);
    setenv("XDG_RUNTIME_DIR", "run/user/1000", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, want);
    setenv("PYHOT_SOCKET", "", 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_string_equal(buf, want);
}

static void test_socket_too_long(void **state) {
    char buf[512], path[300];

    /* sun_path holds 108 bytes with the NUL: 107 characters fit, 108 do not. */
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    path[107] = '\0';
    setenv("PYHOT_SOCKET", path, 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_int_equal(strlen(buf), 107);
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    path[108] = '\0';
    setenv("PYHOT_SOCKET", path, 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);
    assert_string_equal(buf, "");

    /* Through XDG_RUNTIME_DIR: "/pyhot/pyhotd.sock" adds 18 characters. */
    unsetenv("PYHOT_SOCKET");
    path[107 - 18] = '\0';
    setenv("XDG_RUNTIME_DIR", path, 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), 0);
    assert_int_equal(strlen(buf), 107);
    path[107 - 18] = 'a';
    path[108 - 18] = '\0';
    setenv("XDG_RUNTIME_DIR", path, 1);
    assert_int_equal(protocol_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);

    /* The caller's buffer is a limit too. */
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    assert_int_equal(protocol_default_socket_path(buf, 33), 0); /* 32 characters + NUL */
    assert_string_equal(buf, "/run/user/1000/pyhot/pyhotd.sock");
    assert_int_equal(protocol_default_socket_path(buf, 32), -ENAMETOOLONG);
    assert_string_equal(buf, "");
    unsetenv("XDG_RUNTIME_DIR");
    assert_int_equal(protocol_default_socket_path(buf, 8), -ENAMETOOLONG);
}

int main(void) {
    const struct CMUnitTest decode_tests[] = {
        cmocka_unit_test(test_decode_minimal),
        cmocka_unit_test(test_decode_ids),
        cmocka_unit_test(test_decode_trailing_whitespace),
        cmocka_unit_test(test_decode_arguments_and_unicode),
        cmocka_unit_test(test_decode_null_outputs),
        cmocka_unit_test(test_decode_not_nul_terminated),
        cmocka_unit_test(test_decode_too_large),
        cmocka_unit_test(test_decode_embedded_nul),
        cmocka_unit_test(test_decode_escaped_nul),
        cmocka_unit_test(test_decode_invalid_json),
        cmocka_unit_test(test_decode_parse_error_message),
        cmocka_unit_test(test_decode_invalid_utf8),
        cmocka_unit_test(test_decode_message_is_utf8),
        cmocka_unit_test(test_decode_duplicate_keys),
        cmocka_unit_test(test_decode_too_deep),
        cmocka_unit_test(test_decode_not_an_object),
        cmocka_unit_test(test_decode_bad_id),
        cmocka_unit_test(test_decode_bad_cmd_returns_id),
    };
    const struct CMUnitTest arg_tests[] = {
        cmocka_unit_test(test_arg_string),
        cmocka_unit_test(test_arg_int),
        cmocka_unit_test(test_arg_string_list),
    };
    const struct CMUnitTest encode_tests[] = {
        cmocka_unit_test(test_encode_ok_ids),
        cmocka_unit_test(test_encode_ok_steals_result),
        cmocka_unit_test(test_encode_round_trip),
        cmocka_unit_test(test_encode_error),
        cmocka_unit_test(test_encode_error_invalid_utf8),
        cmocka_unit_test(test_encode_line),
        cmocka_unit_test(test_encode_matches_jansson),
        cmocka_unit_test(test_encode_request),
        cmocka_unit_test(test_format_time),
    };
    const struct CMUnitTest socket_tests[] = {
        cmocka_unit_test_setup_teardown(test_socket_pyhot_socket, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_socket_xdg, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_socket_fallback, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_socket_too_long, env_setup, env_teardown),
    };
    int failed = 0;

    failed += cmocka_run_group_tests_name("protocol_decode", decode_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("protocol_args", arg_tests, args_setup, args_teardown);
    failed += cmocka_run_group_tests_name("protocol_encode", encode_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("protocol_socket_path", socket_tests, NULL, NULL);
    return failed == 0 ? 0 : 1;
}
