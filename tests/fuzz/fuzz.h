/*
 * fuzz.h: what every fuzz target in tests/fuzz/ shares (tests/fuzz/README.md).
 *
 * A target is one file fuzz_NAME.c defining LLVMFuzzerTestOneInput (and,
 * if it needs set-up once, LLVMFuzzerInitialize), registered with one line
 * gs_fuzz_target(NAME LIBS...) in tests/fuzz.cmake. Built with -DFUZZ=ON
 * (clang) it is a libFuzzer binary; otherwise replay.c supplies main() and
 * replays the seed corpus tests/fuzz/corpus/NAME/, so every crash input once
 * found stays a regression test of the normal builds.
 *
 * Targets must not leak, must not keep state between inputs (libFuzzer
 * runs millions in one process) and check what they can with FUZZ_CHECK:
 * an invariant broken is a finding too, not only a crash.
 */
#ifndef GS_FUZZ_H
#define GS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Aborts (a finding) when an invariant of the code under test is broken.
 * The message goes to standard output: fuzz runs close the standard error
 * of the code under test (-close_fd_mask=2, its diagnostics are not
 * findings), while libFuzzer and the sanitizers keep their own copy. */
#define FUZZ_CHECK(cond)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            printf("%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);                              \
            fflush(stdout);                                                                                  \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

#endif
