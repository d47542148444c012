/* fuzz_json: the core's strict JSON reader (aioscope_json_parse) on arbitrary bytes.
 *
 * The reader parses untrusted text: saved reports, the agent's event stream, answers on the
 * control socket. Besides "no crash, no leak, no read past the end" (the sanitizers check those),
 * this target checks what the reader promises:
 *   - a failed parse leaves *out NULL;
 *   - a string holds no NUL and its len is its strlen; containers have their item counts, objects
 *     a key per item, and nesting never exceeds AIOSCOPE_JSON_MAX_DEPTH;
 *   - the tree written back with the writer (aioscope_buf_json_string/number) parses again, with
 *     the same shape: the writer's output is always valid JSON; after the writer's one-time
 *     normalization (see below) reading and writing are exact inverses;
 *   - aioscope_json_get finds the first item of every key.
 * A broken promise aborts, which libFuzzer reports as a crash with the input that caused it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/json.h"

#define FUZZ_CHECK(cond)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_json: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* Checks the shape of v (see above); depth is v's own nesting level, 0 for a scalar root. */
static void check_tree(const aioscope_json *v, int depth) {
    FUZZ_CHECK(depth <= AIOSCOPE_JSON_MAX_DEPTH);
    switch (v->type) {
    case AIOSCOPE_JSON_NULL:
    case AIOSCOPE_JSON_NUMBER: break;
    case AIOSCOPE_JSON_BOOL: FUZZ_CHECK(v->boolean == 0 || v->boolean == 1); break;
    case AIOSCOPE_JSON_STRING:
        FUZZ_CHECK(v->string != NULL);
        FUZZ_CHECK(strlen(v->string) == v->len);
        break;
    case AIOSCOPE_JSON_ARRAY:
    case AIOSCOPE_JSON_OBJECT:
        FUZZ_CHECK(v->len == 0 || v->items != NULL);
        for (size_t i = 0; i < v->len; i++) {
            if (v->type == AIOSCOPE_JSON_OBJECT) {
                FUZZ_CHECK(v->keys && v->keys[i]);
                /* The first item with this key is the one a lookup returns. */
                const aioscope_json *found = aioscope_json_get(v, v->keys[i]);
                FUZZ_CHECK(found != NULL);
                size_t first = 0;
                while (strcmp(v->keys[first], v->keys[i]) != 0) first++;
                FUZZ_CHECK(found == &v->items[first]);
            }
            check_tree(&v->items[i], depth + 1);
        }
        break;
    default: FUZZ_CHECK(!"unknown node type");
    }
}

/* Writes v as JSON text with the core's writer. */
static void write_tree(aioscope_buf *b, const aioscope_json *v) {
    switch (v->type) {
    case AIOSCOPE_JSON_NULL: aioscope_buf_puts(b, "null"); break;
    case AIOSCOPE_JSON_BOOL: aioscope_buf_puts(b, v->boolean ? "true" : "false"); break;
    case AIOSCOPE_JSON_NUMBER: aioscope_buf_json_number(b, v->number); break;
    case AIOSCOPE_JSON_STRING: aioscope_buf_json_string(b, v->string); break;
    case AIOSCOPE_JSON_ARRAY:
    case AIOSCOPE_JSON_OBJECT:
        aioscope_buf_puts(b, v->type == AIOSCOPE_JSON_ARRAY ? "[" : "{");
        for (size_t i = 0; i < v->len; i++) {
            if (i) aioscope_buf_puts(b, ",");
            if (v->type == AIOSCOPE_JSON_OBJECT) {
                aioscope_buf_json_string(b, v->keys[i]);
                aioscope_buf_puts(b, ":");
            }
            write_tree(b, &v->items[i]);
        }
        aioscope_buf_puts(b, v->type == AIOSCOPE_JSON_ARRAY ? "]" : "}");
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Same shape: node types (a non-finite number of a may be null in b: the writer writes it so),
 * container sizes and keys; with exact, also equal strings and numbers. */
static void check_same(const aioscope_json *a, const aioscope_json *b, int exact) {
    if (a->type == AIOSCOPE_JSON_NUMBER && b->type == AIOSCOPE_JSON_NULL && !exact) return;
    FUZZ_CHECK(a->type == b->type);
    switch (a->type) {
    case AIOSCOPE_JSON_BOOL: FUZZ_CHECK(a->boolean == b->boolean); break;
    case AIOSCOPE_JSON_NUMBER: FUZZ_CHECK(!exact || a->number == b->number); break;
    case AIOSCOPE_JSON_STRING: FUZZ_CHECK(!exact || strcmp(a->string, b->string) == 0); break;
    case AIOSCOPE_JSON_ARRAY:
    case AIOSCOPE_JSON_OBJECT:
        FUZZ_CHECK(a->len == b->len);
        for (size_t i = 0; i < a->len; i++) {
            if (a->type == AIOSCOPE_JSON_OBJECT && exact) FUZZ_CHECK(strcmp(a->keys[i], b->keys[i]) == 0);
            check_same(&a->items[i], &b->items[i], exact);
        }
        break;
    default: break;
    }
}

/* Writes v, parses the text back (which must succeed) and returns the new tree; the text is
 * left in b. */
static aioscope_json *write_and_reparse(const aioscope_json *v, aioscope_buf *b) {
    aioscope_buf_init(b);
    write_tree(b, v);
    FUZZ_CHECK(!b->oom && b->len > 0);
    aioscope_json *w = NULL;
    int rc = aioscope_json_parse(b->data, b->len, &w);
    if (rc != 0) fprintf(stderr, "fuzz_json: the writer wrote what the reader rejects: %s\n", b->data);
    FUZZ_CHECK(rc == 0 && w != NULL);
    check_tree(w, 0);
    return w;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    aioscope_json *v = (aioscope_json *)1; /* must be overwritten, also on failure */
    int rc = aioscope_json_parse((const char *)data, size, &v);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0);
        FUZZ_CHECK(v == NULL);
        return 0;
    }
    FUZZ_CHECK(v != NULL);
    check_tree(v, 0);

    /* The lookups on whatever root it is: they must accept any node type. */
    (void)aioscope_json_get_string(v, "event");
    (void)aioscope_json_get_number(v, "line", 0);

    /* Writing normalizes once (invalid UTF-8 to U+FFFD, non-finite numbers to null, numbers to
     * six significant digits, which may turn 1.5e+06 into an integer on the next round); from
     * the second text on, reading and writing change nothing. */
    aioscope_buf b1, b2, b3;
    aioscope_json *t1 = write_and_reparse(v, &b1);
    check_same(v, t1, 0);
    aioscope_json *t2 = write_and_reparse(t1, &b2);
    check_same(t1, t2, 0);
    aioscope_json *t3 = write_and_reparse(t2, &b3);
    check_same(t2, t3, 1);
    if (b2.len != b3.len || memcmp(b2.data, b3.data, b2.len) != 0)
        fprintf(stderr, "fuzz_json: writing is not stable:\n%s\n%s\n", b2.data, b3.data);
    FUZZ_CHECK(b2.len == b3.len && memcmp(b2.data, b3.data, b2.len) == 0);

    aioscope_json_free(t3);
    aioscope_json_free(t2);
    aioscope_json_free(t1);
    aioscope_json_free(v);
    aioscope_buf_free(&b1);
    aioscope_buf_free(&b2);
    aioscope_buf_free(&b3);
    return 0;
}
