/* `aioscope run`: run a Python program with the in-process agent and report what it hit.
 *
 * The program's interpreter finds our sitecustomize first on PYTHONPATH; it loads the agent
 * before the program's own code and then puts sys.path and the environment back as they were.
 * The agent appends one JSON line per event (hello, finding, fatal) to a temporary file whose
 * name it gets in AIOSCOPE_EVENTS; every line is one write(), so whatever the program does —
 * return, raise, sys.exit, a signal, os._exit, a crash — the findings written so far survive.
 * When the program has ended, this process reads the events, merges them into one report and
 * writes the text report on stderr and, with --json, the JSON report.
 *
 * Exit status: the program's own (128+N when a signal N killed it); 2 for aioscope's own errors
 * before the program started; 3 when --fail-on LEVEL was given and a finding at or above LEVEL
 * was reported; 4 when --on-deadlock exit ended the program on a deadlock. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "aioscope/error.h"
#include "aioscope/report.h"
#include "cli/commands.h"

#define ASC_EXIT_FAIL_ON 3
#define ASC_EXIT_DEADLOCK 4 /* --on-deadlock exit: the agent ended the program on a deadlock */

/* A line of the event stream longer than this is not ours (a finding with a 500-frame stack is
 * well under it); it is skipped rather than read into memory without bound. */
#define MAX_EVENT_LINE (16u << 20)

static const char run_usage[] =
    "usage: aioscope run [options] SCRIPT [ARGS...]\n"
    "       aioscope run [options] -m MODULE [ARGS...]\n"
    "       aioscope run [options] -- COMMAND [ARGS...]\n"
    "\n"
    "Run a Python program with the aioscope agent and report the asyncio bugs it hit, on stderr\n"
    "after the program's own output. COMMAND is any command line that runs a Python interpreter\n"
    "(python3.12 app.py, uvicorn app:app, pytest, ...).\n"
    "\n"
    "options:\n"
    "  --python PY               interpreter for SCRIPT and -m MODULE (default: python3 on PATH)\n"
    "  --json FILE               also write the report as JSON to FILE (written even when the\n"
    "                            program raises, exits or is killed)\n"
    "  --quiet                   no text report\n"
    "  --fail-on LEVEL           exit with status 3 if a finding at LEVEL or above was reported\n"
    "                            (LEVEL: error, warning or info)\n"
    "  --block-threshold SECONDS report the event loop as blocked when it does not get back to\n"
    "                            polling within SECONDS (default 0.1)\n"
    "  --on-deadlock ACTION      report (default): report a deadlock on stderr at once and go on;\n"
    "                            exit: report it, then end the program with status 4 (for CI)\n"
    "  --deadlock-after SECONDS  report a deadlock once it has lasted SECONDS (default 1)\n"
    "  --stuck-after SECONDS     report a task that made no progress for SECONDS while its loop\n"
    "                            kept running, as stuck-task (info; default 30)\n"
    "  --trace FILE              also record a timeline of tasks, steps, loop iterations, blocked\n"
    "                            periods, locks and findings to FILE (Chrome trace JSON: open it\n"
    "                            in ui.perfetto.dev or chrome://tracing; see docs/trace.md)\n"
    "  --trace-limit N           keep at most the last N trace events (default 500000)\n"
    "  --dump-signal SIG         on signal SIG (USR1, USR2 or PWR), print every thread's stack and\n"
    "                            every task's coroutine stack on stderr and go on (docs/live.md);\n"
    "                            send it to the program or to aioscope run, which passes it on\n"
    "  -h, --help                show this help\n"
    "\n"
    "exit status: the program's own (128+N if signal N killed it); 2 for aioscope's own errors\n"
    "(bad arguments, script or interpreter not found, unsupported Python, agent not built for\n"
    "it, unwritable --json path), before the program starts; 3 when --fail-on trips; 4 when\n"
    "--on-deadlock exit ended the program on a deadlock.\n";

typedef struct {
    const char *python;
    const char *json_path;
    int quiet;
    int fail_on; /* -1: not given */
    const char *block_threshold;
    int on_deadlock_exit;
    const char *deadlock_after, *stuck_after;
    char trace_path[PATH_MAX]; /* --trace, made absolute: the program may chdir */
    const char *trace_limit;
    int dump_signal; /* --dump-signal: the signal number, 0 when not given */
    const char *dump_signal_name;
    char **target; /* what follows the options */
    int ntarget;
    int mode; /* 's' script, 'm' module, 'c' command */
} run_options;

