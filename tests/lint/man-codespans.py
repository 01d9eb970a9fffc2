#!/usr/bin/python3
"""man-codespans.py SRC: docs/man-codespans.awk, run on each man page's
source before pandoc (dist/CMakeLists.txt), changes nothing pandoc reads
but the white space inside code spans: every page, and a page of the
shapes a later edit may bring (a backslash-escaped backtick, an
unmatched backtick in a table row, ~~~ fences, a backslash ending a
span), read by pandoc into the same document with soft line breaks
taken as spaces and each run of white space in a code span as one
space. Before, such shapes joined lines that were not one span: an
escaped backtick took the following list items into its paragraph, a
table row's lone backtick the next rows, and a ~~~ block's backtick the
text after it. Skipped (77) without pandoc or awk.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

EDGES = r"""Intro with an escaped \` backtick here
- item one
- item two

| a | b |
|---|---|
| `x | y |
| z | w |

Text ``a ` b`` and `c
  d` end, `e\` f, and \\`g
  h`.

~~~
code `x
~~~

Then `i
  j` again.

```
fenced `x
~~~
still fenced
```
"""


def norm(x):
    if isinstance(x, dict):
        if x.get("t") == "SoftBreak":
            return {"t": "Space"}
        if x.get("t") == "Code":
            return {"t": "Code", "c": [norm(x["c"][0]), re.sub(r"\s+", " ", x["c"][1])]}
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    return x


def read(text):
    out = subprocess.run(["pandoc", "--from", "markdown", "--to", "json"], input=text, capture_output=True,
                         text=True, check=True).stdout
    return norm(json.loads(out))


def main():
    src = sys.argv[1]
    if shutil.which("pandoc") is None or shutil.which("awk") is None:
        print("skip: no pandoc or awk")
        return 77
    awk = os.path.join(src, "docs", "man-codespans.awk")
    pages = sorted(glob.glob(os.path.join(src, "docs", "*.1.md")))
    if len(pages) < 3:
        print("FAIL: no man pages under %s/docs" % src)
        return 1
    cases = [(os.path.basename(p), open(p, encoding="utf-8").read()) for p in pages] + [("edge cases", EDGES)]
    bad = 0
    for name, text in cases:
        joined = subprocess.run(["awk", "-f", awk], input=text, capture_output=True, text=True, check=True).stdout
        if read(text) != read(joined):
            print("FAIL: %s reads otherwise after docs/man-codespans.awk" % name)
            bad += 1
    if bad:
        return 1
    print("ok: %d man pages and the edge cases read the same after docs/man-codespans.awk" % len(pages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
