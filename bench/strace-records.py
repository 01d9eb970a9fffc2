#!/usr/bin/env python3
"""bench/strace-records.py LOG UNWRAPS: the I/O system calls of one
process per unwrap, from `strace -yy -xx -s 65536 -ff -o LOG` (the
per-thread files concatenated), by the kind of descriptor: 'tls' (a
socket whose writes start with a TLS record header: the clients'
connections), 'link' (another socket: the link between the network
process and the key holder), or the file's name. For writes to 'tls',
also the TLS records they carried, read off the record headers: an answer
written as one record in one write(2) shows as 1.00 and 1.00 per unwrap
(bench/kh-compare --parts records)."""
import collections
import re
import sys

n = int(sys.argv[2])
call = re.compile(r'^(\w+)\((\d+)<(.*?)>, ("|\[)(.*)\) += (-?\d+)')
hexbyte = re.compile(r'\\x([0-9a-f]{2})')
rows, tls = [], set()
for line in open(sys.argv[1], errors="replace"):
    m = call.match(line)
    if not m:
        continue
    sc, _, kind, _, args, ret = m.groups()
    if "\\x" in kind:  # -xx also escapes the descriptor's path
        kind = bytes.fromhex("".join(hexbyte.findall(kind))).decode(errors="replace")
    r = int(ret)
    data = b""
    if sc in ("write", "writev", "sendto", "sendmsg") and r > 0:
        data = bytes.fromhex("".join(hexbyte.findall(args)))[:r]
        if kind.startswith(("socket", "TCP")) and len(data) >= 5 and data[0] in (20, 21, 22, 23) and data[1] == 3:
            tls.add(kind)
    rows.append((sc, kind, r, data))
calls, records, nbytes = collections.Counter(), collections.Counter(), collections.Counter()
for sc, kind, r, data in rows:
    k = "tls" if kind in tls else "link" if kind.startswith(("socket", "UNIX", "TCP")) else kind.rsplit("/", 1)[-1]
    calls[(sc, k)] += 1
    nbytes[(sc, k)] += len(data)
    if k == "tls":
        i = 0
        while i + 5 <= len(data):
            records[(sc, k)] += 1
            i += 5 + (data[i + 3] << 8 | data[i + 4])
for key in sorted(calls):
    extra = f"  TLS records {records[key] / n:.2f}" if key in records else ""
    if nbytes[key]:
        extra += f"  bytes {nbytes[key] / n:.0f}"
    print(f"  {key[0]:8s} {key[1]:14s} {calls[key] / n:6.2f}{extra}")
