#!/usr/bin/env python3
"""cli-doc-subflags.py SRC BIN: every option a document's example gives a
command of groupsrv, exploder or groupmail is one that command takes, as
its line of the program's --help shows (or the common options). cli-docs.sh
checks the options against the program's --help as a whole, where an
option of another command (`member set eng alice --cert FILE`,
`exploder run --list`) passes, and a reader's command fails. Code blocks of README.md,
docs/*.md, SECURITY.md and pkcs11-config/README.md, as cli-docs.sh reads them (a
command's continuation lines joined, comments cut, sudo -u and runuser -u
taken off), and the text's code spans that start with a program's name."""
import glob
import re
import subprocess
import sys

src, binp = sys.argv[1], sys.argv[2]
FLAG = re.compile(r'(?<![\w-])--[a-z][a-z0-9-]*')


def commands(prog):
    """{(word1, word2 or None): set of options}, and the common options"""
    out = subprocess.run([f'{binp}/{prog}', '--help'], capture_output=True, text=True, check=True).stdout
    cmds, common, cur = {}, set(), None
    for line in out.splitlines():
        m = re.match(r'^  ([a-z][a-z-]*)(?: +([a-z][a-z-]*))?', line)
        if re.match(r'^[a-z]+:', line):
            cur = 'common' if line.startswith('common:') else None
        elif m and not line.startswith('   '):
            cur = (m.group(1), m.group(2))
            cmds.setdefault(cur, set())
        if cur == 'common':
            common |= set(FLAG.findall(line))
        elif cur is not None:
            cmds[cur] |= set(FLAG.findall(line))
    return cmds, common | {'--help', '--version'}


def example_lines():
    files = [f'{src}/README.md', f'{src}/SECURITY.md', f'{src}/pkcs11-config/README.md'] + sorted(glob.glob(f'{src}/docs/*.md'))
    for f in files:
        inb, acc = False, ''
        for n, line in enumerate(open(f, encoding='utf-8'), 1):
            if re.match(r'^ *```', line):
                inb, acc = not inb, ''
                continue
            if not inb:
                continue
            line = line.rstrip('\n')
            if line.endswith('\\'):
                acc += line[:-1]
                continue
            yield f[len(src) + 1:], n, acc + line, False
            acc = ''
        # and the code spans of the text that start with a program's name
        # (`groupsrv group retire eng --before 3`), joined across lines
        text = open(f, encoding='utf-8').read()
        text = re.sub(r'^ *```.*?^ *```', lambda b: '\n' * b.group(0).count('\n'), text, flags=re.S | re.M)
        for m in re.finditer(r'(?<!`)`([^`]+)`(?!`)', text):
            span = ' '.join(m.group(1).split())
            if re.match(r'^(?:groupsrv|exploder|groupmail) ', span):
                yield f[len(src) + 1:], text.count('\n', 0, m.start()) + 1, span, True


nfail = 0
progs = {p: commands(p) for p in ('groupsrv', 'exploder', 'groupmail')}
checked = 0
for f, n, line, in_text in example_lines():
    line = re.sub(r'^\s*(\$ )?(sudo -u [a-z_-]+ |runuser -u [a-z_-]+ -- )?', '', line)
    line = re.sub(r' #.*', '', line)
    # (one space after the program's name: a table such as Postfix's
    # master.cf, "exploder  unix  -  n ...", is no command)
    for prog, (cmds, common) in progs.items():
        m = re.match(rf'^(?:[A-Z_]+=[^ ]+ )*{prog}((?: -[cv](?: [^ -][^ ]*)?)*) ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?(.*)$', line)
        if not m:
            continue
        w1, w2, rest = m.group(2), m.group(3), m.group(4)
        key = (w1, w2) if (w1, w2) in cmds else (w1, None) if (w1, None) in cmds else None
        if key is None and in_text:
            # the text also names things that are no command line
            # (`groupsrv ca|group|...`, PostgreSQL's application_name
            # `groupsrv gs-a member add`): only a block's line must be one
            continue
        if key is None:
            print(f'FAIL: {f}:{n}: {prog} has no command "{w1}{" " + w2 if w2 else ""}": {line}')
            nfail += 1
            continue
        if key[1] is None and w2:
            rest = ' ' + w2 + rest
        checked += 1
        for opt in FLAG.findall(rest):
            if opt not in cmds[key] and opt not in common:
                print(f'FAIL: {f}:{n}: {prog} {" ".join(k for k in key if k)} takes no {opt} '
                      f'(its --help line: {" ".join(sorted(cmds[key])) or "no options"}): {line}')
                nfail += 1
if checked < 20:
    print(f'FAIL: only {checked} example commands found (a pattern is stale)')
    nfail += 1
if nfail:
    sys.exit(1)
print(f'ok: every option of the documents\' {checked} example commands is one its command takes')
