#!/usr/bin/env python3
"""sent_after_removal.py LOG REMOVED_MS: a member's answers around their removal.

LOG is an `unwrapclient soak` log written with UC_SOAK_START=1 (END_MS
STATUS CODE REQUEST_ID RETRY_AFTER START_MONO_MS per request); REMOVED_MS
is time.monotonic() in milliseconds taken just after the removal (a
command, a REST DELETE) returned. Every request that started after it must
be 403 not_a_member, whatever the key holder's workers kept; before it,
200 or that 403 (the removal was under way). Exit 0 when so and there were
requests on both sides, 1 otherwise (the first offenders printed).
"""
import sys


def main():
    removed = float(sys.argv[2])
    before = after = 0
    bad = []
    for line in open(sys.argv[1]):
        end, status, code, rid, retry, start = line.split()
        refused = status == "403" and code == "not_a_member"
        if float(start) > removed:
            after += 1
            if not refused:
                bad.append(("sent after the removal", status, code, rid))
        elif status == "200":
            before += 1
        elif not refused:
            bad.append(("sent before the removal", status, code, rid))
    print("%d 200 sent before the removal returned, %d sent after it; unexpected %s" % (before, after, bad[:5]))
    return 0 if before > 0 and after > 0 and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
