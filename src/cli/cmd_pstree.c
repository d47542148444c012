/* `aioscope pstree PID`: Show the await tree of a running Python process's asyncio tasks: who awaits whom (await, gather, TaskGroup).
 * The snapshot comes from the process's agent when it has one, else (and with --attach) from
 * reading its memory; see snapshot_cli.c. */
#include "cli/snapshot_cli.h"

static const char usage[] =
    "usage: aioscope pstree PID [--spawn] [--attach] [--json] [--freeze]\n"
    "\n"
    "Show the await tree of a running Python process's asyncio tasks: who awaits whom\n"
    "(await, gather, TaskGroup).\n"
    "\n"
    "  --spawn   the spawn tree instead: which task created which (needs the agent)\n"
    "  --attach  read the process's memory even if it runs the aioscope agent\n"
    "  --json    print the snapshot as JSON (threads, frames, tasks, awaits)\n"
    "  --freeze  stop the process while reading it, for a consistent snapshot (it is always\n"
    "            resumed, also on errors and Ctrl-C)\n"
    "\n"
    "Exit status: 0 ok, 2 usage, 3 no such process, 4 permission denied, 5 not a supported\n"
    "Python process, 6 state unreadable (see docs/attach.md).\n";

int asc_cmd_pstree(int argc, char **argv) {
    asc_snap_opts o;
    aioscope_snapshot *s;
    int done, rc = asc_snap_parse(argc, argv, usage, &o, &done);
    if (rc || done) return rc;
    if ((rc = asc_snap_take(&o, &s)) != 0) return rc;
    if (o.json) rc = asc_snap_print_json(s, stdout);
    else if (o.spawn) asc_snap_print_spawn_tree(s, stdout);
    else asc_snap_print_tree(s, stdout);
    aioscope_snapshot_free(s);
    return rc;
}
