/* Options and snapshot acquisition for `aioscope ps|pstree|dump` (see snapshot_cli.h).
 *
 * Today the snapshot always comes from reading the target's memory: the agent's control socket
 * does not exist yet. When it does, asc_snap_take asks the agent first unless --attach is given,
 * and falls back to memory on AIOSCOPE_ENOAGENT; both fill the same aioscope_snapshot. */
#include "cli/snapshot_cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aioscope/attach.h"
#include "aioscope/error.h"
#include "cli/agent_client.h"
#include "cli/commands.h"

int asc_snap_parse(int argc, char **argv, const char *usage, asc_snap_opts *o, int *done) {
    memset(o, 0, sizeof *o);
    *done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            *done = 1;
            return 0;
        } else if (strcmp(a, "--attach") == 0) {
            o->attach = 1;
        } else if (strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if (strcmp(a, "--freeze") == 0) {
            o->freeze = 1;
        } else if (strcmp(a, "--spawn") == 0 && strcmp(argv[0], "pstree") == 0) {
            o->spawn = 1;
        } else if (a[0] != '-' && !o->pid) {
            char *end;
            long pid = strtol(a, &end, 10);
            if (*end || pid <= 0 || pid > 0x3fffffff) {
                asc_cli_error("%s: '%s' is not a process id", argv[0], a);
                return ASC_EXIT_SNAP_USAGE;
            }
            o->pid = (int)pid;
        } else {
            asc_cli_error("%s: unexpected argument '%s' (see `aioscope %s --help`)", argv[0], a, argv[0]);
            return ASC_EXIT_SNAP_USAGE;
        }
    }
    if (!o->pid) {
        asc_cli_error("%s: which process? (usage: aioscope %s PID [--attach] [--json] [--freeze])", argv[0], argv[0]);
        return ASC_EXIT_SNAP_USAGE;
    }
    return 0;
}

/* Resume the target if we are interrupted while it is frozen, then die of the same signal. */
static volatile sig_atomic_t asc__frozen_pid;

static void asc__on_signal(int sig) {
    if (asc__frozen_pid) aioscope_target_thaw_pid((int)asc__frozen_pid);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int asc__open_error(int rc, int pid) {
    switch (rc) {
    case AIOSCOPE_ESRCH:
        asc_cli_error("no process with pid %d", pid);
        return ASC_EXIT_SNAP_NOPROC;
    case AIOSCOPE_EPERM:
        asc_cli_error("not allowed to read process %d: run as the same user as the process (with "
                      "kernel.yama.ptrace_scope 0) or with CAP_SYS_PTRACE (in a container: "
                      "--cap-add SYS_PTRACE)", pid);
        return ASC_EXIT_SNAP_PERM;
    case AIOSCOPE_ENOTPY:
        asc_cli_error("process %d is not a CPython process (no _PyRuntime in its executable or libpython)", pid);
        return ASC_EXIT_SNAP_NOTPY;
    case AIOSCOPE_EUNSUPPORTED:
        asc_cli_error("process %d runs a Python version aioscope cannot read (supported: CPython 3.8-3.13)", pid);
        return ASC_EXIT_SNAP_NOTPY;
    default:
        asc_cli_error("cannot read process %d: %s", pid, aioscope_strerror(rc));
        return ASC_EXIT_SNAP_UNREADABLE;
    }
}

int asc_snap_take(const asc_snap_opts *o, aioscope_snapshot **out) {
    aioscope_target *t = NULL;
    *out = NULL;
    /* The agent first (agent_client.c): consistent, with busy time and steps. */
    if (!o->attach) {
        int arc = asc_agent_snapshot(o->pid, out, NULL);
        if (arc == 0) return 0;
        if (arc != AIOSCOPE_ENOAGENT)
            asc_cli_error("the agent of process %d did not answer (%s); reading its memory instead",
                          o->pid, aioscope_strerror(arc));
    }
    int rc = aioscope_target_open_pid(o->pid, &t);
    if (rc < 0) return asc__open_error(rc, o->pid);
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = asc__on_signal;
    if (o->freeze) {
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        asc__frozen_pid = o->pid;
        if ((rc = aioscope_target_freeze(t)) < 0) {
            asc__frozen_pid = 0;
            aioscope_target_close(t);
            return asc__open_error(rc, o->pid);
        }
    }
    rc = aioscope_target_snapshot(t, out);
    aioscope_target_thaw(t); /* always resume, before reporting anything */
    if (o->freeze) {
        asc__frozen_pid = 0;
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    aioscope_target_close(t);
    if (rc == AIOSCOPE_EAGAIN) {
        asc_cli_error("process %d kept changing while it was read; try again, or use --freeze", o->pid);
        return ASC_EXIT_SNAP_UNREADABLE;
    }
    if (rc < 0) return asc__open_error(rc, o->pid);
    return 0;
}
