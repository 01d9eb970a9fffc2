#!/usr/bin/env python3
"""opens-of.py PATH -- COMMAND...: how many times PATH was opened (by any
process) while COMMAND ran. An inotify IN_OPEN watch on PATH (the watch
itself opens nothing, so a FIFO at PATH is not disturbed), armed before
COMMAND starts; events are queued when the open happens, so all of them are
counted once COMMAND has waited for what it needs. Prints the count; exits
with COMMAND's status if that failed, 2 if the watch cannot be set."""
import ctypes
import os
import struct
import subprocess
import sys

IN_OPEN = 0x20


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    ifd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if ifd < 0 or libc.inotify_add_watch(ifd, os.fsencode(sys.argv[1]), IN_OPEN) < 0:
        print("opens-of: inotify: %s" % os.strerror(ctypes.get_errno()), file=sys.stderr)
        return 2
    rc = subprocess.call(sys.argv[3:])
    opens = 0
    while True:
        try:
            buf = os.read(ifd, 65536)
        except BlockingIOError:
            break
        off = 0
        while off + 16 <= len(buf):
            _, mask, _, namelen = struct.unpack_from("iIII", buf, off)
            opens += 1 if mask & IN_OPEN else 0
            off += 16 + namelen
    print(opens)
    return rc


sys.exit(main())
