#!/usr/bin/python3
"""release-compile.py BUILD_DIR SRC...: compiles each SRC again as a
Release build (-DCMAKE_BUILD_TYPE=Release: -O3 -DNDEBUG) would, with the
flags the build in BUILD_DIR gave it (its compile_commands.json), to
/dev/null; fails if any does not compile.

Why: the tests and CI build RelWithDebInfo (-O2) and Debug, but the
benchmarks (docs/performance.md, bench/kh-compare --build build-rel) are
run from a Release tree, and GCC warns about more at -O3, where inlining
reaches further (-Wstringop-overread in tests/p11fault/p11fault.c broke
every Release build under -Werror while CI passed). The whole tree at -O3
costs about 32 s of CPU on the CI machine; the sources named here are the
ones that broke, at about 0.6 s.
"""
import json
import os
import shlex
import subprocess
import sys

DROP_PREFIX = ("-O", "-g", "-fsanitize", "-fno-sanitize", "-fsanitize-recover")


def release_args(argv):
    """argv of one compile with Release's optimisation in place of the
    build's, no sanitizer or coverage flags, and the object to /dev/null."""
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o":
            out += ["-o", os.devnull]
            i += 2
            continue
        if a.startswith(DROP_PREFIX) or a in ("-DNDEBUG", "--coverage"):
            i += 1
            continue
        out.append(a)
        i += 1
    # After the compiler itself, before everything else.
    return out[:1] + ["-O3", "-DNDEBUG"] + out[1:]


def main():
    if len(sys.argv) < 3:
        print("usage: release-compile.py BUILD_DIR SRC...", file=sys.stderr)
        return 2
    bdir = sys.argv[1]
    with open(os.path.join(bdir, "compile_commands.json")) as f:
        db = json.load(f)
    failed = 0
    for src in sys.argv[2:]:
        src = os.path.realpath(src)
        entries = [e for e in db if os.path.realpath(os.path.join(e["directory"], e["file"])) == src]
        if not entries:
            print("release-compile: %s is not in %s/compile_commands.json" % (src, bdir), file=sys.stderr)
            failed += 1
            continue
        e = entries[0]
        argv = e["arguments"] if "arguments" in e else shlex.split(e["command"])
        argv = release_args(argv)
        r = subprocess.run(argv, cwd=e["directory"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        if r.returncode != 0:
            print("release-compile: %s does not compile as a Release build would:\n  %s\n%s"
                  % (src, " ".join(shlex.quote(a) for a in argv), r.stdout), file=sys.stderr)
            failed += 1
        else:
            print("release-compile: %s: ok at -O3" % src)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
