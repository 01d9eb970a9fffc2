#!/usr/bin/env bash
# package-install-tree.sh BUILD SRC PREFIX: `cmake --install` of this build
# into an empty DESTDIR installs exactly the files listed in
# tests/package/install-tree.txt (mode and path below the prefix) and
# nothing outside the prefix; the example configurations load in the
# programs; the man pages have a NAME line and render without a groff
# warning (lintian's check, at its two widths); the guides name only
# installed documents; the logrotate files parse and never name the audit
# log.
set -euo pipefail
BUILD=$1 SRC=$2 PREFIX=$3
W=$(mktemp -d "${GS_TEST_WORK:-/tmp}/install-tree.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

DESTDIR="$W/root" cmake --install "$BUILD" >"$W/install.log" 2>&1 || fail "cmake --install: $(tail -5 "$W/install.log")"
root=$W/root$PREFIX
[ -d "$root" ] || fail "nothing installed below $PREFIX"
outside=$(find "$W/root" -mindepth 1 \( -type f -o -type l \) -not -path "$root/*")
[ -z "$outside" ] || fail "installed outside the prefix: $outside"
(cd "$root" && find . -mindepth 1 \( -type f -o -type l \) -printf '%m %P\n' | LC_ALL=C sort) >"$W/tree"
if ! diff -u <(grep -v '^#' "$SRC/tests/package/install-tree.txt") "$W/tree" >"$W/tree.diff"; then
  fail "installed tree differs from tests/package/install-tree.txt (- expected, + installed):
$(cat "$W/tree.diff")"
fi
ok "installed tree: $(wc -l <"$W/tree") files as listed"

# The README's install without packages, prefix /usr: what the system
# reads from /etc goes to /etc, not below the prefix. GNUInstallDirs
# makes only the FULL directory /etc there; a destination of the relative
# CMAKE_INSTALL_SYSCONFDIR ("etc") is /usr/etc, where logrotate never
# looks, and the diagnostic logs grew for ever. Configured, not built:
# the destinations are in the install script.
cmake -S "$SRC" -B "$W/usr-build" -DCMAKE_INSTALL_PREFIX=/usr -DGS_TESTS=OFF -DGS_MANPAGES=OFF \
  >"$W/usr-configure.log" 2>&1 || fail "cmake with prefix /usr: $(tail -5 "$W/usr-configure.log")"
dests=$(sed -n 's/.*file(INSTALL DESTINATION "\([^"]*\)".*/\1/p' "$W/usr-build/dist/cmake_install.cmake" |
  sed 's|^${CMAKE_INSTALL_PREFIX}|/usr|' | sort -u)
grep -qx /etc/logrotate.d <<<"$dests" || fail "prefix /usr: no logrotate files in /etc/logrotate.d: $(tr '\n' ' ' <<<"$dests")"
! grep -q '^/usr/etc' <<<"$dests" || fail "prefix /usr installs into /usr/etc: $(grep '^/usr/etc' <<<"$dests" | tr '\n' ' ')"
ok "prefix /usr: logrotate files in /etc/logrotate.d, nothing in /usr/etc"

# The units name the installed programs and configuration.
# The unit's -c is the file the programs read without one (their --help's
# "else FILE"), whatever the prefix: the admin commands, `check`, and the
# exploder's `deliver` from the MTA read that one, so the service must too
# (with prefix /usr/local the units named /usr/local/etc/groupsrv/, which
# neither the programs nor the guides use).
gs_default=$(sed -n 's/^config: .*, else \(\/.*\)$/\1/p' <<<"$("$root/bin/groupsrv" --help)")
xp_default=$(sed -n 's/^config: .*, else \(\/.*\)$/\1/p' <<<"$("$root/bin/exploder" --help)")
[ -n "$gs_default" ] && [ -n "$xp_default" ] || fail "no default configuration in --help (a pattern is stale)"
grep -qxF "ExecStart=$PREFIX/bin/groupsrv -c $gs_default serve" "$root/lib/systemd/system/groupsrv.service" ||
  fail "groupsrv.service ExecStart: $(grep ExecStart "$root/lib/systemd/system/groupsrv.service"), not -c $gs_default"
grep -qxF "ExecStart=$PREFIX/bin/exploder -c $xp_default run" "$root/lib/systemd/system/exploder.service" ||
  fail "exploder.service ExecStart: $(grep ExecStart "$root/lib/systemd/system/exploder.service"), not -c $xp_default"

# A configuration that cannot serve stops the unit (RestartPreventExitStatus)
# instead of restarting it every few seconds: the unit lists the status
# serve really exits with for a bad key and for missing TLS files.
unit=$root/lib/systemd/system/groupsrv.service
prevent=$(sed -n 's/^RestartPreventExitStatus=//p' "$unit")
printf '[hsm]\nmodule = m\npin_source = p\n[server]\nlisen = 1\n' >"$W/bad.conf"
printf '[hsm]\nmodule = m\npin_source = p\n' >"$W/notls.conf"
for c in bad notls; do
  rc=0
  "$root/bin/groupsrv" -c "$W/$c.conf" serve >/dev/null 2>"$W/$c.err" || rc=$?
  [ "$rc" != 0 ] && [ "$rc" != 1 ] && grep -qw "$rc" <<<"$prevent" ||
    fail "groupsrv serve with $c.conf exits $rc ($(cat "$W/$c.err")), not in RestartPreventExitStatus=$prevent"
done
grep -qx 'RestartPreventExitStatus=64 78' "$root/lib/systemd/system/exploder.service" ||
  fail "exploder.service: $(grep RestartPrevent "$root/lib/systemd/system/exploder.service")"
ok "units: a configuration error stops them, it does not restart them (groupsrv $prevent, exploder 64 78)"

# Example configurations: every key known (a bad one is exit 5 / 78).
doc=$root/share/doc
# The database and audit paths are moved into the work directory: a
# package installed on this machine (package_deb_system) owns
# /var/lib/groupsrv and /var/log/groupsrv (a root-owned audit log left
# there stops its service user).
sed -e "s|/var/lib/groupsrv/|$W/|" -e "s|/var/log/groupsrv/|$W/|" "$doc/groupsrv/examples/groupsrv.conf" >"$W/gs.conf"
grep -q "^path = $W/audit.jsonl\$" "$W/gs.conf" || fail "groupsrv example: audit log path not replaced"
grep -q "^path = $W/groupsrv.db\$" "$W/gs.conf" || fail "groupsrv example: database path not replaced"
rc=0
"$root/bin/groupsrv" -c "$W/gs.conf" group list >/dev/null 2>"$W/gs.err" || rc=$?
[ "$rc" = 3 ] && grep -q "does not exist" "$W/gs.err" || fail "groupsrv example config: exit $rc: $(cat "$W/gs.err")"
sed -e "s|/var/spool/exploder|$W/spool|" -e "s|/var/log/exploder/|$W/|" "$doc/exploder/examples/exploder.conf" >"$W/xp.conf"
cmp -s "$W/xp.conf" "$doc/exploder/examples/exploder.conf" && fail "exploder example: paths not replaced"
rc=0
"$root/bin/exploder" -c "$W/xp.conf" list show nosuch@lists.example.org >/dev/null 2>"$W/xp.err" || rc=$?
[ "$rc" = 1 ] && grep -q "not found" "$W/xp.err" || fail "exploder example config: exit $rc: $(cat "$W/xp.err")"
ok "example configurations load"

# Purge answered yes deletes /var/lib/groupsrv whole (debian/groupsrv.postrm,
# debconf groupsrv/purge_keys): every token store the shipped guides make
# there is named in operations.md's "Removing", which says what is kept
# and what that answer deletes (pkcs11-tokens.md's NSS database was not).
stores=$(grep -hE 'install -d|provision-softhsm /|certutil -N' "$doc/groupsrv/operations.md" "$doc/groupsrv/pkcs11-tokens.md" |
  grep -oE '/var/lib/groupsrv/[A-Za-z0-9._-]+' | sort -u)
[ "$(wc -w <<<"$stores")" -ge 3 ] || fail "token stores the guides make under /var/lib/groupsrv: only '$stores' (a pattern is stale)"
removing=$(sed -n '/^### Removing$/,/^##/p' "$doc/groupsrv/operations.md")
for d in $stores; do
  grep -qF "\`$d\`" <<<"$removing" || fail "operations.md's 'Removing' does not name $d, a token store the guides make (purge deletes it)"
done
ok "operations.md's 'Removing' names every token store the guides make under /var/lib/groupsrv: $(tr '\n' ' ' <<<"$stores")"

for p in groupsrv exploder groupmail; do
  page=$root/share/man/man1/$p.1
  lexgrog "$page" | grep -q "\"$p - " || fail "$p.1: no NAME line: $(lexgrog "$page" 2>&1)"
  for width in 80 120; do
    warn=$(env -i PATH="$PATH" LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=$width \
      man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
    [ -z "$warn" ] || fail "$p.1 at width $width: $warn"
  done
  MANWIDTH=80 man -l "$page" 2>/dev/null | grep -q '^SYNOPSIS' || fail "$p.1 has no SYNOPSIS"
  # A code span (a message, a command) reads as in the page's source: a
  # run of spaces in one is the source's own, on one line of it, never a
  # line break with the next line's indentation (pandoc 2.17 kept it:
  # "certificate   sha256"; docs/man-codespans.awk). Up to the span's
  # first roff escape.
  spread=$(grep -o '\\f\[V\][^\\]*' "$page" | cut -c6- | { grep -oE '[^ ]+ {2,}[^ ]+' || true; } | sort -u |
    while IFS= read -r pair; do grep -qF -- "$pair" "$SRC/docs/$p.1.md" || printf "'%s' " "$pair"; done)
  [ -z "$spread" ] || fail "$p.1: code spans with spaces the source does not have: $spread"
done
ok "man pages: NAME lines, no groff warnings, code spans as their source has them"

# A man page is read where the programs are installed: a document it names
# is the installed one ($PREFIX/share/doc/...), never the source tree's
# docs/X.md, SECURITY.md or pkcs11-config/README.md, which a system
# installed from the packages does not have; nor one no package installs
# (the source tree's, the design notes), which a reader there cannot find;
# and every installed path it names is installed.
for p in groupsrv exploder groupmail; do
  # A path may break after a slash (docs/man.lua): joined again here.
  text=$(LC_ALL=C MANWIDTH=2000 man -l "$root/share/man/man1/$p.1" 2>/dev/null | col -b |
    sed -e ':a' -e 'N' -e '$!ba' -e 's|/\n[[:space:]]*|/|g')
  src_named=$(grep -oE "[A-Za-z0-9_./-]*[A-Za-z0-9_]\.md" <<<"$text" |
    grep -v "^$PREFIX/share/doc/" | sort -u | tr '\n' ' ' || true)
  [ -z "$src_named" ] || fail "$p.1 names $src_named as in the source tree, not where they are installed"
  # words may break across lines: joined here
  unshipped=$(tr -s ' \n\t' '   ' <<<"$text" | grep -oiE "source tree's|design notes" | sort -u | tr '\n' ' ' || true)
  [ -z "$unshipped" ] || fail "$p.1 names documents no package installs: $unshipped"
  named=$(grep -oE "$PREFIX/share/doc/[A-Za-z0-9_./-]*[A-Za-z0-9_]" <<<"$text" | sort -u)
  [ -n "$named" ] || fail "$p.1 names no installed document (a pattern is stale)"
  gone=
  while read -r d; do [ -e "$W/root$d" ] || gone+="$d "; done <<<"$named"
  [ -z "$gone" ] || fail "$p.1 names $gone, not installed"
  # Each page is in its program's package, and the exploder and groupmail
  # run on hosts without the group server's: a document of another
  # package is named with it, or a reader there looks for a file that is
  # not on that host.
  bare=
  while read -r d; do
    q=${d#"$PREFIX/share/doc/"} q=${q%%/*}
    [ "$q" = "$p" ] && continue
    [ "$(grep -oF "$d" <<<"$text" | wc -l)" = "$(grep -oF "$d in the $q package" <<<"$text" | wc -l)" ] ||
      bare+="$d "
  done <<<"$named"
  [ -z "$bare" ] || fail "$p.1 names $bare without the package that has it"
done
ok "man pages name the installed documents (another package's with its package), and every one is installed"

# The installed guides name each other by their source names (docs/X.md,
# docs/X.1.md for a man page): each one named is installed (X.md in one
# of the packages' documentation directories, X.1 among the man pages),
# and each image a guide shows is beside it. README.md and operations.md
# cited docs/performance.md for sizing, which no package installed.
unnamed=
while read -r f; do
  for ref in $(grep -oE '(^|[^A-Za-z0-9_./*-])docs/[A-Za-z0-9_-]+(\.1)?\.md' "$f" | sed 's|^[^d]*||' | sort -u); do
    n=${ref#docs/}
    case $n in
      *.1.md) [ -f "$root/share/man/man1/${n%.md}" ] ;;
      *) compgen -G "$doc/*/$n" >/dev/null ;;
    esac || unnamed+="${f#"$doc"/} names $ref; "
  done
  for img in $(grep -oE '!\[[^]]*\]\([^)]+\)' "$f" | sed -E 's/.*\(([^)]+)\)$/\1/'); do
    [ -f "$(dirname "$f")/$img" ] || unnamed+="${f#"$doc"/} shows $img; "
  done
done < <(find "$doc" -name '*.md')
[ -z "$unnamed" ] || fail "installed guides name documents no package installs: $unnamed"
grep -q 'docs/operations.md' "$doc/groupsrv/README.md" || fail "README.md names no docs/X.md (a pattern is stale)"
ok "every document the installed guides name by docs/X.md, and every image they show, is installed"

for f in groupsrv exploder; do
  # `su USER GROUP` names the service user, which only the package creates:
  # parsed here as root (package-deb-system.sh runs the real file).
  sed 's/^\([[:space:]]*su\) [a-z]* [a-z]*$/\1 root root/' "$root/etc/logrotate.d/$f" >"$W/lr.conf"
  logrotate -d -s "$W/logrotate.state" "$W/lr.conf" >"$W/lr.log" 2>&1 ||
    fail "logrotate $f: $(tail -5 "$W/lr.log")"
  grep -v '^#' "$root/etc/logrotate.d/$f" | grep -q audit && fail "logrotate $f names the audit log"
done
ok "logrotate files parse"