static volatile sig_atomic_t child_pid;

/* Forward termination signals to the program. The program runs in a process group of its own
 * (made the terminal's foreground group when we were), so a signal reaches it exactly once: a
 * Ctrl-C from the terminal goes to it directly, and whatever reaches us — `kill PID`, `kill
 * -PGID` of our group, a terminal whose foreground we kept — is passed on by this handler. In one
 * shared group a group-wide SIGINT arrived twice, and the second one broke the program's own
 * cleanup (KeyboardInterrupt inside asyncio.run's shutdown). */
static void forward_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    (void)info;
    if (child_pid <= 0) return;
    kill((pid_t)child_pid, sig);
}

/* The controlling terminal, if we run in its foreground process group: the fd to hand the
 * foreground to the program with, or -1. */
static int foreground_tty(void) {
    for (int fd = 0; fd <= 2; fd++)
        if (isatty(fd) && tcgetpgrp(fd) == getpgrp()) return fd;
    return -1;
}

/* tcsetpgrp from a process that is not (or no longer) in the foreground raises SIGTTOU; ignore
 * it for the call only. */
static void give_terminal(int fd, pid_t pgrp) {
    struct sigaction ign, old;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGTTOU, &ign, &old);
    (void)tcsetpgrp(fd, pgrp);
    sigaction(SIGTTOU, &old, NULL);
}

extern char **environ;

/* The names of the AIOSCOPE_* variables in the environment, each as "NAME\n", not counting
 * `skip` (a string of the same form): a malloc'd string, NULL when out of memory. */
static char *aioscope_var_names(const char *skip) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, "AIOSCOPE_", 9) != 0 || !eq) continue;
        char line[256];
        size_t n = (size_t)(eq - *e);
        if (n + 2 > sizeof line) continue;
        memcpy(line, *e, n);
        line[n] = '\n';
        line[n + 1] = '\0';
        if (skip && strstr(skip, line)) continue;
        aioscope_buf_append(&b, line, n + 1);
    }
    if (b.oom) {
        aioscope_buf_free(&b);
        return NULL;
    }
    return b.data ? b.data : strdup("");
}

/* AIOSCOPE_CLI_VARS: the AIOSCOPE_* variables that we set and the user had not (user_vars, from
 * aioscope_var_names before we set ours), which the bootstrap removes once the agent has read
 * them; the user's own stay. */
static int name_our_variables(const char *user_vars) {
    char *ours = aioscope_var_names(user_vars);
    if (!ours) return -1;
    for (char *c = ours; *c; c++)
        if (*c == '\n') *c = ',';
    int rc = setenv("AIOSCOPE_CLI_VARS", ours, 1);
    free(ours);
    return rc;
}

