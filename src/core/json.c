/* A small, strict JSON reader and a buffer-based JSON writer.
 *
 * The reader is a recursive-descent parser over a length-bounded text. It parses untrusted input
 * (saved reports, the agent's event stream, answers from a control socket), so it never reads
 * past `len`, caps the nesting depth at AIOSCOPE_JSON_MAX_DEPTH, rejects NUL inside strings and
 * frees everything it built when it fails. The writer appends to an aioscope_buf, escaping
 * strings and replacing invalid UTF-8 with U+FFFD so that what it writes is always valid JSON. */
#include "aioscope/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"

/* ---- writer ----------------------------------------------------------------------------- */

void aioscope_buf_init(aioscope_buf *b) { memset(b, 0, sizeof *b); }

void aioscope_buf_free(aioscope_buf *b) {
    if (!b) return;
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Make room for n more bytes plus a NUL; returns 0 or -1 (and sets oom). */
static int buf_reserve(aioscope_buf *b, size_t n) {
    if (b->oom) return -1;
    if (b->len + n + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void aioscope_buf_append(aioscope_buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n) < 0) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void aioscope_buf_puts(aioscope_buf *b, const char *s) { aioscope_buf_append(b, s, strlen(s)); }

void aioscope_buf_printf(aioscope_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        aioscope_buf_append(b, small, (size_t)n);
        return;
    }
    if (buf_reserve(b, (size_t)n) < 0) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (at most `avail` bytes), or 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07;
    else return 0;
    if (n > avail) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* Reject overlong forms, surrogates and values past U+10FFFF. */
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
    return n;
}

void aioscope_buf_json_string(aioscope_buf *b, const char *s) {
    if (!s) {
        aioscope_buf_puts(b, "null");
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t avail = strlen(s);
    aioscope_buf_append(b, "\"", 1);
    while (avail > 0) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            aioscope_buf_append(b, esc, 2);
        } else if (c == '\n') {
            aioscope_buf_append(b, "\\n", 2);
        } else if (c == '\r') {
            aioscope_buf_append(b, "\\r", 2);
        } else if (c == '\t') {
            aioscope_buf_append(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7F) {
            aioscope_buf_printf(b, "\\u%04x", c);
        } else if (c >= 0x80) {
            size_t n = utf8_seq_len(p, avail);
            if (n == 0) {
                aioscope_buf_append(b, "\xEF\xBF\xBD", 3); /* U+FFFD for a broken byte */
                n = 1;
            } else {
                aioscope_buf_append(b, (const char *)p, n);
            }
            p += n;
            avail -= n;
            continue;
        } else {
            aioscope_buf_append(b, (const char *)p, 1);
        }
        p++;
        avail--;
    }
    aioscope_buf_append(b, "\"", 1);
}

void aioscope_buf_json_number(aioscope_buf *b, double v) {
    if (!isfinite(v)) {
        aioscope_buf_puts(b, "null");
        return;
    }
    /* The range test comes first: converting a double outside long long's range is undefined. */
    if (fabs(v) < 1e15 && v == (double)(long long)v)
        aioscope_buf_printf(b, "%lld", (long long)v);
    else
        aioscope_buf_printf(b, "%.6g", v);
}

/* ---- reader ----------------------------------------------------------------------------- */

typedef struct {
    const char *p;
    const char *end;
    int depth;
} parser;

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int parse_value(parser *ps, aioscope_json *out);

static void json_clear(aioscope_json *v) {
    if (!v) return;
    free(v->string);
    if (v->type == AIOSCOPE_JSON_ARRAY || v->type == AIOSCOPE_JSON_OBJECT) {
        for (size_t i = 0; i < v->len; i++) {
            json_clear(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
    }
    memset(v, 0, sizeof *v);
}

void aioscope_json_free(aioscope_json *v) {
    if (!v) return;
    json_clear(v);
    free(v);
}

static int hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(aioscope_buf *b, uint32_t cp) {
    char tmp[4];
    size_t n;
    if (cp < 0x80) tmp[0] = (char)cp, n = 1;
    else if (cp < 0x800) tmp[0] = (char)(0xC0 | (cp >> 6)), tmp[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000)
        tmp[0] = (char)(0xE0 | (cp >> 12)), tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F)),
        tmp[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    else
        tmp[0] = (char)(0xF0 | (cp >> 18)), tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), tmp[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    aioscope_buf_append(b, tmp, n);
}

/* Parses a string literal at ps->p (which is at the opening quote) into a malloc'd C string. */
static int parse_string(parser *ps, char **out, size_t *outlen) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    ps->p++; /* opening quote */
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) goto bad; /* raw control characters are not allowed in JSON strings */
        if (c != '\\') {
            aioscope_buf_append(&b, ps->p, 1);
            ps->p++;
            continue;
        }
        if (ps->end - ps->p < 2) goto bad;
        char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"': aioscope_buf_append(&b, "\"", 1); break;
        case '\\': aioscope_buf_append(&b, "\\", 1); break;
        case '/': aioscope_buf_append(&b, "/", 1); break;
        case 'b': aioscope_buf_append(&b, "\b", 1); break;
        case 'f': aioscope_buf_append(&b, "\f", 1); break;
        case 'n': aioscope_buf_append(&b, "\n", 1); break;
        case 'r': aioscope_buf_append(&b, "\r", 1); break;
        case 't': aioscope_buf_append(&b, "\t", 1); break;
        case 'u': {
            uint32_t cp;
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp) < 0) goto bad;
            ps->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                    hex4(ps->p + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                    cp = 0xFFFD; /* a lone high surrogate */
                else {
                    ps->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD;
            }
            if (cp == 0) goto bad; /* embedded NUL: our strings are C strings */
            put_utf8(&b, cp);
            break;
        }
        default: goto bad;
        }
    }
    if (ps->p >= ps->end) goto bad;
    ps->p++; /* closing quote */
    if (b.oom) {
        aioscope_buf_free(&b);
        return AIOSCOPE_ENOMEM;
    }
    if (!b.data) {
        b.data = calloc(1, 1);
        if (!b.data) return AIOSCOPE_ENOMEM;
    }
    *out = b.data;
    *outlen = b.len;
    return 0;
