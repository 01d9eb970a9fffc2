# Holds one thread of a running process at a breakpoint while its other
# threads run on, until a file appears; then detaches. Used by
# server-keyholder.sh's hold_answer: a key-holder worker held between
# taking its job's link and sending on it.
#
#   HOLD_PID=PID HOLD_BP=LOCATION [HOLD_COND=EXPR] HOLD_GO=FILE \
#     [HOLD_TIMEOUT=SECONDS] gdb -batch -nx -q -x gdb-hold.py
#
# Prints ATTACHED once the breakpoint is set, HIT once a thread stopped
# at it. gdb's non-stop mode stops only the thread that hits; the other
# threads keep serving. (The all-stop way, a `call usleep()` loop that
# lets the other threads run while the held one sleeps in a called
# function, fails on CPUs with AMX state: gdb 13 "Couldn't write
# extended state status" when it sets up the call.)
#
# The wait for FILE ends, and gdb with it, also when the process is gone
# (a failed test's clean-up stopped it: gdb polled for ever for a file in
# a directory already removed) or after HOLD_TIMEOUT seconds (default
# 120: detached, the thread released; exit status 3). A breakpoint never
# hit is the caller's to end: SIGTERM makes gdb detach and exit.
import os
import time

import gdb

pid = int(os.environ["HOLD_PID"])


def gone():
    """The process has ended (no /proc entry, or a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


gdb.execute("set non-stop on")
gdb.execute("set pagination off")
gdb.execute("attach %d" % pid)
bp = gdb.Breakpoint(os.environ["HOLD_BP"], temporary=True)
if os.environ.get("HOLD_COND"):
    bp.condition = os.environ["HOLD_COND"]
hit = []
gdb.events.stop.connect(lambda ev: hit.append(1) if isinstance(ev, gdb.BreakpointEvent) else None)
print("ATTACHED", flush=True)
# After the attach every thread is stopped and their stop events come one
# by one: each `continue -a` resumes what is stopped and returns at the
# next stop, until the one at the breakpoint.
while not hit:
    gdb.execute("continue -a")
print("HIT", flush=True)
deadline = time.monotonic() + float(os.environ.get("HOLD_TIMEOUT", "120"))
while not os.path.exists(os.environ["HOLD_GO"]):
    if gone():
        # Nothing to detach from (gdb's own detach asserts on a process
        # whose threads are gone): leave at once.
        print("GONE", flush=True)
        os._exit(3)
    if time.monotonic() > deadline:
        print("TIMEOUT", flush=True)
        gdb.execute("detach")
        os._exit(3)
    time.sleep(0.05)
gdb.execute("detach")
