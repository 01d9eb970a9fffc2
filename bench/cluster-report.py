#!/usr/bin/env python3
"""cluster-report.py OUT MODEL_US ENGINES: the tables of `bench/run --part
cluster` (bench/lib-cluster.sh) as Markdown, from OUT/cluster.csv,
OUT/removal.csv and OUT/machine.txt. Medians over the rounds, with the range
when there was more than one."""
import csv
import statistics
import sys


def rows(path):
    with open(path) as f:
        return [r for r in csv.DictReader(f) if not r["tool"].startswith("#")]


def med(vals):
    return statistics.median(vals) if vals else float("nan")


def fmt_range(vals, spec="%.0f"):
    if len(vals) < 2:
        return spec % med(vals)
    return (spec + " (" + spec + "–" + spec + ")") % (med(vals), min(vals), max(vals))


def main():
    out, model_us, engines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = rows(out + "/cluster.csv")
    machine = dict(l.rstrip("\n").split("=", 1) for l in open(out + "/machine.txt") if "=" in l)
    by = {}
    for r in data:
        by.setdefault(r["variant"], []).append(r)
    rate = lambda v: [float(r["ops_per_s"]) for r in by.get(v, [])]
    p50 = lambda v: [float(r["p50_ms"]) for r in by.get(v, [])]
    errs = lambda v: sum(int(r["errors"]) for r in by.get(v, []))
    alone = med(rate("alone"))
    limit = engines * 1e6 / model_us
    w = print
    w("Token model: each instance loads tests/p11fault in front of its own SoftHSM token, "
      "%d engines x %d ms per private-key operation (limit %.0f unwraps/s per instance); "
      "RSA-2048 group key, deliver=tls, keep-alive connections (3 per engine and instance). "
      "Medians of %s rounds of %s s (range in brackets)." % (engines, model_us // 1000, limit,
                                                                 machine.get("rounds", "?"),
                                                                 machine.get("duration_s", "?")))
    w("")
    w("Machine: %s, %s cores; %s; load average (1, 5, 15 min) %s at the start, %s at the end; "
      "git %s; %s." % (machine.get("cpu", "?"), machine.get("cores", "?"), machine.get("os", "?"),
                      machine.get("loadavg_at_start", "?"), machine.get("loadavg_at_end", "?"),
                      machine.get("git", "?"), machine.get("date_utc", "?")))
    w("")
    w("| setup | connections | unwraps/s | ratio to N x alone | p50 ms | errors |")
    w("|---|---:|---:|---:|---:|---:|")
    conc = lambda v: by[v][0]["conc"] if v in by else "?"
    w("| one instance alone (no HAProxy) | %s | %s | 1.00 | %.1f | %d |" % (conc("alone"), fmt_range(rate("alone")),
                                                                           med(p50("alone")), errs("alone")))
    for n in (1, 2, 3):
        v = "haproxy-%d" % n
        if v not in by:
            continue
        ratios = [x / (n * alone) for x in rate(v)]
        w("| %d instance%s behind HAProxy | %s | %s | %s | %.1f | %d |" % (
            n, "s" if n > 1 else "", conc(v), fmt_range(rate(v)), fmt_range(ratios, "%.2f"), med(p50(v)), errs(v)))
    w("")
    w("The shared store's cost, one instance on plain SoftHSM (the CPU is the limit), keep-alive:")
    w("")
    w("| store | connections | unwraps/s | p50 ms | errors |")
    w("|---|---:|---:|---:|---:|")
    for c in ("1", "8"):
        for v, name in (("store-sqlite", "SQLite file + audit file (fdatasync)"),
                        ("store-postgresql", "PostgreSQL + audit table (synchronous commit)")):
            rs = [r for r in by.get(v, []) if r["conc"] == c]
            if rs:
                w("| %s | %s | %s | %.2f | %d |" % (name, c, fmt_range([float(r["ops_per_s"]) for r in rs]),
                                                    med([float(r["p50_ms"]) for r in rs]),
                                                    sum(int(r["errors"]) for r in rs)))
    w("")
    rem = list(csv.DictReader(open(out + "/removal.csv")))
    w("Removal visibility: a member removed through gs-a's admin API, then an unwrap on the member's "
      "kept-alive connections at gs-b, gs-c and through HAProxy, in that order "
      "(%d removals; time from the removal's answer to the refusal, including the refused request "
      "and those before it in the order):" % len({r["round"] for r in rem}))
    w("")
    w("| where | first unwrap after the removal | ms after the removal's answer, median (range) |")
    w("|---|---|---:|")
    for where in ("gs-b", "gs-c", "haproxy"):
        rs = [r for r in rem if r["url"] == where]
        if not rs:
            continue
        firsts = {r["first_status"] for r in rs}
        ms = [float(r["ms_after_removal"]) for r in rs if r["ms_after_removal"] not in ("None", "")]
        w("| %s | %s | %s |" % (where, "refused (403) every time" if firsts == {"403"} else "statuses %s" % firsts,
                                fmt_range(ms, "%.1f")))


if __name__ == "__main__":
    main()
