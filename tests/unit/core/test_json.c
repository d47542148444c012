/* Unit tests of the JSON reader and writer: round trips, escapes, and the malformed input the
 * reader must refuse without crashing. */
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "aioscope/json.h"
#include "test.h"

static aioscope_json *parse_ok(const char *text) {
    aioscope_json *v = NULL;
    int rc = aioscope_json_parse(text, strlen(text), &v);
    if (rc != 0) fprintf(stderr, "parse failed (%s) for: %s\n", aioscope_strerror(rc), text);
    CHECK_EQ_INT(rc, 0);
    return v;
}

TEST(json_parses_nested_object) {
    aioscope_json *v = parse_ok(" {\"a\": [1, 2.5, -3e2, true, false, null], \"b\": {\"c\": \"d\"}} ");
    const aioscope_json *a = aioscope_json_get(v, "a");
    CHECK(a && a->type == AIOSCOPE_JSON_ARRAY);
    CHECK_EQ_INT(a->len, 6);
    CHECK(a->items[1].number == 2.5);
    CHECK(a->items[2].number == -300);
    CHECK(a->items[3].type == AIOSCOPE_JSON_BOOL && a->items[3].boolean);
    CHECK(a->items[5].type == AIOSCOPE_JSON_NULL);
    CHECK_EQ_STR(aioscope_json_get_string(aioscope_json_get(v, "b"), "c"), "d");
    CHECK(aioscope_json_get(v, "missing") == NULL);
    aioscope_json_free(v);
}

TEST(json_decodes_escapes_and_surrogates) {
    aioscope_json *v = parse_ok("\"tab\\t q\\\" \\u00e9 \\ud83d\\ude00\"");
    CHECK_EQ_STR(v->string, "tab\t q\" \xc3\xa9 \xf0\x9f\x98\x80");
    aioscope_json_free(v);
}

TEST(json_rejects_malformed_input) {
    const char *bad[] = {"", "{", "[1,]", "{\"a\" 1}", "\"unterminated", "01", "1.", "-", "tru",
                         "{\"a\":1} x", "\"\\u0000\"", "\"\\x\"", "[\"raw\ncontrol\"]", "{1:2}", "nul"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        aioscope_json *v = (aioscope_json *)1;
        int rc = aioscope_json_parse(bad[i], strlen(bad[i]), &v);
        if (rc != AIOSCOPE_EPARSE) fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK_EQ_INT(rc, AIOSCOPE_EPARSE);
        CHECK(v == NULL);
    }
}

TEST(json_bounds_nesting_depth) {
    char deep[2 * (AIOSCOPE_JSON_MAX_DEPTH + 10) + 1];
    size_t n = AIOSCOPE_JSON_MAX_DEPTH + 10;
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    deep[2 * n] = '\0';
    aioscope_json *v = NULL;
    CHECK_EQ_INT(aioscope_json_parse(deep, 2 * n, &v), AIOSCOPE_EPARSE);
}

TEST(json_never_reads_past_length) {
    /* The text continues past len: the parser must stop at len and see a truncated value. */
    const char text[] = "{\"a\": 12345}";
    aioscope_json *v = NULL;
    CHECK_EQ_INT(aioscope_json_parse(text, 8, &v), AIOSCOPE_EPARSE);
    CHECK(aioscope_json_parse("123", 2, &v) == 0 && v->number == 12);
    aioscope_json_free(v);
}

TEST(json_writer_escapes_and_repairs_utf8) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_buf_json_string(&b, "a\"b\\c\n\x01 \xc3\xa9 \xff end");
    CHECK_EQ_STR(b.data, "\"a\\\"b\\\\c\\n\\u0001 \xc3\xa9 \xef\xbf\xbd end\"");
    /* And the reader takes back what the writer wrote. */
    aioscope_json *v = parse_ok(b.data);
    CHECK_EQ_STR(v->string, "a\"b\\c\n\x01 \xc3\xa9 \xef\xbf\xbd end");
    aioscope_json_free(v);
    aioscope_buf_free(&b);
}

TEST(json_writer_numbers) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_buf_json_number(&b, 42);
    aioscope_buf_puts(&b, " ");
    aioscope_buf_json_number(&b, 0.352);
    aioscope_buf_puts(&b, " ");
    aioscope_buf_json_number(&b, 1.0 / 0.0);
    CHECK_EQ_STR(b.data, "42 0.352 null");
    aioscope_buf_free(&b);
}