static int parse_args(int argc, char **argv, run_options *o) {
    enum { OPT_PYTHON = 1000, OPT_JSON, OPT_QUIET, OPT_FAIL_ON, OPT_BLOCK, OPT_ON_DEADLOCK,
           OPT_DEADLOCK_AFTER, OPT_STUCK_AFTER, OPT_TRACE, OPT_TRACE_LIMIT, OPT_DUMP_SIGNAL };
    static const struct option longopts[] = {
        {"python", required_argument, NULL, OPT_PYTHON},
        {"json", required_argument, NULL, OPT_JSON},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"fail-on", required_argument, NULL, OPT_FAIL_ON},
        {"block-threshold", required_argument, NULL, OPT_BLOCK},
        {"on-deadlock", required_argument, NULL, OPT_ON_DEADLOCK},
        {"deadlock-after", required_argument, NULL, OPT_DEADLOCK_AFTER},
        {"stuck-after", required_argument, NULL, OPT_STUCK_AFTER},
        {"trace", required_argument, NULL, OPT_TRACE},
        {"trace-limit", required_argument, NULL, OPT_TRACE_LIMIT},
        {"dump-signal", required_argument, NULL, OPT_DUMP_SIGNAL},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->fail_on = -1;
    /* "+" stops at the first non-option: the program's own arguments are never ours. */
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+hm:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(run_usage, stdout); exit(0);
        case OPT_PYTHON: o->python = optarg; break;
        case OPT_JSON: o->json_path = optarg; break;
        case OPT_QUIET: o->quiet = 1; break;
        case OPT_FAIL_ON: {
            aioscope_severity sev;
            if (aioscope_severity_parse(optarg, &sev) < 0) {
                asc_cli_error("--fail-on takes error, warning or info, not '%s'", optarg);
                return -1;
            }
            o->fail_on = (int)sev;
            break;
        }
        case OPT_BLOCK: {
            char *end;
            double v = strtod(optarg, &end);
            if (end == optarg || *end || !(v > 0) || v > 3600) {
                asc_cli_error("--block-threshold takes a number of seconds (0 < s <= 3600), not '%s'", optarg);
                return -1;
            }
            o->block_threshold = optarg;
            break;
        }
        case OPT_TRACE:
            if (optarg[0] == '/' || !getcwd(o->trace_path, sizeof o->trace_path))
                snprintf(o->trace_path, sizeof o->trace_path, "%s", optarg);
            else
                snprintf(o->trace_path + strlen(o->trace_path), sizeof o->trace_path - strlen(o->trace_path),
                         "/%s", optarg);
            break;
        case OPT_DUMP_SIGNAL: {
            /* The agent accepts the same names (livepy.c); SIGINT/SIGTERM would change how the
             * program stops, and QUIT is forwarded only from kill, so it is not offered. */
            const char *n = strncasecmp(optarg, "SIG", 3) == 0 ? optarg + 3 : optarg;
            o->dump_signal = strcasecmp(n, "USR1") == 0 ? SIGUSR1 : strcasecmp(n, "USR2") == 0 ? SIGUSR2
                           : strcasecmp(n, "PWR") == 0 ? SIGPWR : 0;
            if (!o->dump_signal) {
                asc_cli_error("--dump-signal takes USR1, USR2 or PWR, not '%s'", optarg);
                return -1;
            }
            o->dump_signal_name = n;
            break;
        }
        case OPT_TRACE_LIMIT: {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            /* The agent's bounds (trace.c): fewer events show nothing; more would need > 2 GB. */
            if (end == optarg || *end || optarg[0] == '-' || v < 100 || v > 50000000) {
                asc_cli_error("--trace-limit takes a number of events from 100 to 50000000, not '%s'", optarg);
                return -1;
            }
            o->trace_limit = optarg;
            break;
        }
        case OPT_ON_DEADLOCK:
            if (strcmp(optarg, "exit") != 0 && strcmp(optarg, "report") != 0) {
                asc_cli_error("--on-deadlock takes exit or report, not '%s'", optarg);
                return -1;
            }
            o->on_deadlock_exit = strcmp(optarg, "exit") == 0;
            break;
        case OPT_DEADLOCK_AFTER:
        case OPT_STUCK_AFTER: {
            /* 0 is allowed for --deadlock-after (report at the first confirming check). */
            char *end;
            double v = strtod(optarg, &end);
            int deadlock = c == OPT_DEADLOCK_AFTER;
            if (end == optarg || *end || v < 0 || (!deadlock && v == 0) || v > 86400) {
                asc_cli_error("--%s takes a number of seconds (%s s <= 86400), not '%s'",
                              deadlock ? "deadlock-after" : "stuck-after", deadlock ? "0 <=" : "0 <", optarg);
                return -1;
            }
            if (deadlock) o->deadlock_after = optarg;
            else o->stuck_after = optarg;
            break;
        }
        case 'm':
            o->mode = 'm';
            o->target = argv + optind - 1; /* optarg is the module; keep it with its args */
            o->ntarget = argc - (optind - 1);
            return 0;
        case '?':
        default:
            if (optopt == 'm') asc_cli_error("-m needs a module name");
            else asc_cli_error("unknown option '%s' (see `aioscope run --help`)", argv[optind - 1]);
            return -1;
        }
    }
    if (optind > 0 && strcmp(argv[optind - 1], "--") == 0) {
        o->mode = 'c';
    } else {
        o->mode = 's';
    }
    o->target = argv + optind;
    o->ntarget = argc - optind;
    if (o->ntarget == 0) {
        asc_cli_error(o->mode == 'c' ? "nothing to run after '--'"
                                     : "what should I run? (aioscope run SCRIPT | -m MODULE | -- COMMAND)");
        return -1;
    }
    return 0;
}

/* Finds `name` on PATH (or takes it as a path when it has a slash). 0 and the path in out. */
static int find_program(const char *name, char *out, size_t size) {
    if (strchr(name, '/')) {
        if (access(name, X_OK) != 0) return -1;
        snprintf(out, size, "%s", name);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        if (len == 0) snprintf(out, size, "./%s", name);
        else snprintf(out, size, "%.*s/%s", (int)len, path, name);
        struct stat st;
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0) return 0;
        path += len + (colon ? 1 : 0);
        if (!colon) break;
    }
    return -1;
}

