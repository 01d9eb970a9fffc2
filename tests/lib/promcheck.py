#!/usr/bin/python3
"""promcheck.py FILE [--before FILE] [--documented DOC] [--get SERIES...]

A strict reader of the Prometheus text exposition format 0.0.4, as a
scraper must be able to take /metrics: every line a comment, a HELP or TYPE
line, or a sample; HELP and TYPE at most once per family and TYPE before
its samples; a family's lines together; metric and label names as the
format allows them, label values with only the escapes it knows (\\\\ \\"
\\n); no series twice; histogram buckets cumulative in `le` with a +Inf
bucket equal to _count; counters not negative. Exit 1 with one line per
fault (stderr).

--before FILE: an earlier scrape of the same process; no counter (nor a
histogram's buckets, _count or _sum) may be lower now.
--documented DOC: the metric names DOC's "GET /metrics" section names
(`groupsrv_...`) must be exactly the families exposed.
--get SERIES: prints each series' value (0 when absent), one per line,
e.g. 'groupsrv_requests_total{endpoint="unwrap",status="200"}' (labels in
the order the server writes them).
"""
import math
import re
import sys

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE = re.compile(r"^(%s)(\{(.*)\})? ([^ ]+)( -?[0-9]+)?$" % NAME)
LABEL_PAIR = re.compile(r'(%s)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)' % LABEL)
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def value(text):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text):
        raise ValueError(text)
    return float(text)


def labels(text):
    out, pos = [], 0
    while pos < len(text):
        m = LABEL_PAIR.match(text, pos)
        if not m:
            raise ValueError("bad label list {%s}" % text)
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    if len({k for k, _ in out}) != len(out):
        raise ValueError("label repeated in {%s}" % text)
    return tuple(out)


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and types.get(base) in ("histogram", "summary"):
            return base
    return name


def parse(path, faults):
    types, helps, series, done, order = {}, {}, {}, set(), []
    current = None
    for n, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        where = "%s:%d" % (path, n)
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                fam = parts[2]
                if not re.fullmatch(NAME, fam):
                    faults.append("%s: bad metric name %r" % (where, fam))
                if fam != current and fam in done:
                    faults.append("%s: family %s resumed after other families" % (where, fam))
                if current is not None and fam != current:
                    done.add(current)
                current = fam
                seen = helps if parts[1] == "HELP" else types
                if fam in seen:
                    faults.append("%s: second %s line for %s" % (where, parts[1], fam))
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3] not in TYPES:
                        faults.append("%s: bad TYPE line %r" % (where, line))
                    if any(family_of(s[0], {fam: parts[3] if len(parts) == 4 else ""}) == fam for s in series):
                        faults.append("%s: TYPE of %s after its samples" % (where, fam))
                    types[fam] = parts[3] if len(parts) == 4 else "?"
                else:
                    helps[fam] = parts[3] if len(parts) == 4 else ""
            continue
        m = SAMPLE.match(line)
        if not m:
            faults.append("%s: not a sample line %r" % (where, line))
            continue
        name = m.group(1)
        try:
            lab = labels(m.group(3) or "")
            val = value(m.group(4))
        except ValueError as e:
            faults.append("%s: %s" % (where, e))
            continue
        fam = family_of(name, types)
        if fam != current:
            if fam in done:
                faults.append("%s: family %s resumed after other families" % (where, fam))
            if current is not None:
                done.add(current)
            current = fam
        key = (name, lab)
        if key in series:
            faults.append("%s: series %s%s twice" % (where, name, dict(lab)))
        series[key] = val
        order.append(key)
        if types.get(fam) == "counter" and not val >= 0:
            faults.append("%s: counter %s is %s" % (where, name, m.group(4)))
    for fam, kind in types.items():
        if kind != "histogram":
            continue
        groups = {}
        for (name, lab), val in series.items():
            if name == fam + "_bucket":
                rest = tuple(p for p in lab if p[0] != "le")
                le = [v for k, v in lab if k == "le"]
                if len(le) != 1:
                    faults.append("%s: bucket of %s without le" % (path, fam))
                    continue
                groups.setdefault(rest, []).append((value(le[0]), val))
        for rest, buckets in groups.items():
            buckets.sort()
            for (le1, v1), (le2, v2) in zip(buckets, buckets[1:]):
                if v2 < v1:
                    faults.append("%s: %s buckets not cumulative: le=%g has %g, le=%g has %g"
                                  % (path, fam, le1, v1, le2, v2))
            count = series.get((fam + "_count", rest))
            if buckets[-1][0] != math.inf:
                faults.append("%s: %s has no +Inf bucket" % (path, fam))
            elif count is None or count != buckets[-1][1]:
                faults.append("%s: %s +Inf bucket %g is not _count %s" % (path, fam, buckets[-1][1], count))
            if (fam + "_sum", rest) not in series:
                faults.append("%s: %s has no _sum" % (path, fam))
    return types, series


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    path, before, doc, gets = args[0], None, None, []
    i = 1
    while i < len(args):
        if args[i] == "--before":
            before, i = args[i + 1], i + 2
        elif args[i] == "--documented":
            doc, i = args[i + 1], i + 2
        elif args[i] == "--get":
            gets, i = args[i + 1:], len(args)
        else:
            sys.exit("promcheck: unknown argument " + args[i])
    faults = []
    types, series = parse(path, faults)
    if before is not None:
        btypes, bseries = parse(before, faults)
        for (name, lab), old in bseries.items():
            fam = family_of(name, btypes)
            if btypes.get(fam) not in ("counter", "histogram"):
                continue
            new = series.get((name, lab), 0.0)
            if new < old:
                faults.append("%s%s went down from %g to %g" % (name, dict(lab), old, new))
    if doc is not None:
        text = open(doc, encoding="utf-8").read()
        m = re.search(r"^### GET /metrics.*?(?=^### )", text, re.S | re.M)
        named = set(re.findall(r"`(groupsrv_[a-z0-9_]+)", m.group(0) if m else ""))
        exposed = set(types)
        for fam in sorted(exposed - named):
            faults.append("%s: exposed but not documented in %s" % (fam, doc))
        for fam in sorted(named - exposed):
            faults.append("%s: documented in %s but not exposed" % (fam, doc))
    for fault in faults:
        print("promcheck: " + fault, file=sys.stderr)
    for g in gets:
        m = re.fullmatch(r"(%s)(\{(.*)\})?" % NAME, g)
        print("%g" % series.get((m.group(1), labels(m.group(3) or "")), 0.0))
    sys.exit(1 if faults else 0)


if __name__ == "__main__":
    main()
