#!/usr/bin/env bash
# package-deb-build.sh SRC OUT: builds the Debian packages from this tree
# as the README says (`scripts/package`: dpkg-buildpackage -us -uc -b in a
# copy of the tree, so nothing lands next to the worktree), checks that
# their version, and that of every file the build names (.deb, .changes,
# .buildinfo), is the programs' (scripts/version) and orders after the
# release debian/changelog names (a build from git upgrades it), that their
# maintainer scripts restart the services after an upgrade and stop them
# on removal, and checks them with lintian: every tag lintian reports
# (errors, warnings, info, pedantic) must be overridden with a reason in
# debian/*.lintian-overrides; and that every /usr/share/doc path the
# packages' files name is in them. The packages are left in OUT for
# package-deb-system.sh.
set -euo pipefail
SRC=$1 OUT=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

rm -rf "$OUT"
mkdir -p "$OUT"
version=$("$SRC/scripts/version" "$SRC")
# (the commit built, read with its version: not one made while this runs)
commit=$(git -c safe.directory="$SRC" -C "$SRC" log -1 --format=%ct HEAD 2>/dev/null || true)
start=$(date +%s)
# The README's command; make may use every core (the machine's choice).
DEB_BUILD_OPTIONS="parallel=$(nproc)" "$SRC/scripts/package" --out "$OUT" >"$OUT/build.log" 2>&1 ||
  fail "scripts/package: $(tail -30 "$OUT/build.log")"
ok "scripts/package (dpkg-buildpackage -us -uc -b) in $(( $(date +%s) - start ))s"
for p in groupsrv exploder groupmail; do
  compgen -G "$OUT/${p}_*.deb" >/dev/null || fail "no $p package"
done
ls "$OUT"/*.deb | sed 's|.*/|  |'
# Every file the build wrote is named by that one version, and the
# .changes says it too (dpkg-buildpackage names them by the changelog).
for f in "$OUT"/*_*.deb "$OUT"/*.changes "$OUT"/*.buildinfo; do
  n=${f##*/}
  [[ "$n" == *_"${version}"_amd64.* ]] || fail "$n is not named by the version $version"
done
[ "$(grep -c . <<<"$(ls "$OUT"/*.changes)")" = 1 ] || fail "not one .changes: $(ls "$OUT")"
[ "$(sed -n 's/^Version: //p' "$OUT"/*.changes)" = "$version" ] ||
  fail ".changes says Version: $(sed -n 's/^Version: //p' "$OUT"/*.changes), not $version"

# Their version: the programs' (the one --version prints, checked against
# it in package_deb_system), and after the release debian/changelog names
# unless it is that release, so apt and dpkg upgrade an installed release.
release=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
for p in groupsrv exploder groupmail; do
  v=$(dpkg-deb -f "$OUT/${p}_"*.deb Version)
  [ "$v" = "$version" ] || fail "$p package version $v, scripts/version says $version"
done
[ "$version" = "$release" ] || dpkg --compare-versions "$version" gt "$release" ||
  fail "the build's version $version does not order after the release $release"
ok "packages of version $version (release $release)"

# Reproducible: dpkg takes SOURCE_DATE_EPOCH from the changelog's top
# entry and gives every file of the packages that time at most. The entry
# scripts/package writes for a build from git has the commit's date, so
# two builds of one commit are the same bytes; with the time of the build
# there (date -R), each build's files had another time.
if [ "$version" != "$release" ]; then
  for p in groupsrv exploder groupmail; do
    newest=$(dpkg-deb --fsys-tarfile "$OUT/${p}_"*.deb |
      /usr/bin/python3 -c 'import sys, tarfile; print(max(m.mtime for m in tarfile.open(fileobj=sys.stdin.buffer, mode="r|")))')
    [ "$newest" = "$commit" ] ||
      fail "$p package: its newest file is of $(date -u -d "@$newest"), not of the commit built ($(date -u -d "@$commit")): two builds differ"
  done
  ok "the packages' files are of the commit's time ($(date -u -d "@$commit")), not the build's"
fi

# The services' life cycle across upgrade and removal (systemd is not
# running here, so this reads what the maintainer scripts would do): an
# upgrade restarts a service that is running or enabled (never a stop in
# the preinst with nothing to start it again) and removal stops it.
for p in groupsrv exploder; do
  ctl=$OUT/control-$p
  dpkg-deb -e "$OUT/${p}_"*.deb "$ctl"
  grep -q 'deb-systemd-invoke stop' "$ctl/preinst" 2>/dev/null &&
    fail "$p preinst stops the service on upgrade: $(cat "$ctl/preinst")"
  grep -q '_dh_action=restart' "$ctl/postinst" && grep -q 'deb-systemd-invoke $_dh_action' "$ctl/postinst" ||
    fail "$p postinst does not restart the service after an upgrade: $(cat "$ctl/postinst")"
  grep -q '"$1" = remove' "$ctl/prerm" 2>/dev/null && grep -q "deb-systemd-invoke stop '$p.service'" "$ctl/prerm" ||
    fail "$p prerm does not stop the service on removal: $(cat "$ctl/prerm" 2>&1)"
  # Not the host's services when dpkg changes another system from outside
  # it (--root DIR --force-script-chrootless: DPKG_ROOT=DIR; package_deb_purge
  # runs it): every test for a running systemd also asks for no DPKG_ROOT.
  unguarded=$(grep -h '/run/systemd/system' "$ctl/postinst" "$ctl/prerm" "$ctl/postrm" | grep -v 'DPKG_ROOT' || true)
  [ -z "$unguarded" ] || fail "$p maintainer scripts act on the running systemd whatever DPKG_ROOT: $unguarded"
  rm -rf "$ctl"
done
ok "maintainer scripts: restart after upgrade, stop on removal, neither for a system changed from outside it"

# Purge (the group server's answered yes to groupsrv/purge_keys:
# package_deb_purge checks a plain one keeps the keys) removes what the
# guide had the admin make: every path of
# docs/operations.md's "Files and owners" table is one a postrm purge
# deletes (by name, under a directory it deletes, or by its glob), so
# that `apt purge groupsrv exploder` leaves no file of theirs behind and
# /etc/groupsrv goes with the last one (package_deb_system purges only
# the files its own set-up made).
# rm -r's arguments cover what is under them; rm -f's and rmdir's only
# themselves (or what their glob matches).
trees= names=
for p in groupsrv exploder; do
  ctl=$OUT/control-$p
  dpkg-deb -e "$OUT/${p}_"*.deb "$ctl"
  # (each path is "$DPKG_ROOT/PATH", or "$DPKG_ROOT"/GLOB: read as PATH)
  lines=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$ctl/postrm" | sed 's/2>.*//; s/||.*//' |
    sed -e 's/"\$DPKG_ROOT\([^"]*\)"/\1/g' -e 's/"\$DPKG_ROOT"//g')
  # A path not under $DPKG_ROOT is the running system's when dpkg changes
  # another from outside it (--root with --force-script-chrootless): an rm
  # or rmdir anywhere on a line (after a then, && or ;) with a path that
  # starts at /, quoted or not ("/var/log/groupsrv" is as bare).
  bare=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$ctl/postrm" | grep -E '(^|[;&|[:space:]])(rm|rmdir)[[:space:]]' |
    grep -E "[[:space:]][\"']?/" || true)
  [ -z "$bare" ] || fail "$p postrm removes a path not under \$DPKG_ROOT: $bare"
  trees+=" $(sed -n 's/^[[:space:]]*rm[[:space:]]\+-[a-z]*r[a-z]*[[:space:]]\+\(.*\)$/\1/p' <<<"$lines")"
  names+=" $(sed -n 's/^[[:space:]]*\(rm[[:space:]]\+-f\|rmdir\)[[:space:]]\+\(.*\)$/\2/p' <<<"$lines")"
  rm -rf "$ctl"