/* The script must exist, be a readable file, and look like text: an executable or an image
 * handed to the interpreter would only give a confusing SyntaxError. */
static int check_script(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        asc_cli_error("cannot run '%s': %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        char main_py[PATH_MAX];
        snprintf(main_py, sizeof main_py, "%s/__main__.py", path);
        if (access(main_py, R_OK) == 0) return 0; /* python runs a directory's __main__.py */
        asc_cli_error("cannot run '%s': it is a directory without __main__.py", path);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        asc_cli_error("cannot run '%s': %s", path, strerror(errno));
        return -1;
    }
    unsigned char head[4096];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    /* Python's own zip applications and .pyc files are binary but runnable. */
    int is_zip = n >= 4 && memcmp(head, "PK\003\004", 4) == 0;
    size_t len = strlen(path);
    int is_pyc = len > 4 && strcmp(path + len - 4, ".pyc") == 0;
    if (!is_zip && !is_pyc && memchr(head, 0, n)) {
        asc_cli_error("cannot run '%s': it is not a Python script (binary file)", path);
        return -1;
    }
    return 0;
}

/* Where the agent package lives: build/python next to build/aioscope, or an installed layout. */
static int find_agent_home(char *out, size_t size) {
    const char *env = getenv("AIOSCOPE_HOME");
    const char *dir = asc_cli_exe_dir();
    const char *candidates[3] = {env, NULL, NULL};
    char a[PATH_MAX], b[PATH_MAX];
    snprintf(a, sizeof a, "%s/python", dir);
    snprintf(b, sizeof b, "%s/../lib/aioscope/python", dir);
    candidates[1] = a;
    candidates[2] = b;
    for (int i = 0; i < 3; i++) {
        if (!candidates[i] || !*candidates[i]) continue;
        char probe[PATH_MAX];
        snprintf(probe, sizeof probe, "%s/aioscope_boot/sitecustomize.py", candidates[i]);
        if (access(probe, R_OK) == 0) {
            if (!realpath(candidates[i], out)) snprintf(out, size, "%s", candidates[i]);
            return 0;
        }
    }
    return -1;
}

/* Sets up the environment the bootstrap reads. The bootstrap removes every AIOSCOPE_* variable
 * and restores PYTHONPATH, so the program sees the environment it would have had. */
static int setup_env(const char *home, const char *events, const run_options *o) {
    char boot[PATH_MAX + 32];
    const char *orig = getenv("PYTHONPATH");
    snprintf(boot, sizeof boot, "%s/aioscope_boot", home);
    if (orig) {
        size_t n = strlen(boot) + strlen(orig) + 2;
        char *pp = malloc(n);
        if (!pp) return -1;
        snprintf(pp, n, "%s:%s", boot, orig);
        setenv("AIOSCOPE_ORIG_PYTHONPATH", orig, 1);
        setenv("PYTHONPATH", pp, 1);
        free(pp);
    } else {
        unsetenv("AIOSCOPE_ORIG_PYTHONPATH");
        setenv("PYTHONPATH", boot, 1);
    }
    setenv("AIOSCOPE_HOME", home, 1);
    setenv("AIOSCOPE_EVENTS", events, 1);
    if (o->block_threshold) setenv("AIOSCOPE_BLOCK_THRESHOLD", o->block_threshold, 1);
    if (o->trace_path[0]) setenv("AIOSCOPE_TRACE", o->trace_path, 1);
    if (o->trace_limit) setenv("AIOSCOPE_TRACE_LIMIT", o->trace_limit, 1);
    if (o->dump_signal_name) setenv("AIOSCOPE_DUMP_SIGNAL", o->dump_signal_name, 1);
    if (o->on_deadlock_exit) setenv("AIOSCOPE_ON_DEADLOCK", "exit", 1);
    if (o->deadlock_after) setenv("AIOSCOPE_DEADLOCK_AFTER", o->deadlock_after, 1);
    if (o->stuck_after) setenv("AIOSCOPE_STUCK_AFTER", o->stuck_after, 1);
    return 0;
}

/* Reads the event stream into the report. Returns the text of a "fatal" event (malloc'd) if the
 * bootstrap refused to start the program, else NULL. */
