#!/usr/bin/env python3
"""memscan.py PID (--file PATH | STRING): prints how many times the bytes
(a file's contents without trailing whitespace, or STRING) occur in the
readable memory of process PID (/proc/PID/mem; as root, also for a process
that is not dumpable). Tests use it to show a secret is, or is not, in a
process (the PIN, a database password)."""
import re
import sys

pid = sys.argv[1]
if sys.argv[2] == "--file":
    needle = open(sys.argv[3], "rb").read().strip()
else:
    needle = sys.argv[2].encode()
found, chunk = 0, 1 << 24
with open("/proc/%s/maps" % pid) as maps, open("/proc/%s/mem" % pid, "rb", 0) as mem:
    for line in maps:
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
        lo, hi, perm = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        # Sanitizer shadow memory is reserved by the terabyte: no heap there.
        if "r" not in perm or "[vvar]" in line or "[vsyscall]" in line or hi - lo > (1 << 32):
            continue
        tail = b""
        for at in range(lo, hi, chunk):
            try:
                mem.seek(at)
                data = mem.read(min(chunk, hi - at))
            except OSError:
                break
            found += (tail + data).count(needle)
            tail = data[-(len(needle) - 1):]
print(found)
