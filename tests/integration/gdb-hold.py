# Holds one thread of a running process at a breakpoint while its other
# threads run on, until a file appears; then detaches. Used by
# server-keyholder.sh's hold_answer: a key-holder worker held between
# taking its job's link and sending on it.
#
#   HOLD_PID=PID HOLD_BP=LOCATION [HOLD_COND=EXPR] HOLD_GO=FILE \
#     gdb -batch -nx -q -x gdb-hold.py
#
# Prints ATTACHED once the breakpoint is set, HIT once a thread stopped
# at it. gdb's non-stop mode stops only the thread that hits; the other
# threads keep serving. (The all-stop way, a `call usleep()` loop that
# lets the other threads run while the held one sleeps in a called
# function, fails on CPUs with AMX state: gdb 13 "Couldn't write
# extended state status" when it sets up the call.)
import os
import time

import gdb

gdb.execute("set non-stop on")
gdb.execute("set pagination off")
gdb.execute("attach " + os.environ["HOLD_PID"])
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
while not os.path.exists(os.environ["HOLD_GO"]):
    time.sleep(0.05)
gdb.execute("detach")
