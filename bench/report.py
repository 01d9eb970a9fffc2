#!/usr/bin/python3
"""report.py RESULTS-DIR DOCS-DIR: turns one bench/run into the figures of
docs/performance.md and its plots.

Reads RESULTS-DIR/{machine.txt, results.csv, rss.csv, lat-groupsrv-*.csv,
exploder.csv, sizes.csv} (each optional except machine.txt), rewrites the
part of DOCS-DIR/performance.md between the markers
    <!-- bench:begin --> ... <!-- bench:end -->
(the rest of the file, the method, is hand-written), and draws
DOCS-DIR/perf-throughput-<key>.png and DOCS-DIR/perf-latency.png with
gnuplot. Only numbers found in the CSV files are printed: a point that was
not measured shows as "not measured", never as an estimate.
"""

import csv
import os
import re
import subprocess
import sys

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
KEY_ORDER = ["rsa2048", "rsa3072", "p256"]


def read_kv(path):
    """KEY=VALUE lines (machine.txt) as a dict."""
    kv = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                kv[k] = v
    return kv


def rss_table(w, rows):
    w("| requests served | RSS (KiB) |")
    w("| ---: | ---: |")
    for r in rows:
        w(f"| {int(r['requests']):,} | {int(r['rss_kb']):,} |")


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fmt(v, nd=0):
    if v is None:
        return "not measured"
    return f"{v:,.{nd}f}"


def ratio(a, b, nd=2):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.{nd}f}"


def kh_source(rdir):
    """Where the key holder's figures come from: bench/results/keyholder/
    (`--part keyholder`) when that run is newer than RDIR's, else RDIR."""
    kdir = os.path.join(os.path.dirname(os.path.abspath(rdir)), "keyholder")
    here = read_kv(os.path.join(rdir, "machine.txt"))
    kfile = os.path.join(kdir, "machine.txt")
    if os.path.abspath(kdir) != os.path.abspath(rdir) and os.path.exists(kfile):
        km = read_kv(kfile)
        if km.get("date_utc", "") > here.get("date_utc", ""):
            return kdir, km
    return rdir, here


def median(vals):
    v = sorted(vals)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def strace_counts(path):
    """syscall -> calls, from an `strace -c` summary."""
    counts = {}
    if not os.path.exists(path):
        return counts
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5 and re.match(r"^[\d.]+$", p[0]) and p[-1] != "total":
                try:
                    counts[p[-1]] = int(p[3])
                except ValueError:
                    pass
    return counts


