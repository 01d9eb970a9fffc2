#!/usr/bin/python3
"""logcheck.py FILE [FORBIDDEN-KEY...]

Reads a diagnostic log (common/log.c's lines, docs/operations.md "Logs and
the audit log") as a log shipper would: every line must be one record, the
time and then key=value fields only (a value either without spaces and
quotes, or in double quotes with \\" and \\\\ escaped), with exactly one
level= and none of the FORBIDDEN-KEYs (fields a hostile value would have
made). Prints each line that is not, and exits 1 if any.
"""
import re
import sys

FIELD = r' ([a-z_]+)=(?:"(?:[^"\\]|\\.)*"|[^ "]*)'


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    forbidden = set(sys.argv[2:])
    bad = 0
    for n, line in enumerate(open(sys.argv[1], encoding="latin-1"), 1):
        line = line.rstrip("\n")
        head, _, rest = line.partition(" ")
        rest = " " + rest
        keys = re.findall(FIELD, rest)
        if (not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z", head)
                or not re.fullmatch("(?:%s)*" % FIELD, rest)
                or keys.count("level") != 1 or forbidden & set(keys)):
            print("%s:%d: not one record of key=value fields: %s" % (sys.argv[1], n, line))
            bad = 1
    sys.exit(bad)


if __name__ == "__main__":
    main()
