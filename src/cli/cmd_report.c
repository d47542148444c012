/* `aioscope report FILE.json [--html OUT]`: show a saved JSON report again.
 *
 * A report saved by `aioscope run --json FILE` (or install(json=...)) is read back with the core's
 * JSON reader and printed as the same text report `run` prints, on stdout here (it is this
 * command's output, not a program's), or written as one self-contained HTML page. FILE may be
 * "-" for stdin, so reports can be piped from CI artifacts.
 *
 * Exit status: 0 when the report was shown; 1 when --fail-on LEVEL was given and the report has a
 * finding at or above LEVEL (so CI can gate on a saved report); 2 when the file cannot be read or
 * is not a report, or for bad arguments. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aioscope/error.h"
#include "aioscope/report.h"
#include "cli/commands.h"

/* A saved report is a few kilobytes to a few megabytes; anything past this is not one of ours
 * and is refused rather than read into memory. */
#define MAX_REPORT_BYTES (256u << 20)

#define ASC_EXIT_REPORT_FAIL_ON 1

static const char report_usage[] =
    "usage: aioscope report [options] FILE.json\n"
    "\n"
    "Show a JSON report saved by `aioscope run --json FILE` as the text report (on stdout), or\n"
    "write it as one self-contained HTML page that works offline. FILE may be - for stdin.\n"
    "\n"
    "options:\n"
    "  --html OUT          write the HTML page to OUT instead of printing the text report\n"
    "  --stack             show each finding's full stack in the text report\n"
    "  --context N         source lines shown around each site in the HTML page (default 2)\n"
    "  --color WHEN        colour the text report: auto (a terminal, no NO_COLOR), always, never\n"
    "  --fail-on LEVEL     exit with status 1 if the report has a finding at LEVEL or above\n"
    "  -h, --help          show this help\n"
    "\n"
    "exit status: 0; 1 when --fail-on trips; 2 when FILE is unreadable or not a report.\n";

/* Reads all of f into a malloc'd buffer. 0, or a negative code with *out NULL. */
static int read_all(FILE *f, char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    *out = NULL;
    if (!buf) return AIOSCOPE_ENOMEM;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_REPORT_BYTES) {
                free(buf);
                return AIOSCOPE_ELIMIT;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return AIOSCOPE_ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        return AIOSCOPE_EIO;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int load_report(const char *path, aioscope_report **out) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        asc_cli_error("cannot read '%s': %s", path, strerror(errno));
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = read_all(f, &text, &len);
    if (f != stdin) fclose(f);
    if (rc < 0) {
        asc_cli_error("cannot read '%s': %s", path,
                      rc == AIOSCOPE_ELIMIT ? "larger than 256 MiB, not a report" : aioscope_strerror(rc));
        return -1;
    }
    rc = aioscope_report_from_json(text, len, out);
    free(text);
    if (rc < 0) {
        asc_cli_error("'%s' is not an aioscope JSON report (%s)", path, aioscope_strerror(rc));
        return -1;
    }
    return 0;
}

static int write_html(const char *path, const aioscope_report *r, int context) {
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    if (!f) {
        asc_cli_error("cannot write '%s': %s", path, strerror(errno));
        return -1;
    }
    aioscope_html_options hopt = {.context_lines = context};
    int rc = aioscope_report_write_html(r, f, &hopt);
    if (f == stdout) {
        if (fflush(f) != 0 && rc == 0) rc = AIOSCOPE_EIO;
    } else if (fclose(f) != 0 && rc == 0) {
        rc = AIOSCOPE_EIO;
    }
    if (rc < 0) {
        asc_cli_error("cannot write '%s': %s", path, aioscope_strerror(rc));
        return -1;
    }
    return 0;
}

int asc_cmd_report(int argc, char **argv) {
    enum { OPT_HTML = 1000, OPT_STACK, OPT_CONTEXT, OPT_COLOR, OPT_FAIL_ON };
    static const struct option longopts[] = {
        {"html", required_argument, NULL, OPT_HTML},
        {"stack", no_argument, NULL, OPT_STACK},
        {"context", required_argument, NULL, OPT_CONTEXT},
        {"color", required_argument, NULL, OPT_COLOR},
        {"fail-on", required_argument, NULL, OPT_FAIL_ON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *html = NULL;
    int show_stack = 0, context = -1, color = -1, fail_on = -1;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(report_usage, stdout); return 0;
        case OPT_HTML: html = optarg; break;
        case OPT_STACK: show_stack = 1; break;
        case OPT_CONTEXT: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 0 || v > 20) {
                asc_cli_error("--context takes a number of lines from 0 to 20, not '%s'", optarg);
                return ASC_EXIT_USAGE;
            }
            context = (int)v;
            break;
        }
        case OPT_COLOR:
            if (strcmp(optarg, "auto") == 0) color = -1;
            else if (strcmp(optarg, "always") == 0) color = 1;
            else if (strcmp(optarg, "never") == 0) color = 0;
            else {
                asc_cli_error("--color takes auto, always or never, not '%s'", optarg);
                return ASC_EXIT_USAGE;
            }
            break;
        case OPT_FAIL_ON: {
            aioscope_severity sev;
            if (aioscope_severity_parse(optarg, &sev) < 0) {
                asc_cli_error("--fail-on takes error, warning or info, not '%s'", optarg);
                return ASC_EXIT_USAGE;
            }
            fail_on = (int)sev;
            break;
        }
        default:
            asc_cli_error("unknown option '%s' (see `aioscope report --help`)", argv[optind - 1]);
            return ASC_EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        asc_cli_error(argc - optind == 0 ? "which report? (aioscope report FILE.json)"
                                         : "one report at a time (aioscope report FILE.json)");
        return ASC_EXIT_USAGE;
    }
    aioscope_report *r = NULL;
    if (load_report(argv[optind], &r) < 0) return ASC_EXIT_USAGE;

    int rc = 0;
    if (html) {
        if (write_html(html, r, context) < 0) rc = ASC_EXIT_USAGE;
    } else {
        if (color < 0) color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
        aioscope_text_options topt = {.color = color, .show_stack = show_stack};
        if (aioscope_report_write_text(r, stdout, &topt) < 0 || fflush(stdout) != 0) {
            asc_cli_error("cannot write the report: %s", strerror(errno));
            rc = ASC_EXIT_USAGE;
        }
    }
    if (rc == 0 && fail_on >= 0 && aioscope_report_count_at_least(r, (aioscope_severity)fail_on) > 0)
        rc = ASC_EXIT_REPORT_FAIL_ON;
    aioscope_report_free(r);
    return rc;
}