static char *read_events(const char *path, aioscope_report *r) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *line = NULL, *fatal = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if ((size_t)n > MAX_EVENT_LINE) continue;
        if (strstr(line, "\"event\":\"fatal\"")) {
            aioscope_json *ev = NULL;
            if (aioscope_json_parse(line, (size_t)n, &ev) == 0 && !fatal) {
                const char *msg = aioscope_json_get_string(ev, "message");
                fatal = strdup(msg ? msg : "the agent could not start");
            }
            aioscope_json_free(ev);
            continue;
        }
        /* A line cut short (the program died inside write()) is skipped, not fatal. */
        (void)aioscope_report_feed_event(r, line, (size_t)n);
    }
    free(line);
    fclose(f);
    return fatal;
}

static int write_json_report(const char *path, const aioscope_report *r) {
    FILE *f = fopen(path, "w");
    if (!f) {
        asc_cli_error("cannot write the JSON report to '%s': %s", path, strerror(errno));
        return -1;
    }
    int rc = aioscope_report_write_json(r, f);
    if (fclose(f) != 0 && rc == 0) rc = AIOSCOPE_EIO;
    if (rc < 0) {
        asc_cli_error("cannot write the JSON report to '%s': %s", path, aioscope_strerror(rc));
        return -1;
    }
    return 0;
}