done
table=$(sed -n '/^### Files and owners$/,/^### /p' "$SRC/docs/operations.md" | sed -n 's/^| `\(\/[^`]*\)` |.*/\1/p')
[ "$(wc -l <<<"$table")" -ge 10 ] || fail "operations.md's 'Files and owners' table: $(wc -l <<<"$table") paths (a pattern is stale)"
left=
set -f # the postrm's globs are patterns here, not this machine's files
while read -r path; do
  path=${path%/}
  hit=
  for a in $trees; do
    [[ "$a" == /* ]] && { [ "$path" = "$a" ] || [[ "$path" == "$a"/* ]]; } && { hit=1; break; }
  done
  for a in $names; do
    # shellcheck disable=SC2053 # $a may be a glob on purpose (groupsrv.log.*)
    [[ "$a" == /* ]] && [[ "$path" == $a ]] && { hit=1; break; }
  done
  [ -n "$hit" ] || left+="$path "
done <<<"$table"
set +f
[ -z "$left" ] || fail "docs/operations.md's 'Files and owners' names, and no postrm purge removes: $left"
ok "purge removes every path of operations.md's 'Files and owners' ($(wc -l <<<"$table") paths)"

# lintian as root warns about itself on stderr; its report is stdout.
set +e
lintian --display-info --pedantic --tag-display-limit 0 --fail-on error,warning,info,pedantic \
  "$OUT"/groupsrv_*.changes >"$OUT/lintian.log" 2>"$OUT/lintian.err"
rc=$?
set -e
[ "$rc" = 0 ] || fail "lintian (exit $rc):
$(cat "$OUT/lintian.log" "$OUT/lintian.err")"
grep -q '^[EWIP]: ' "$OUT/lintian.log" && fail "lintian tags: $(cat "$OUT/lintian.log")"
ok "lintian: no tag left without an override"

# Every /usr/share/doc path the packages' own files name (the example
# configurations, the units' Documentation= and comments, the man pages,
# the guides) is a file or directory of the packages under that name:
# dh_compress gzips documentation it is not told to leave, and a pointer
# to X.md then leads nowhere (the file is X.md.gz). A man page is read as
# man shows it: docs/man.lua writes each path in roff's escapes (\% and
# \: after each slash), which the page's source has, not the path.
tree=$OUT/tree
rm -rf "$tree"
mkdir "$tree"
for p in groupsrv exploder groupmail; do dpkg-deb -x "$OUT/${p}_"*.deb "$tree"; done
named=$(find "$tree" -type f \( -path '*/examples/*' -o -path '*/systemd/system/*' -o -name '*.md' -o -name '*.md.gz' -o -name '*.1.gz' \) |
  while read -r f; do
    case $f in
      *.1.gz) LC_ALL=C MANWIDTH=2000 man -l "$f" 2>/dev/null | col -b | sed -e ':a' -e 'N' -e '$!ba' -e 's|/\n[[:space:]]*|/|g' ;;
      *.gz) zcat "$f" ;;
      *) cat "$f" ;;
    esac |
      { grep -oE '/usr/share/doc/[A-Za-z0-9_./-]*[A-Za-z0-9_/]' || true; } | sed "s|^|${f#"$tree"/}: |"
  done | sort -u)
[ -n "$named" ] || fail "no /usr/share/doc path named in the packages' files (a pattern is stale)"
grep -q '\.1\.gz: ' <<<"$named" || fail "no man page names a /usr/share/doc path (a pattern is stale)"
missing=
while read -r where path; do
  [ -e "$tree$path" ] || missing+="$where names $path, not in the packages; "
done <<<"$named"
[ -z "$missing" ] || fail "$missing"
ok "every /usr/share/doc path the packages name is there ($(wc -l <<<"$named") mentions)"
rm -rf "$tree"

# A source package (scripts/package -S): named by the version, and holding
# it in .version and its changelog, so that what is built from it is this
# version, not the release (a source package has no .git).
mkdir "$OUT/source" "$OUT/source2"
"$SRC/scripts/package" --out "$OUT/source" -us -uc -S -d >"$OUT/source.log" 2>&1 ||
  fail "scripts/package -S: $(tail -20 "$OUT/source.log")"
# Built again, a second later, from a copy of the tree without .git (a
# tarball's: its .version, SOURCE_DATE_EPOCH the commit's date) in which a
# file is older than the commit (edited before it was committed, or kept
# by a checkout): the same bytes. The changelog entry of a build from git
# has the commit's date, not the time of the build; and dpkg only lowers
# the files' times to it, so the old file went in with its own time.
sleep 1
copy2=$OUT/copy2
mkdir "$copy2"
tar -C "$SRC" --exclude='./build*' --exclude=./.git --exclude=./.version -cf - . | tar -C "$copy2" -xf -
"$SRC/scripts/version" --write "$copy2"
touch -d @1000000000 "$copy2/README.md"
if [ -n "$commit" ]; then
  SOURCE_DATE_EPOCH=$commit "$copy2/scripts/package" --out "$OUT/source2" -us -uc -S -d >"$OUT/source2.log" 2>&1 ||
    fail "scripts/package -S again: $(tail -20 "$OUT/source2.log")"
else # a tree without .git already
  "$copy2/scripts/package" --out "$OUT/source2" -us -uc -S -d >"$OUT/source2.log" 2>&1 ||
    fail "scripts/package -S again: $(tail -20 "$OUT/source2.log")"
fi
rm -rf "$copy2"
for f in "$OUT/source/groupsrv_$version.dsc" "$OUT/source/groupsrv_$version.tar."*; do
  cmp -s "$f" "$OUT/source2/${f##*/}" ||
    fail "two source builds of one tree differ in ${f##*/}: $(diff <(tar -xOf "$OUT/source/groupsrv_$version.tar."* "groupsrv-$version/debian/changelog" 2>/dev/null | head -5) \
      <(tar -xOf "$OUT/source2/groupsrv_$version.tar."* "groupsrv-$version/debian/changelog" 2>/dev/null | head -5)) $(diff <(tar -tvf "$OUT/source/groupsrv_$version.tar."* 2>/dev/null) \
      <(tar -tvf "$OUT/source2/groupsrv_$version.tar."* 2>/dev/null) | head -4)"
done
rm -rf "$OUT/source2"
[ -f "$OUT/source/groupsrv_$version.dsc" ] || fail "no groupsrv_$version.dsc: $(ls "$OUT/source")"
mkdir "$OUT/source/x"
tar -C "$OUT/source/x" -xf "$OUT/source/groupsrv_$version.tar."*
sv=$("$SRC/scripts/version" "$OUT/source/x/groupsrv-$version") || fail "scripts/version of the source package"
[ "$sv" = "$version" ] || fail "a build of the source package would be $sv, not $version"
[ "$(dpkg-parsechangelog -l "$OUT/source/x/groupsrv-$version/debian/changelog" -S Version)" = "$version" ] ||
  fail "the source package's changelog does not name $version"
rm -rf "$OUT/source"
ok "source package groupsrv_$version: .version and changelog say $version; built twice (again from a copy without .git, a file older than the commit), the same bytes"