bad:
    aioscope_buf_free(&b);
    return AIOSCOPE_EPARSE;
}

static int parse_number(parser *ps, aioscope_json *out) {
    const char *s = ps->p;
    const char *q = s;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end) return AIOSCOPE_EPARSE;
    if (*q == '0') q++;
    else if (*q >= '1' && *q <= '9')
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    else return AIOSCOPE_EPARSE;
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') return AIOSCOPE_EPARSE;
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') return AIOSCOPE_EPARSE;
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    /* strtod needs a NUL-terminated copy: the text may not be terminated right here. */
    char tmp[64];
    size_t n = (size_t)(q - s);
    if (n >= sizeof tmp) return AIOSCOPE_EPARSE;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    out->type = AIOSCOPE_JSON_NUMBER;
    out->number = strtod(tmp, NULL);
    ps->p = q;
    return 0;
}

static int match_word(parser *ps, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n) != 0) return 0;
    ps->p += n;
    return 1;
}

/* Appends a zeroed item (and key slot for objects) to a container; returns it or NULL. */
static aioscope_json *container_push(aioscope_json *c, size_t *cap) {
    if (c->len == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4;
        aioscope_json *items = realloc(c->items, ncap * sizeof *items);
        if (!items) return NULL;
        c->items = items;
        if (c->type == AIOSCOPE_JSON_OBJECT) {
            char **keys = realloc(c->keys, ncap * sizeof *keys);
            if (!keys) return NULL;
            c->keys = keys;
        }
        *cap = ncap;
    }
    aioscope_json *it = &c->items[c->len];
    memset(it, 0, sizeof *it);
    if (c->keys) c->keys[c->len] = NULL;
    c->len++;
    return it;
}

static int parse_container(parser *ps, aioscope_json *out, int is_object) {
    size_t cap = 0;
    int rc;
    char close = is_object ? '}' : ']';
    if (++ps->depth > AIOSCOPE_JSON_MAX_DEPTH) return AIOSCOPE_EPARSE;
    out->type = is_object ? AIOSCOPE_JSON_OBJECT : AIOSCOPE_JSON_ARRAY;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        size_t keylen;
        skip_ws(ps);
        if (is_object) {
            if (ps->p >= ps->end || *ps->p != '"') return AIOSCOPE_EPARSE;
            if ((rc = parse_string(ps, &key, &keylen)) < 0) return rc;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                return AIOSCOPE_EPARSE;
            }
            ps->p++;
        }
        aioscope_json *it = container_push(out, &cap);
        if (!it) {
            free(key);
            return AIOSCOPE_ENOMEM;
        }
        if (is_object) out->keys[out->len - 1] = key;
        if ((rc = parse_value(ps, it)) < 0) return rc;
        skip_ws(ps);
        if (ps->p >= ps->end) return AIOSCOPE_EPARSE;
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            ps->depth--;
            return 0;
        }
        return AIOSCOPE_EPARSE;
    }
}

static int parse_value(parser *ps, aioscope_json *out) {
    skip_ws(ps);
    if (ps->p >= ps->end) return AIOSCOPE_EPARSE;
    switch (*ps->p) {
    case '{': return parse_container(ps, out, 1);
    case '[': return parse_container(ps, out, 0);
    case '"':
        out->type = AIOSCOPE_JSON_STRING;
        return parse_string(ps, &out->string, &out->len);
    case 't':
        if (!match_word(ps, "true")) return AIOSCOPE_EPARSE;
        out->type = AIOSCOPE_JSON_BOOL;
        out->boolean = 1;
        return 0;
    case 'f':
        if (!match_word(ps, "false")) return AIOSCOPE_EPARSE;
        out->type = AIOSCOPE_JSON_BOOL;
        return 0;
    case 'n':
        if (!match_word(ps, "null")) return AIOSCOPE_EPARSE;
        out->type = AIOSCOPE_JSON_NULL;
        return 0;
    default: return parse_number(ps, out);
    }
}

int aioscope_json_parse(const char *text, size_t len, aioscope_json **out) {
    *out = NULL;
    aioscope_json *v = calloc(1, sizeof *v);
    if (!v) return AIOSCOPE_ENOMEM;
    parser ps = {text, text + len, 0};
    int rc = parse_value(&ps, v);
    if (rc == 0) {
        skip_ws(&ps);
        if (ps.p != ps.end) rc = AIOSCOPE_EPARSE; /* trailing garbage */
    }
    if (rc < 0) {
        aioscope_json_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

const aioscope_json *aioscope_json_get(const aioscope_json *obj, const char *key) {
    if (!obj || obj->type != AIOSCOPE_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (obj->keys[i] && strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

const char *aioscope_json_get_string(const aioscope_json *obj, const char *key) {
    const aioscope_json *v = aioscope_json_get(obj, key);
    return v && v->type == AIOSCOPE_JSON_STRING ? v->string : NULL;
}

double aioscope_json_get_number(const aioscope_json *obj, const char *key, double dflt) {
    const aioscope_json *v = aioscope_json_get(obj, key);
    return v && v->type == AIOSCOPE_JSON_NUMBER ? v->number : dflt;
}
