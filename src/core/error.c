/* Messages for the AIOSCOPE_E* codes, generated from the one table in error.h. */
#include "aioscope/error.h"

static const char *const messages[] = {
    "success",
#define MSG(name, msg) msg,
    AIOSCOPE_ERRNO_MAP(MSG)
#undef MSG
};

static const char *const names[] = {
    "OK",
#define NAME(name, msg) "E" #name,
    AIOSCOPE_ERRNO_MAP(NAME)
#undef NAME
};

const char *aioscope_strerror(int err) {
    int idx = -err;
    if (idx < 0 || idx >= (int)AIOSCOPE__ECOUNT) return "unknown error";
    return messages[idx];
}

const char *aioscope_err_name(int err) {
    int idx = -err;
    if (idx < 0 || idx >= (int)AIOSCOPE__ECOUNT) return "EUNKNOWN";
    return names[idx];
}
