import csv, statistics, sys
from collections import defaultdict
order = ["kj","rb","rbr","cse","cs","gg","mg","mr","rt","re","hd","di","dr","hr","aw","ar","ie","ier","jr","wd","lc","wb","wbr","sys_enter_fdatasync","sys_exit_fdatasync","kw"]
runs = defaultdict(list)
for row in csv.DictReader(open(sys.argv[1])):
    runs[(row["who"], row["round"])].append((float(row["time"]), row["event"]))
off = defaultdict(lambda: defaultdict(list))
for (who, rnd), ev in runs.items():
    cycles, cur = [], None
    for t, e in sorted(ev):
        e = e.replace("__return", "")
        if e == "kj":
            if cur and "kw" in cur and "di" in cur: cycles.append(cur)
            cur = {"kj": t}
        elif cur is not None and e not in cur:
            cur[e] = t
    print(who, rnd, "cycles", len(cycles), file=sys.stderr)
    for e in order:
        v = [(c[e]-c["kj"])*1e6 for c in cycles if e in c]
        if v: off[who][e].append(statistics.median(v))
whos = sorted(off)
print("event: median offset from kh_job_run (us) (+ since the previous event), per build: " + " ".join(whos))
prev = {w: 0.0 for w in whos}
for e in order:
    cells = []
    for w in whos:
        if off[w][e]:
            m = statistics.median(off[w][e]); cells.append(f"{m:8.1f} (+{m-prev[w]:6.1f})"); prev[w] = m
        else: cells.append(" " * 19)
    print(f"{e:22s} " + "  ".join(cells))
