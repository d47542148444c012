/* Where the agent's control sockets live (include/aioscope/control.h), shared by the agent (which
 * creates the directory and listens) and the CLI (which connects). The checks here are what keeps
 * other users away from a socket that answers with the program's stacks: a directory we do not own,
 * or one others can enter, is refused rather than repaired. */
#include "aioscope/control.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aioscope/error.h"

/* A directory is ours when lstat (not stat: a symlink could point anywhere) shows a directory
 * owned by our effective uid, with no permission bits for group or others. */
static int asc_check_private_dir(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? AIOSCOPE_ENOENT : AIOSCOPE_EPERM;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0)
        return AIOSCOPE_EPERM;
    return 0;
}

int aioscope_control_dir(int xdg, int create, char *out, size_t cap) {
    int n;
    if (xdg) {
        const char *rt = getenv("XDG_RUNTIME_DIR");
        struct stat st;
        /* XDG_RUNTIME_DIR itself must be ours too, else it is someone else's environment. */
        if (!rt || rt[0] != '/' || stat(rt, &st) < 0 || !S_ISDIR(st.st_mode) ||
            st.st_uid != geteuid())
            return AIOSCOPE_ENOENT;
        n = snprintf(out, cap, "%s/aioscope", rt);
    } else {
        n = snprintf(out, cap, "/tmp/aioscope-%u", (unsigned)geteuid());
    }
    if (n < 0 || (size_t)n >= cap) return AIOSCOPE_EINVAL;
    int rc = asc_check_private_dir(out);
    if (rc == AIOSCOPE_ENOENT && create) {
        if (mkdir(out, 0700) < 0 && errno != EEXIST) return AIOSCOPE_EPERM;
        rc = asc_check_private_dir(out); /* whoever made it, it must pass the same checks */
    }
    return rc;
}

int aioscope_control_path(int xdg, int create, int pid, char *out, size_t cap) {
    char dir[AIOSCOPE_CONTROL_PATH_MAX];
    int rc = aioscope_control_dir(xdg, create, dir, sizeof dir);
    if (rc < 0) return rc;
    int n = snprintf(out, cap, "%s/%d.sock", dir, pid);
    if (n < 0 || (size_t)n >= cap || (size_t)n >= AIOSCOPE_CONTROL_PATH_MAX) return AIOSCOPE_EINVAL;
    return 0;
}
