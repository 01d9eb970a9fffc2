/*
 * replay.c: main() of a fuzz target outside libFuzzer. Replays every file
 * given, or every file of the directories given (the seed corpus and the
 * regression inputs in tests/fuzz/corpus/NAME/), through
 * LLVMFuzzerTestOneInput, once each. An empty corpus fails: a replay that
 * replays nothing would pass without testing anything.
 *
 * When an input crashes, the name of the file is printed (from a signal
 * handler, or from the sanitizer's death callback in sanitizer builds,
 * whose own handlers must stay in place; they leave SIGABRT alone, which
 * FUZZ_CHECK raises, so that one is ours there too) so the failing ctest
 * names it.
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define REPLAY_SANITIZED 1
#endif

/* Optional in a target: the weak reference is NULL when it has none. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

#define REPLAY_MAX_INPUT (4u << 20)

static char current[4096];

static void say_current(void)
{
    static const char pre[] = "replay: crashed on input ";
    size_t n = strnlen(current, sizeof(current));
    /* async-signal-safe: write(2) only */
    if (write(STDERR_FILENO, pre, sizeof(pre) - 1) < 0 || write(STDERR_FILENO, current, n) < 0 ||
        write(STDERR_FILENO, "\n", 1) < 0)
        return;
}

static void on_crash(int sig)
{
    say_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* on_crash for sig, unless something (a sanitizer) already handles it. */
static void catch_unhandled(int sig)
{
    struct sigaction old;
    if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_DFL && !(old.sa_flags & SA_SIGINFO))
        signal(sig, on_crash);
}

static int replay_file(const char *path)
{
    unsigned char *buf = NULL;
    size_t len = 0;

    if (util_read_file(path, REPLAY_MAX_INPUT, &buf, &len) != UTIL_OK) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    snprintf(current, sizeof(current), "%s", path);
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

/* Every regular file of dir (not recursive, dot files skipped). */
static int replay_dir(const char *dir, long *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int rc = 0;

    if (d == NULL) {
        fprintf(stderr, "replay: cannot open %s\n", dir);
        return -1;
    }
    while (rc == 0 && (e = readdir(d)) != NULL) {
        char path[4096];
        int k;
        if (e->d_name[0] == '.')
            continue;
        k = snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (k < 0 || (size_t)k >= sizeof(path) || replay_file(path) != 0)
            rc = -1;
        else
            (*n)++;
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    long n = 0;

#ifdef REPLAY_SANITIZED
    __sanitizer_set_death_callback(say_current);
#endif
    catch_unhandled(SIGSEGV);
    catch_unhandled(SIGBUS);
    catch_unhandled(SIGABRT);
    catch_unhandled(SIGFPE);
    if (LLVMFuzzerInitialize != NULL && LLVMFuzzerInitialize(&argc, &argv) != 0)
        return 1;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "%s: no such file or directory: %s\n", prog, argv[i]);
            return 1;
        }
        if (S_ISDIR(st.st_mode) ? replay_dir(argv[i], &n) != 0 : replay_file(argv[i]) != 0)
            return 1;
        if (!S_ISDIR(st.st_mode))
            n++;
    }
    printf("%s: replayed %ld inputs\n", prog, n);
    return n > 0 ? 0 : 1;
}