def kh_section(w, rdir):
    """The figures of the key-holder split (issue 16)."""
    kdir, km = kh_source(rdir)
    rows = read_csv(os.path.join(kdir, "results.csv"))
    cpu = read_csv(os.path.join(kdir, "cpu.csv"))
    ipc = [r for r in rows if r["tool"] == "ipchop"]
    model = [r for r in rows if r["variant"] in ("model", "keepalive-model")]
    over = [r for r in rows if r["variant"].startswith("overload-")]
    if not (cpu or ipc or model or over):
        return

    def pick(tool, variant, conc=None):
        m = sorted((r for r in rows if r["tool"] == tool and r["variant"] == variant
                    and (conc is None or int(r["conc"]) == conc)), key=lambda r: float(r["ops_per_s"]))
        return m[(len(m) - 1) // 2] if m else None

    def f(r, col):
        return float(r[col]) if r else None

    w("### The key holder: the network side and the token in separate processes")
    w("")
    if kdir != rdir:
        w(f"From `./bench/run {km.get('args', '')}` (run `{km.get('date_utc', '?')}` at commit "
          f"`{km.get('git', '?')}`, results in `bench/results/keyholder/`; load average "
          f"{km.get('loadavg_at_start', '?')} at the start and {km.get('loadavg_at_end', '?')} at the end, "
          f"on {km.get('cores', '?')} cores shared with other work).")
    else:
        w("From the run above.")
    rounds = int(km.get("rounds", "1") or 1)
    if rounds > 1:
        w(f"Each point {rounds} times, the contenders interleaved; medians.")
    w("")
    w("| figure | target | measured |")
    w("| --- | --- | --- |")
    g64 = pick("unwrap-load", "keepalive-model", 64)
    if g64:
        p50, p99 = float(g64["p50_ms"]), float(g64["p99_ms"])
        w(f"| token model, 64 connections: p99 / p50 | <= 3 | {ratio(p99, p50)} (p50 {p50:g} ms, p99 {p99:g} ms) |")
    g16, a8 = pick("unwrap-load", "keepalive-model", 16), pick("p11rate", "model", 8)
    if g16 and a8:
        w(f"| token model: groupsrv at 16 connections / p11rate with 8 threads | >= 0.95 | "
          f"{ratio(f(g16, 'ops_per_s'), f(a8, 'ops_per_s'))} ({fmt(f(g16, 'ops_per_s'))} / {fmt(f(a8, 'ops_per_s'))}) |")
    g1, a1 = pick("unwrap-load", "keepalive-model", 1), pick("p11rate", "model", 1)
    if g1 and a1:
        w(f"| token model: groupsrv at 1 connection / p11rate with 1 thread | >= 0.90 | "
          f"{ratio(f(g1, 'ops_per_s'), f(a1, 'ops_per_s'))} ({fmt(f(g1, 'ops_per_s'))} / {fmt(f(a1, 'ops_per_s'))}) |")
    for r in (r for r in rows if r["variant"] == "rate80"):
        w(f"| SoftHSM {r['key']}, open loop at 80% of peak: p99 | <= 10 ms | {r['p99_ms']} ms "
          f"(p50 {r['p50_ms']} ms, {fmt(float(r['ops_per_s']))}/s achieved) |")
    if cpu:
        mine = [float(r["us_per_unwrap"]) for r in cpu if r["contender"] == "split"]
        base = [float(r["us_per_unwrap"]) for r in cpu if r["contender"] == "baseline"]
        txt = f"{median(mine):.0f} µs" + (f" ({min(mine):.0f}-{max(mine):.0f})" if len(mine) > 1 else "")
        if base:
            txt += (f"; the one-process server of `{km.get('baseline', '?')}` in the same run: "
                    f"{median(base):.0f} µs, ratio {median(mine) / median(base):.2f}")
        w(f"| zero-cost token, 8 connections: the server's CPU per unwrap | <= 40 µs | {txt} |")
    w("")

    if model:
        us, eng = km.get("model_us", "?"), km.get("model_engines", "?")
        w(f"Token model ({eng} engines x {int(us) / 1000:g} ms; key holder with "
          f"{km.get('model_workers', '?')} token workers, network process with "
          f"{km.get('model_threads', '?')} event-loop threads):")
        w("")
        w("| conns / threads | p11rate | groupsrv | groupsrv / p11rate | p50 ms | p99 ms | p99 / p50 |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in sorted({int(r["conc"]) for r in model}):
            a, g = pick("p11rate", "model", c), pick("unwrap-load", "keepalive-model", c)
            if g is None:
                continue
            w(f"| {c} | {fmt(f(a, 'ops_per_s'))} | {fmt(f(g, 'ops_per_s'))} | "
              f"{ratio(f(g, 'ops_per_s'), f(a, 'ops_per_s'))} | {g['p50_ms']} | {g['p99_ms']} | "
              f"{ratio(float(g['p99_ms']), float(g['p50_ms']), 1)} |")
        w("")

    if ipc:
        w("### The IPC hop")
        w("")
        w("`bench/ipchop`: an unwrap request (one 256-byte encrypted key) and its answer (a 32-byte key) "
          "between two processes on a socketpair, encoded and decoded by `groupsrv/ipc.c`, each side "
          "waiting in poll(2); no token, no TLS, no audit.")
        w("")
        w("| requests in flight | round trips/s | round trip p50 µs | p99 µs | CPU per round trip, both processes (µs) |")
        w("| ---: | ---: | ---: | ---: | ---: |")
        for r in ipc:
            k = int(r["conc"])
            lat50 = f"{float(r['p50_ms']) * 1000:.0f}" if k == 1 else "-"
            lat99 = f"{float(r['p99_ms']) * 1000:.0f}" if k == 1 else "-"
            w(f"| {k} | {fmt(float(r['ops_per_s']))} | {lat50} | {lat99} | "
              f"{float(r['cpu_s']) * 1e6 / max(1, int(r['ops'])):.1f} |")
        w("")

    if over:
        cap = int(km.get("model_engines", "4")) * 1000000 // int(km.get("model_us", "5000"))
        w("### Overload: the token model offered twice its capacity")
        w("")
        w(f"Open loop at {2 * cap:,}/s on 256 keep-alive connections to a token that does {cap:,}/s, "
          "`[server] max_queue_ms = 100`; a 503 `overloaded` answer is counted as shed (with or without "
          "`Retry-After`), not as an error; latencies are of the admitted requests.")
        w("")
        w("| round | admitted/s | p50 ms | p99 ms | shed | shed without Retry-After | errors |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in over:
            i = r["variant"].split("-")[-1]
            sh = read_kv(os.path.join(kdir, f"shed-{i}.txt")) if os.path.exists(
                os.path.join(kdir, f"shed-{i}.txt")) else {}
            w(f"| {i} | {fmt(float(r['ops_per_s']))} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{int(sh.get('shed', '0')):,} | {sh.get('shed_without_retry_after', '-')} | {r['errors']} |")
        w("")
        rss = read_csv(os.path.join(kdir, "overload-rss.csv"))
        if rss and "keyholder_kb" in rss[0]:
            w("Memory (VmRSS, KiB) before the first round (after a warm-up) and after each:")
            w("")
            w("| when | supervisor | key holder | network process | together |")
            w("| --- | ---: | ---: | ---: | ---: |")
            for r in rss:
                v = [int(r[c]) for c in ("supervisor_kb", "keyholder_kb", "network_kb")]
                w(f"| {r['phase']} | {v[0]:,} | {v[1]:,} | {v[2]:,} | {sum(v):,} |")
            w("")

    if cpu:
        w("### The server's own CPU per unwrap (zero-cost token)")
        w("")
        w("`tests/p11fault` with `GS_P11FAULT_ZERO_COST=1` answers `C_Decrypt` with a fixed key at once, so "
          "what is measured is the server: CPU time (user + system, every thread) of each process from "
          "/proc/PID/stat over a closed-loop run of 8 keep-alive connections, divided by the unwraps "
          "the server counted. Medians over the rounds.")
        w("")
        w("| server | unwraps | µs per unwrap | supervisor | key holder | network process | load generator |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for who in ("split", "baseline"):
            rs = [r for r in cpu if r["contender"] == who]
            if not rs:
                continue
            label = "this commit" if who == "split" else f"`{km.get('baseline', '?')}` (one process)"
            col = lambda c: median([float(r[c]) for r in rs])
            w(f"| {label} | {col('unwraps'):,.0f} | {col('us_per_unwrap'):.0f} | {col('supervisor_us'):.1f} | "
              f"{col('keyholder_us'):.0f} | {col('network_us'):.0f} | {col('client_us'):.0f} |")
        w("")
        n = read_kv(os.path.join(kdir, "syscalls-unwraps.txt")).get("unwraps") if os.path.exists(
            os.path.join(kdir, "syscalls-unwraps.txt")) else None
        for tag, name in (("kh", "key holder"), ("net", "network process")):
            prof = os.path.join(kdir, f"profile-{tag}.txt")
            if os.path.exists(prof):
                w(f"Where the {name}'s CPU goes (`perf record -F 999`, self time by library, then by function; "
                  f"full list in `profile-{tag}.txt`):")
                w("")
                w("```")
                with open(prof) as pf:
                    lines = [ln.rstrip() for ln in pf]
                cut = lines.index("--") if "--" in lines else len(lines)
                for ln in lines[:min(cut, 8)]:
                    w(re.sub(r"\s+", " ", ln).strip())
                w("--")
                for ln in lines[cut + 1:cut + 16]:
                    w(re.sub(r"\s+", " ", ln).strip())
                w("```")
                w("")
            sc = strace_counts(os.path.join(kdir, f"syscalls-{tag}.txt"))
            if sc and n and int(n) > 0:
                top = sorted(sc.items(), key=lambda kv: -kv[1])[:10]
                w(f"System calls of the {name} per unwrap (`strace -c`, {int(n):,} unwraps): " +
                  ", ".join(f"{k} {v / int(n):.1f}" for k, v in top) + ".")
                w("")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py RESULTS-DIR DOCS-DIR")
    rdir, ddir = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    machine = read_kv(os.path.join(rdir, "machine.txt"))
    rows = read_csv(os.path.join(rdir, "results.csv"))

    def matching(tool, variant, key, conc=None):
        return [r for r in rows if r["tool"] == tool and r["variant"] == variant and r["key"] == key
                and (conc is None or int(r["conc"]) == conc)]

    def get(tool, variant, key, conc=None):
        """The row with the median rate among repeated rounds (the only row otherwise)."""
        m = sorted(matching(tool, variant, key, conc), key=lambda r: float(r["ops_per_s"]))
        return m[(len(m) - 1) // 2] if m else None

    def rate(tool, variant, key, conc=None):
        r = get(tool, variant, key, conc)
        return float(r["ops_per_s"]) if r else None

    def spread(tool, variant, key, conc):
        """"min-max" of the rates when a point was measured more than once, else ""."""
        m = [float(r["ops_per_s"]) for r in matching(tool, variant, key, conc)]
        return f" ({min(m):,.0f}-{max(m):,.0f})" if len(m) > 1 else ""

    keys = [k for k in KEY_ORDER if any(r["key"] == k for r in rows)]
    concs = sorted({int(r["conc"]) for r in rows if r["tool"] == "p11rate"})
    total_errors = sum(int(r["errors"]) for r in rows)
    out = []
    w = out.append
    w(BEGIN)
    w("")
    w("<!-- generated by bench/report.py from bench/results/latest; do not edit by hand -->")
    w("")
    w(f"Run `{machine.get('date_utc', '?')}` at commit `{machine.get('git', '?')}` on: "
      f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores (shared by the server, the "
      f"token, and the load generator), {machine.get('mem_mb', '?')} MB RAM, "
      f"{machine.get('os', '?')}, kernel {machine.get('kernel', '?')}; OpenSSL {machine.get('openssl', '?')}, "
      f"SoftHSM {machine.get('softhsm', '?')}, p11-kit {machine.get('p11kit', '?')}, "
      f"OpenSC {machine.get('opensc', '?')}, libcurl {machine.get('libcurl', '?')}, "
      f"libevent {machine.get('libevent', '?')}. Server threads: {machine.get('server_threads', '?')}; "
      f"{machine.get('duration_s', '?')} s per point. Errors in all rows: {total_errors}.")
    w("")

    notes = os.path.join(rdir, "notes.txt")
    if os.path.exists(notes):
        w("**Not measured in this run:**")
        w("")
        with open(notes) as f:
            for line in f:
                if line.strip():
                    w(f"- {line.strip()}")
        w("")

    if rows:
        w("### Unwrap throughput: groupsrv against the limit and the alternatives")
        w("")
        w("unwraps/s; groupsrv = `unwrap-load` over HTTPS with keep-alive, `deliver: tls`; "
          "p11rate = in-process `hsm_decrypt_content_key` (the limit); p11-kit server = the same "
          "p11rate through `p11-kit-client.so`. Targets: groupsrv/p11rate >= 0.85, "
          "groupsrv/p11-kit >= 2.")
        if int(machine.get("rounds", "1") or 1) > 1:
            w("")
            w(f"Each point was measured {machine['rounds']} times, the contenders interleaved; the table "
              "shows the median (and the range in brackets); ratios and latencies are of the median rows.")
        w("")
        def throughput(k, sfx, label):
            """One key's table and plot; sfx picks the variants ("" or "-model")."""
            v_lim = "softhsm" if not sfx else "model"
            v_kit, v_gs = "p11-kit-server" + sfx, "keepalive" + sfx
            w("| conns / threads | p11rate | groupsrv | p11-kit server | groupsrv / p11rate | groupsrv / p11-kit | p50 ms | p99 ms |")
            w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            dat = []
            for c in concs:
                a = rate("p11rate", v_lim, k, c)
                g = rate("unwrap-load", v_gs, k, c)
                p = rate("p11rate", v_kit, k, c)
                gr = get("unwrap-load", v_gs, k, c)
                if a is None and g is None:
                    continue
                w(f"| {c} | {fmt(a)}{spread('p11rate', v_lim, k, c)} | "
                  f"{fmt(g)}{spread('unwrap-load', v_gs, k, c)} | "
                  f"{fmt(p)}{spread('p11rate', v_kit, k, c)} | {ratio(g, a)} | {ratio(g, p)} | "
                  f"{gr['p50_ms'] if gr else '-'} | {gr['p99_ms'] if gr else '-'} |")
                dat.append(" ".join(str(v) if v is not None else "-" for v in (c, a, g, p)))
            w("")
            name = k + sfx
            datf = os.path.join(rdir, f"plot-throughput-{name}.dat")
            with open(datf, "w") as f:
                f.write("# conc p11rate groupsrv p11kit\n" + "\n".join(dat) + "\n")
            png = os.path.join(ddir, f"perf-throughput-{name}.png")
            subprocess.run(["gnuplot", "-e", f"datafile='{datf}'; keyname='{k}'; label='{label}'; outfile='{png}'",
                            os.path.join(here, "plot-throughput.gp")], check=True)
            w(f"![throughput {name}](perf-throughput-{name}.png)")
            w("")

        for k in keys:
            w(f"**{k}**")
            w("")
            throughput(k, "", "SoftHSM, 2 cores shared by all processes")

        mrows = [r for r in rows if r["variant"] == "model"]
        if mrows:
            mk = mrows[0]["key"]
            us, eng = machine.get("model_us", "?"), machine.get("model_engines", "?")
            w("### The same, with the token as the limit (hardware-token model)")
            w("")
            w(f"SoftHSM behind `tests/p11fault` with `GS_P11FAULT_SERVICE_US={us}` and "
              f"`GS_P11FAULT_ENGINES={eng}`: every private-key operation is really done by SoftHSM and "
              f"then held until {int(us) / 1000:g} ms have passed, on one of {eng} engines, so the token "
              f"does at most {int(eng) * 1e6 / int(us):,.0f} operations a second whatever the host CPU does, "
              "as a network HSM with its own processors would. " +
              (f"groupsrv's key holder runs {machine['model_workers']} token workers (one more than the "
               f"engines) and its network process {machine.get('model_threads', '?')} event-loop threads; "
               if machine.get("model_workers") else
               f"groupsrv runs {machine.get('model_threads', '?')} event-loop threads (twice the engines); ") +
              "p11rate and p11-kit server use the same model. Same columns as above.")
            w("")
            w(f"**{mk}, token model**")
            w("")
            throughput(mk, "-model", f"token model: {eng} engines x {int(us) / 1000:g} ms")

        # One process per message.
        pt = [r for r in rows if r["tool"] == "pkcs11-tool"]
        w("### One `pkcs11-tool --decrypt` process per message")
        w("")
        if pt:
            w("| key | parallel processes | processes/s | groupsrv at same conns | groupsrv / process-per-message |")
            w("| --- | ---: | ---: | ---: | ---: |")
            for r in pt:
                c = int(r["conc"])
                g = rate("unwrap-load", "keepalive", r["key"], c)
                w(f"| {r['key']} | {c} | {fmt(float(r['ops_per_s']), 1)} | {fmt(g)} | "
                  f"{ratio(g, float(r['ops_per_s']), 1)} |")
            w("")
        else:
            w("not measured")
            w("")

        # New connection per request.
        nc = [r for r in rows if r["tool"] == "unwrap-load" and r["variant"].startswith("new-conn")]
        w("### A new TLS connection per request (a script calling curl in a loop)")
        w("")
        if nc:
            w("| key | conns | mode | unwraps/s | p50 ms | p99 ms | keep-alive unwraps/s | keep-alive / this |")
            w("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
            for r in nc:
                ka = rate("unwrap-load", "keepalive", r["key"], int(r["conc"]))
                mode = "full handshake" if r["variant"] == "new-conn" else "TLS session resumed"
                w(f"| {r['key']} | {r['conc']} | {mode} | {fmt(float(r['ops_per_s']))} | {r['p50_ms']} | "
                  f"{r['p99_ms']} | {fmt(ka)} | {ratio(ka, float(r['ops_per_s']), 1)} |")
            w("")
        else:
            w("not measured")
            w("")

        # Latency at 80 % of peak.
        w("### Latency at 80% of peak (open loop, 64 keep-alive connections)")
        w("")
        lr = [r for r in rows if r["variant"] == "rate80"]
        if lr:
            w("Peak = closed loop, 64 keep-alive connections, measured right before the open-loop run.")
            w("")
            w("| key | peak unwraps/s | offered (80%) | achieved | p50 ms | p90 ms | p99 ms | errors |")
            w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            files, names = [], []
            for r in lr:
                k = r["key"]
                pk = get("unwrap-load", "peak64", k)
                peak = float(pk["ops_per_s"]) if pk else None
                w(f"| {k} | {fmt(peak)} | {fmt(peak * 0.8 if peak else None)} | {fmt(float(r['ops_per_s']))} | "
                  f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['errors']} |")
                lf = os.path.join(rdir, f"lat-groupsrv-{k}.csv")
                if os.path.exists(lf):
                    df = os.path.join(rdir, f"plot-latency-{k}.dat")
                    with open(lf) as src, open(df, "w") as dst:
                        for i, line in enumerate(src):
                            if i:
                                dst.write(line.replace(",", " "))
                    files.append(df)
                    names.append(k)
            w("")
            if files:
                png = os.path.join(ddir, "perf-latency.png")
                subprocess.run(["gnuplot", "-e", f"outfile='{png}'; files='{' '.join(files)}'; "
                                f"names='{' '.join(names)}'", os.path.join(here, "plot-latency.gp")],
                               check=True)
                w("![latency distribution](perf-latency.png)")
                w("")
        else:
            w("not measured")
            w("")

        # Deliver methods.
        w("### Cost of each deliver method (keep-alive)")
        w("")
        any_d = False
        for prefix, title in (("deliver-", "as shipped"),):
            dr = [r for r in rows if r["variant"].startswith(prefix)]
            if not dr:
                continue
            any_d = True
            kd = dr[0]["key"]
            tls = rate("unwrap-load", prefix + "tls", kd)
            w(f"Server {title}" + (f"; medians of {machine['rounds']} interleaved rounds (range in brackets)"
                                   if int(machine.get("rounds", "1") or 1) > 1 else "") + ":")
            w("")
            w("| key | conns | deliver | unwraps/s | relative to tls | p50 ms | p99 ms | errors |")
            w("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
            for d in ("tls", "recipient-key", "group-secret"):
                r = get("unwrap-load", prefix + d, kd)
                if r is None:
                    continue
                v = float(r["ops_per_s"])
                errs = sum(int(x["errors"]) for x in matching("unwrap-load", prefix + d, kd))
                w(f"| {kd} | {r['conc']} | {d} | {fmt(v)}{spread('unwrap-load', prefix + d, kd, int(r['conc']))} | "
                  f"{ratio(v, tls)} | {r['p50_ms']} | {r['p99_ms']} | {errs} |")
            w("")
        if not any_d:
            w("not measured")
            w("")

    kh_section(w, rdir)

    prof = os.path.join(rdir, "profile.txt")
    if os.path.exists(prof):
        w("### Where the server's CPU goes (perf, 2 keep-alive connections)")
        w("")
        w("Inclusive share of the server process's CPU samples for groupsrv's own functions and the "
          "library calls they make (`perf report --children`; full list in "
          "`bench/results/latest/profile.txt`):")
        w("")
        w("```")
        want = ("api_route", "handle", "authorise", "unwrap_item", "hsm_decrypt_content_key", "hsm_ecdh", "hsm_rewrap", "C_Decrypt",
                "C_DecryptInit", "RSA_setup_blinding", "gs_group_load", "hsm_key_find", "C_FindObjects",
                "C_GetAttributeValue", "gs_cert_parse", "audit_append", "audit_write", "syncer_main",
                "__GI_fdatasync", "fdatasync", "srv_require_cert", "tls_peer_check", "X509_verify_cert",
                "gs_store_member_get", "sqlite3_step", "SSL_write", "SSL_read", "json_loadb", "json_dumps")
        seen = set()
        with open(prof) as f:
            for line in f:
                m = re.match(r"\s*([\d.]+%)\s+[\d.]+%\s+\[.\]\s+(\S+)", line)
                if m and m.group(2) in want and m.group(2) not in seen:
                    seen.add(m.group(2))
                    w(f"{m.group(1):>8}  {m.group(2)}")
        w("```")
        w("")

    rss = read_csv(os.path.join(rdir, "rss.csv"))
    w("### Server memory (VmRSS)")
    w("")
    if rss:
        w("In the run above (the same server process served every groupsrv row first):")
        w("")
        rss_table(w, rss)
        w("")
    else:
        w("not measured")
        w("")

    mdir = os.path.join(os.path.dirname(os.path.abspath(rdir)), "memory")
    mrss = read_csv(os.path.join(mdir, "rss.csv"))
    if mrss:
        mm = read_kv(os.path.join(mdir, "machine.txt"))
        w(f"Longer memory run (`./bench/run --part memory`, {mm.get('date_utc', '?')}, commit "
          f"`{mm.get('git', '?')}`, `{mm.get('args', '')}`; its own server process, RSA-2048 group, "
          "8 keep-alive connections)" + (f"; {mm['note']}" if mm.get("note") else "") + ":")
        w("")
        rss_table(w, mrss)
        w("")

    sdir = os.path.join(os.path.dirname(os.path.abspath(rdir)), "soak")
    soak = read_csv(os.path.join(sdir, "soak.csv"))
    w("### Soak: 80 % of capacity, open loop")
    w("")
    if soak:
        sm = read_kv(os.path.join(sdir, "machine.txt"))
        total = sum(int(r["requests"]) for r in soak)
        errors = sum(int(r["errors"]) for r in soak)
        rss = [int(r["rss_kb"]) for r in soak]
        w(f"`./bench/run --part soak` ({sm.get('date_utc', '?')}, commit `{sm.get('git', '?')}`, "
          f"`{sm.get('args', '')}`; load average {sm.get('loadavg_at_start', '?')} at the start, "
          f"{sm.get('loadavg_at_end', '?')} at the end): its own server process, "
          f"{sm.get('key', '?')} group, 64 keep-alive connections, requests due at "
          f"{sm.get('rate_per_s', '?')}/s = 80 % of the peak of {sm.get('peak_per_s', '?')}/s measured "
          f"right before. {total:,} requests, **{errors} errors**; RSS after the first minute "
          f"{rss[0]:,} KiB, after the last {rss[-1]:,} KiB ({rss[-1] - rss[0]:+,} KiB)."
          + (f" Conditions: {sm['note']}" if sm.get("note") else ""))
        w("")
        w("| minute | requests | errors | ops/s | p50 (ms) | p99 (ms) | RSS (KiB) |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in soak:
            w(f"| {r['chunk']} | {int(r['requests']):,} | {r['errors']} | {r['ops_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {int(r['rss_kb']):,} |")
        w("")
    else:
        w("not measured")
        w("")

    # `./bench/run --part 2` keeps its own results (bench/results/exploder/):
    # newer exploder figures than the full run's, shown in their place.
    xdir = os.path.join(os.path.dirname(os.path.abspath(rdir)), "exploder")
    xsrc = rdir
    if read_csv(os.path.join(xdir, "exploder.csv")):
        xsrc = xdir
    ex = read_csv(os.path.join(xsrc, "exploder.csv"))
    w("### Exploder: one 100 KB message")
    w("")
    if ex and xsrc == xdir:
        xm = read_kv(os.path.join(xdir, "machine.txt"))
        w(f"From `./bench/run --part 2` ({xm.get('date_utc', '?')}, commit `{xm.get('git', '?')}`, "
          f"`{xm.get('args', '')}`; load average {xm.get('loadavg_at_start', '?')} at the start, "
          f"{xm.get('loadavg_at_end', '?')} at the end).")
        w("")
    if ex:
        w("Time to spool = `exploder deliver` until it exits 0 (message and one row per member "
          "committed, fsynced); delivery = `exploder run --once` from then until every member's "
          "copy was accepted by the SMTP server (forward and group-secret: one copy for 100 RCPT TO "
          "per transaction; member-certs: one copy per member, each in its own transaction); group "
          "server calls = rewrap requests counted by the server's own metrics; bytes per copy = the "
          "mean size of what one mailbox stores; all mailboxes = that times the members; runner CPU = "
          "user + system time of `exploder run` itself (the SMTP sink, a Python server that fsyncs "
          "every message it stores, and the group server run beside it on the same cores).")
        w("")
        w("| mode | members | time to spool (s) | delivery (s) | total (s) | delivered | group server calls "
          "| message bytes | bytes per copy | all mailboxes (MB) | runner CPU (s) |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in ex:
            cb = int(r.get("copy_bytes") or 0)
            cpu = r.get("runner_cpu_s") or "not measured"
            w(f"| {r['mode']} | {int(r['members']):,} | {r['spool_s']} | {r['deliver_s']} | {r['total_s']} | "
              f"{int(r['delivered']):,} | {r['rewrap_calls']} | {int(r['message_bytes']):,} | "
              f"{cb:,} | {cb * int(r['delivered']) / 1e6:,.1f} | {cpu} |")
        w("")
    else:
        w("not measured")
        w("")
    sz = read_csv(os.path.join(xsrc, "sizes.csv"))
    w("### What the sender sends: to the group once, or to every member (the PGP way)")
    w("")
    if sz:
        w("| recipients N | to the group (bytes) | `openssl cms -encrypt` to N certificates (bytes) | ratio |")
        w("| ---: | ---: | ---: | ---: |")
        for r in sz:
            g, n = int(r["group_bytes"]), int(r["per_member_bytes"])
            w(f"| {int(r['n']):,} | {g:,} | {n:,} | {n / g:.1f} |")
        w("")
    else:
        w("not measured")
        w("")
    w(END)

    path = os.path.join(ddir, "performance.md")
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{path}: markers {BEGIN} / {END} missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path + ".tmp", "w") as f:
        f.write(head + "\n".join(out) + tail)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
