/* Error codes shared by every part of aioscope.
 *
 * Functions return 0 on success or one of the negative AIOSCOPE_E* codes below; the one table
 * AIOSCOPE_ERRNO_MAP holds every code with its message, in the way libuv's UV_ERRNO_MAP does. */
#ifndef AIOSCOPE_ERROR_H
#define AIOSCOPE_ERROR_H

#define AIOSCOPE_ERRNO_MAP(X)                                                              \
    X(NOMEM, "out of memory")                                                              \
    X(INVAL, "invalid argument")                                                           \
    X(IO, "input/output error")                                                            \
    X(PARSE, "malformed input")                                                            \
    X(NOENT, "no such file or directory")                                                  \
    X(SRCH, "no such process")                                                             \
    X(PERM, "permission denied")                                                           \
    X(NOTPY, "not a Python process")                                                       \
    X(UNSUPPORTED, "unsupported Python version")                                           \
    X(FAULT, "unreadable address in the target's memory")                                  \
    X(BADDATA, "inconsistent data in the target's memory")                                 \
    X(LIMIT, "a bound on a walk was reached")                                              \
    X(AGAIN, "the target changed while it was read; try again")                            \
    X(NOAGENT, "the process has no aioscope agent")                                        \
    X(PROTO, "protocol error on the agent's control socket")

#define AIOSCOPE_OK 0

/* Codes are -1, -2, ... in table order. */
typedef enum {
    AIOSCOPE__ESTART = 0,
#define AIOSCOPE__ERR_DECL(name, msg) AIOSCOPE__IDX_##name,
    AIOSCOPE_ERRNO_MAP(AIOSCOPE__ERR_DECL)
#undef AIOSCOPE__ERR_DECL
    AIOSCOPE__ECOUNT
} aioscope__err_index;

#define AIOSCOPE__ERRCODE(name) (-(int)AIOSCOPE__IDX_##name)
#define AIOSCOPE_ENOMEM AIOSCOPE__ERRCODE(NOMEM)
#define AIOSCOPE_EINVAL AIOSCOPE__ERRCODE(INVAL)
#define AIOSCOPE_EIO AIOSCOPE__ERRCODE(IO)
#define AIOSCOPE_EPARSE AIOSCOPE__ERRCODE(PARSE)
#define AIOSCOPE_ENOENT AIOSCOPE__ERRCODE(NOENT)
#define AIOSCOPE_ESRCH AIOSCOPE__ERRCODE(SRCH)
#define AIOSCOPE_EPERM AIOSCOPE__ERRCODE(PERM)
#define AIOSCOPE_ENOTPY AIOSCOPE__ERRCODE(NOTPY)
#define AIOSCOPE_EUNSUPPORTED AIOSCOPE__ERRCODE(UNSUPPORTED)
#define AIOSCOPE_EFAULT AIOSCOPE__ERRCODE(FAULT)
#define AIOSCOPE_EBADDATA AIOSCOPE__ERRCODE(BADDATA)
#define AIOSCOPE_ELIMIT AIOSCOPE__ERRCODE(LIMIT)
#define AIOSCOPE_EAGAIN AIOSCOPE__ERRCODE(AGAIN)
#define AIOSCOPE_ENOAGENT AIOSCOPE__ERRCODE(NOAGENT)
#define AIOSCOPE_EPROTO AIOSCOPE__ERRCODE(PROTO)

/* The message for a code; never NULL ("unknown error" for a code not in the table). */
const char *aioscope_strerror(int err);
/* The short name of a code ("ENOMEM"), for JSON and logs; never NULL. */
const char *aioscope_err_name(int err);

#endif
