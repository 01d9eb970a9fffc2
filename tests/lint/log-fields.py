#!/usr/bin/python3
"""log-fields.py SRC: every diagnostic log call's format string makes one
record of key=value fields (docs/operations.md "Logs and the audit log",
the same rule tests/lib/logcheck.py reads a log by).

common/log.c quotes the text before the first " key=" as msg="..."; what
follows must be fields only. Flagged:
- text after the fields (`kind=%s version=%u (check lists them)`);
- free text (gs_err_detail(), strerror() ...) in the message part: a word
  with '=' in it moves where the fields start;
- an unquoted `key=%s` fed a string literal with a space or a quote
  (`queue=%s` given "over max_queue_ms": a shipper reads queue=over and
  a stray word), or fed log_quote()/log_qs(), whose escaping is meant for
  a quoted value (a space in a mail address would split it).
A log shipper splitting such a line files the wrong values or drops it.
"""
import glob
import os
import re
import sys

FIELD = r' ([a-z_]+)=(?:"(?:[^"\\]|\\.)*"|[^ "]*)'
CALL = re.compile(r'\blog_(?:error|warn|info|debug)\((.*?)\);', re.S)
CONV = re.compile(r'%(?:%|[-+ #0]*(?:\*|[0-9]+)?(?:\.(?:\*|[0-9]+))?(?:hh|h|ll|l|z|j|t)?([diouxXeEfgGcsp]))')


def split_args(s):
    """Top-level comma split of a C argument list."""
    out, depth, cur, i = [], 0, "", 0
    while i < len(s):
        ch = s[i]
        if ch == '"' or ch == "'":
            j = i + 1
            while j < len(s) and s[j] != ch:
                j += 2 if s[j] == "\\" else 1
            cur += s[i:j + 1]
            i = j + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip():
        out.append(cur.strip())
    return out


def fields_of(body):
    """The part log_emit writes as fields (its split, common/log.c)."""
    eq0, sp0 = body.find("="), body.find(" ")
    if eq0 > 0 and (sp0 < 0 or eq0 < sp0):
        return " " + body
    p = 0
    while True:
        p = body.find(" ", p)
        if p < 0:
            return ""
        eq, sp = body.find("=", p + 1), body.find(" ", p + 1)
        if eq >= 0 and (sp < 0 or eq < sp) and eq > p + 1:
            return body[p:]
        p += 1


FUNC = re.compile(r'^[A-Za-z_][\w \t\*]*?\b([A-Za-z_]\w*)\(([^;{}()]*)\)\s*\{', re.M)


def literal_params(src, pos, name, depth=3):
    """String literals passed, in src, for parameter name of the function
    whose body holds pos (through callers that pass a parameter of their
    own on, depth levels up)."""
    fn = None
    for d in FUNC.finditer(src, 0, pos):
        fn = d
    if fn is None:
        return []
    params = [re.findall(r'\w+', p_)[-1:] for p_ in fn.group(2).split(",")]
    idx = [i for i, p_ in enumerate(params) if p_ == [name]]
    if not idx:
        return []
    out = []
    for c in re.finditer(r'\b%s\(' % re.escape(fn.group(1)), src):
        if c.start() == fn.start(1):
            continue
        nest, j = 1, c.end()
        while j < len(src) and nest:
            nest += {"(": 1, ")": -1}.get(src[j], 0) if src[j] not in "\"'" else 0
            if src[j] == '"':
                j += 1
                while j < len(src) and src[j] != '"':
                    j += 2 if src[j] == "\\" else 1
            j += 1
        a = split_args(src[c.end():j - 1])
        if idx[0] < len(a):
            out += re.findall(r'"((?:[^"\\]|\\.)*)"', a[idx[0]])
            if depth > 1 and re.fullmatch(r'[A-Za-z_]\w*', a[idx[0]]):
                out += literal_params(src, c.start(), a[idx[0]], depth - 1)
    return out


def main():
    os.chdir(sys.argv[1])
    bad = calls = 0
    for f in sorted(glob.glob("**/*.c", recursive=True)):
        if f.startswith(("build", "tests/")):
            continue
        src = open(f, encoding="latin-1").read()
        for m in CALL.finditer(src):
            args = split_args(m.group(1))
            lits = re.findall(r'"((?:[^"\\]|\\.)*)"', args[0]) if args and args[0].startswith('"') else None
            if not lits:
                continue
            calls += 1
            line = src[:m.start()].count("\n") + 1
            fmt = "".join(lits).replace('\\"', '"').replace("\\\\", "\\")
            body = CONV.sub(lambda c: "%" if c.group(0) == "%%" else "V", fmt)
            # `...%s", cond ? " detail=\"...\"" : ""`: a field added or not
            if fmt.endswith("%s") and re.search(r'\?\s*" [a-z_]+=.*:\s*""\s*$', args[-1]):
                body = body[:-1]
            if not re.fullmatch("(?:%s)*" % FIELD, fields_of(body)):
                print("%s:%d: not key=value fields after the message: %s" % (f, line, fmt))
                bad = 1
            # each conversion's argument; an unquoted key=%s checked
            rest, n = args[1:], 0
            msg_len = len(body) - len(fields_of(body))
            for c in CONV.finditer(fmt):
                if c.group(0) == "%%":
                    continue
                n += c.group(0).count("*")
                arg = rest[n] if n < len(rest) else ""
                n += 1
                # free text (a database's or the OS's message) in the
                # message part: a word with '=' in it ("Key (email)=(...)")
                # is where log_emit starts the fields
                prefix = CONV.sub(lambda c_: "%" if c_.group(0) == "%%" else "V", fmt[:c.start()])
                if (c.group(1) == "s" and len(prefix) < msg_len and
                        re.search(r'\b(?:gs_err_detail|hsm_last_error_detail|sqlite3_errmsg|PQerrorMessage|strerror)\(',
                                  arg)):
                    print("%s:%d: free text in the message part, not a detail=\"...\" field: %s <- %s"
                          % (f, line, fmt, arg))
                    bad = 1
                if c.group(1) != "s" or not re.search(r'[a-z_]=$', fmt[:c.start()]):
                    continue
                strs = re.findall(r'"((?:[^"\\]|\\.)*)"', arg)
                # the access line's client= (docs/operations.md): a numeric
                # address, log_qs only in case
                if fmt[:c.start()].endswith(" client=") and "log_qs(addr)" in arg:
                    continue
                if any(" " in s or '\\"' in s for s in strs) or re.search(r'\blog_(?:quote|qs)\(', arg):
                    print("%s:%d: unquoted value with spaces or quotes possible: %s <- %s" % (f, line, fmt, arg))
                    bad = 1
                # a parameter of the function the call is in: the string
                # literals its callers in this file pass (`what=%s` given
                # "new links" by every caller)
                if re.fullmatch(r'[A-Za-z_]\w*', arg):
                    for s_ in literal_params(src, m.start(), arg):
                        if " " in s_ or '\\"' in s_:
                            print("%s:%d: unquoted value with spaces or quotes possible: %s <- %s <- \"%s\""
                                  % (f, line, fmt, arg, s_))
                            bad = 1
    if calls < 250:
        print("found only %d log calls: the pattern is stale" % calls)
        sys.exit(1)
    if not bad:
        print("%d log calls, each one record of key=value fields" % calls)
    sys.exit(bad)


if __name__ == "__main__":
    main()
