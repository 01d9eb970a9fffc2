#!/usr/bin/python3
"""maxrss.py FILE COMMAND [ARGS...]: runs COMMAND, writes its peak resident
set size in KiB (getrusage of the child, ru_maxrss) to FILE, and exits with
its exit code (128+N if killed by signal N). For tests that bound memory by
comparing two runs side by side, without GNU time."""
import os
import subprocess
import sys

proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d\n" % usage.ru_maxrss)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
