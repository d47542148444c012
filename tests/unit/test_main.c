/* Runs every registered test in a forked child with a 20 s timeout, prints one line per test
 * and a closing "N passed, N failed" line. An argument selects tests whose name contains it. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define MAX_TESTS 1024

static struct {
    const char *name, *file;
    test_fn fn;
} tests[MAX_TESTS];
static int ntests;

void test_register(const char *name, const char *file, test_fn fn) {
    if (ntests < MAX_TESTS) {
        tests[ntests].name = name;
        tests[ntests].file = file;
        tests[ntests].fn = fn;
        ntests++;
    }
}

int main(int argc, char **argv) {
    int passed = 0, failed = 0;
    for (int i = 0; i < ntests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            tests[i].fn();
            exit(0);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) < 0) status = 1 << 8;
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok) {
            passed++;
            printf("ok   %s\n", tests[i].name);
        } else {
            failed++;
            if (WIFSIGNALED(status))
                printf("FAIL %s (%s: signal %d%s)\n", tests[i].name, tests[i].file,
                       WTERMSIG(status), WTERMSIG(status) == SIGALRM ? ", timeout" : "");
            else
                printf("FAIL %s (%s)\n", tests[i].name, tests[i].file);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
