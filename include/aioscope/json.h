/* A small JSON reader and writer.
 *
 * The reader parses a whole text into a tree (aioscope_json); it is strict (RFC 8259), bounded in
 * depth, and never reads past the given length, since it parses untrusted input (saved reports,
 * the agent's event stream, answers on the control socket). The writer appends to a growable
 * buffer (aioscope_buf) with correct string escaping. */
#ifndef AIOSCOPE_JSON_H
#define AIOSCOPE_JSON_H

#include <stddef.h>

typedef enum {
    AIOSCOPE_JSON_NULL,
    AIOSCOPE_JSON_BOOL,
    AIOSCOPE_JSON_NUMBER,
    AIOSCOPE_JSON_STRING,
    AIOSCOPE_JSON_ARRAY,
    AIOSCOPE_JSON_OBJECT,
} aioscope_json_type;

typedef struct aioscope_json {
    aioscope_json_type type;
    int boolean;
    double number;
    char *string;              /* STRING: NUL-terminated (embedded NULs are rejected) */
    size_t len;                /* STRING: byte length; ARRAY/OBJECT: number of items */
    struct aioscope_json *items; /* ARRAY/OBJECT: values */
    char **keys;               /* OBJECT: keys, parallel to items */
} aioscope_json;

#define AIOSCOPE_JSON_MAX_DEPTH 64

/* Parse text[0..len). On success *out is a tree the caller frees with aioscope_json_free().
 * Returns 0, AIOSCOPE_EPARSE or AIOSCOPE_ENOMEM. */
int aioscope_json_parse(const char *text, size_t len, aioscope_json **out);
/* Accepts NULL. */
void aioscope_json_free(aioscope_json *v);

/* Lookups; return NULL when absent or of another type. */
const aioscope_json *aioscope_json_get(const aioscope_json *obj, const char *key);
const char *aioscope_json_get_string(const aioscope_json *obj, const char *key);
/* Returns dflt when absent or not a number. */
double aioscope_json_get_number(const aioscope_json *obj, const char *key, double dflt);

/* A growable byte buffer for writers. */
typedef struct {
    char *data; /* owned, NUL-terminated when len > 0 */
    size_t len;
    size_t cap;
    int oom;    /* set once an allocation failed; further appends are ignored */
} aioscope_buf;

void aioscope_buf_init(aioscope_buf *b);
void aioscope_buf_free(aioscope_buf *b);
void aioscope_buf_append(aioscope_buf *b, const char *s, size_t n);
void aioscope_buf_puts(aioscope_buf *b, const char *s);
void aioscope_buf_printf(aioscope_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal with quotes; NULL becomes null. Invalid UTF-8 bytes become U+FFFD. */
void aioscope_buf_json_string(aioscope_buf *b, const char *s);
/* A JSON number; non-finite values become null. */
void aioscope_buf_json_number(aioscope_buf *b, double v);

#endif
