/* What `aioscope ps`, `pstree` and `dump` share: their options, taking a snapshot of the target
 * (from its agent when it has one, else by reading its memory), the exit statuses, and the
 * printers for the table, the tree and the dump (snapshot_print.c). */
#ifndef ASC_CLI_SNAPSHOT_CLI_H
#define ASC_CLI_SNAPSHOT_CLI_H

#include <stdio.h>

#include "aioscope/json.h"
#include "aioscope/snapshot.h"

/* Exit statuses of ps / pstree / dump (documented in docs/attach.md). */
#define ASC_EXIT_SNAP_OK 0
#define ASC_EXIT_SNAP_USAGE 2      /* bad arguments (same as every subcommand) */
#define ASC_EXIT_SNAP_NOPROC 3     /* no such process */
#define ASC_EXIT_SNAP_PERM 4       /* not allowed to read the process */
#define ASC_EXIT_SNAP_NOTPY 5      /* not a Python process, or a Python version we cannot read */
#define ASC_EXIT_SNAP_UNREADABLE 6 /* the process's state could not be read consistently */

typedef struct {
    int pid;
    int attach;  /* --attach: read memory even when an agent is present */
    int json;    /* --json: print the snapshot model as JSON */
    int freeze;  /* --freeze: stop the target while reading it */
    int spawn;   /* --spawn (pstree): the spawn tree instead of the await tree */
} asc_snap_opts;

/* Parse `CMD PID [--attach] [--json] [--freeze]`. Returns 0, or an exit status after printing
 * the error (or the help, then 0 with *done set). */
int asc_snap_parse(int argc, char **argv, const char *usage, asc_snap_opts *o, int *done);
/* Take the snapshot; on failure prints one line saying what is wrong and what to do, and
 * returns the exit status. */
int asc_snap_take(const asc_snap_opts *o, aioscope_snapshot **out);
/* Prints the snapshot as JSON (aioscope_snapshot_to_json's text) and a newline on out
 * (snapshot_print.c); returns an exit status. */
int asc_snap_print_json(const aioscope_snapshot *s, FILE *out);

/* The three views. */
void asc_snap_print_header(const aioscope_snapshot *s, FILE *out);
void asc_snap_print_table(aioscope_snapshot *s, FILE *out);
void asc_snap_print_tree(aioscope_snapshot *s, FILE *out);
void asc_snap_print_dump(aioscope_snapshot *s, FILE *out);
/* Who created whom (snapshot_spawn.c; needs the agent's spawned_by). */
void asc_snap_print_spawn_tree(aioscope_snapshot *s, FILE *out);

int asc_cmd_ps(int argc, char **argv);
int asc_cmd_pstree(int argc, char **argv);
int asc_cmd_dump(int argc, char **argv);

#endif
