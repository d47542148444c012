/* The subcommands of `aioscope`: each takes its own argv (argv[0] is the subcommand's name) and
 * returns the process exit status. Exit statuses shared by every subcommand: */
#ifndef AIOSCOPE_CLI_COMMANDS_H
#define AIOSCOPE_CLI_COMMANDS_H

#define ASC_EXIT_USAGE 2 /* bad arguments or aioscope's own error, before anything ran */

int asc_cmd_run(int argc, char **argv);
int asc_cmd_top(int argc, char **argv); /* cmd_top.c */
int asc_cmd_report(int argc, char **argv);

/* Print "aioscope: <what>" on stderr, as one line; every user-facing error goes through it. */
void asc_cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The directory holding the aioscope executable (resolved through /proc/self/exe); "" if unknown. */
const char *asc_cli_exe_dir(void);

#endif
