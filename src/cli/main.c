/* The `aioscope` command: dispatches to one subcommand per file (cmd_*.c). */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/snapshot_cli.h"

static const char usage[] =
    "usage: aioscope <command> [options]\n"
    "\n"
    "aioscope finds asyncio bugs: forgotten awaits, blocked event loops, lost exceptions,\n"
    "swallowed cancellations, tasks left pending, leaked transports.\n"
    "\n"
    "commands:\n"
    "  run       run a Python program under the agent and report what it hit\n"
    "  report    show a saved JSON report as text, or write it as an HTML page\n"
    "  ps        one line per asyncio task of a running process (PID)\n"
    "  pstree    the await tree of a running process's tasks\n"
    "  dump      every thread's and task's stack of a running process\n"
    "  top       a live view of a running process's tasks (busy time, steps, loop lag)\n"
    "\n"
    "Run `aioscope <command> --help` for a command's options.\n"
    "Exit status: the command's own (see its --help); 2 for bad arguments.\n";

void asc_cli_error(const char *fmt, ...) {
    va_list ap;
    fputs("aioscope: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

const char *asc_cli_exe_dir(void) {
    static char dir[PATH_MAX];
    if (dir[0]) return dir;
    ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n <= 0) {
        dir[0] = '\0';
        return dir;
    }
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    return dir;
}

static const struct {
    const char *name;
    int (*fn)(int, char **);
} commands[] = {
    {"run", asc_cmd_run},
    {"report", asc_cmd_report},
    {"ps", asc_cmd_ps},
    {"pstree", asc_cmd_pstree},
    {"dump", asc_cmd_dump},
    {"top", asc_cmd_top},
};

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? ASC_EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("aioscope %s\n", AIOSCOPE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    asc_cli_error("unknown command '%s' (see `aioscope --help`)", argv[1]);
    return ASC_EXIT_USAGE;
}