int asc_cmd_run(int argc, char **argv) {
    run_options o;
    if (parse_args(argc, argv, &o) < 0) return ASC_EXIT_USAGE;

    /* Build the command line: [python, script|-m module, args...] or the command as given. */
    char python[PATH_MAX], program[PATH_MAX];
    char **child_argv = calloc((size_t)o.ntarget + 3, sizeof *child_argv);
    if (!child_argv) {
        asc_cli_error("out of memory");
        return ASC_EXIT_USAGE;
    }
    int k = 0;
    if (o.mode == 'c') {
        if (find_program(o.target[0], program, sizeof program) < 0) {
            asc_cli_error("command not found: %s", o.target[0]);
            free(child_argv);
            return ASC_EXIT_USAGE;
        }
    } else {
        const char *py = o.python ? o.python : "python3";
        if (find_program(py, python, sizeof python) < 0) {
            asc_cli_error("Python interpreter not found: %s%s", py,
                          o.python ? "" : " (is python3 on PATH? or pass --python)");
            free(child_argv);
            return ASC_EXIT_USAGE;
        }
        snprintf(program, sizeof program, "%s", python);
        child_argv[k++] = (char *)py;
        if (o.mode == 'm') child_argv[k++] = "-m";
        else if (check_script(o.target[0]) < 0) {
            free(child_argv);
            return ASC_EXIT_USAGE;
        }
    }
    for (int i = 0; i < o.ntarget; i++) child_argv[k++] = o.target[i];
    child_argv[k] = NULL;

    /* Fail on an unwritable report path now, not after a long run (a file we created for the
     * check is removed again: a run that never starts leaves no empty report behind). */
    if (o.json_path) {
        int existed = access(o.json_path, F_OK) == 0;
        int fd = open(o.json_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0) {
            asc_cli_error("cannot write the JSON report to '%s': %s", o.json_path, strerror(errno));
            free(child_argv);
            return ASC_EXIT_USAGE;
        }
        close(fd);
        if (!existed) unlink(o.json_path);
    }
    /* The same for --trace; the agent writes it at the end (a file we created is removed again). */
    if (o.trace_path[0]) {
        int existed = access(o.trace_path, F_OK) == 0;
        int fd = open(o.trace_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0) {
            asc_cli_error("cannot write the trace to '%s': %s", o.trace_path, strerror(errno));
            free(child_argv);
            return ASC_EXIT_USAGE;
        }
        close(fd);
        if (!existed) unlink(o.trace_path);
    }

    char home[PATH_MAX];
    if (find_agent_home(home, sizeof home) < 0) {
        asc_cli_error("the agent package is not found next to %s (build it with `ninja -C build`, or set AIOSCOPE_HOME)",
                      asc_cli_exe_dir());
        free(child_argv);
        return ASC_EXIT_USAGE;
    }
    const char *tmpdir = getenv("TMPDIR");
    char events[PATH_MAX];
    snprintf(events, sizeof events, "%s/aioscope-events-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int efd = mkstemp(events);
    if (efd < 0) {
        snprintf(events, sizeof events, "/tmp/aioscope-events-XXXXXX");
        efd = mkstemp(events);
    }
    if (efd < 0) {
        asc_cli_error("cannot create a temporary file for the agent's events: %s", strerror(errno));
        free(child_argv);
        return ASC_EXIT_USAGE;
    }
    close(efd);
    char *user_vars = aioscope_var_names(NULL);
    if (!user_vars || setup_env(home, events, &o) < 0) {
        free(user_vars);
        asc_cli_error("out of memory");
        unlink(events);
        free(child_argv);
        return ASC_EXIT_USAGE;
    }

    struct sigaction sa, old_int, old_term, old_hup, old_quit, old_dump;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    sigaction(SIGQUIT, &sa, &old_quit);
    /* The dump signal sent to us is passed on too, so `kill -USR1 <aioscope run's pid>` works. */
    if (o.dump_signal) sigaction(o.dump_signal, &sa, &old_dump);

    int named = name_our_variables(user_vars);
    free(user_vars);
    if (named < 0) {
        asc_cli_error("out of memory");
        unlink(events);
        free(child_argv);
        return ASC_EXIT_USAGE;
    }

    fflush(NULL);
    int tty = foreground_tty();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* The program is in a process group of its own, so a kill of ours (kill -9, a CI
         * timeout) would not reach it and it would run on unseen: it dies with us. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 && getppid() != parent) _exit(128 + SIGKILL);
        /* Both sides set the group and the foreground, so neither order of running races. */
        setpgid(0, 0);
        if (tty >= 0) give_terminal(tty, getpid());
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGHUP, &old_hup, NULL);
        sigaction(SIGQUIT, &old_quit, NULL);
        if (o.dump_signal) sigaction(o.dump_signal, &old_dump, NULL);
        execv(program, child_argv);
        int e = errno;
        asc_cli_error("cannot execute %s: %s", program, strerror(e));
        _exit(127);
    }
    if (pid < 0) {
        asc_cli_error("cannot start the program: %s", strerror(errno));
        unlink(events);
        free(child_argv);
        return ASC_EXIT_USAGE;
    }
    setpgid(pid, pid);
    if (tty >= 0) give_terminal(tty, pid);
    child_pid = pid;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    child_pid = 0;
    if (tty >= 0) give_terminal(tty, getpgrp()); /* the report is ours to print */
    int exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;

    aioscope_report *r = aioscope_report_new();
    if (!r) {
        asc_cli_error("out of memory reading the report");
        unlink(events);
        free(child_argv);
        return exit_code;
    }
    aioscope_report_set_argv(r, o.ntarget, (const char *const *)o.target);
    r->exit_code = exit_code;
    char *fatal = read_events(events, r);
    unlink(events);
    free(child_argv);
    if (fatal) {
        asc_cli_error("%s", fatal);
        free(fatal);
        aioscope_report_free(r);
        return ASC_EXIT_USAGE;
    }
    /* The program's own argv as it saw it (the agent reports sys.argv) is kept for the JSON;
     * before the agent loads we only know what we ran. */
    int rc = exit_code;
    if (!r->agent_loaded && !(o.mode == 'c' && exit_code == 127))
        asc_cli_error("warning: the agent never loaded in this program, so nothing was checked "
                      "(is it a Python program? does it run with -I, -E or -S?)");
    if (o.json_path && write_json_report(o.json_path, r) < 0) rc = rc ? rc : ASC_EXIT_USAGE;
    if (!o.quiet && r->agent_loaded) {
        aioscope_text_options topt = {.color = isatty(2) && !getenv("NO_COLOR"), .show_stack = 0};
        fputc('\n', stderr);
        aioscope_report_write_text(r, stderr, &topt);
    }
    if (o.fail_on >= 0 && aioscope_report_count_at_least(r, (aioscope_severity)o.fail_on) > 0) {
        if (!o.quiet)
            asc_cli_error("failing: findings at level '%s' or above (--fail-on); the program exited with %d",
                          aioscope_severity_name((aioscope_severity)o.fail_on), exit_code);
        rc = ASC_EXIT_FAIL_ON;
    }
    /* --on-deadlock exit: the agent ended the program right after reporting the deadlock. */
    for (size_t i = 0; o.on_deadlock_exit && i < r->nfindings; i++)
        if (r->findings[i].kind && strcmp(r->findings[i].kind, "deadlock") == 0) rc = ASC_EXIT_DEADLOCK;
    aioscope_report_free(r);
    return rc;
}
