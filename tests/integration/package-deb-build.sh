#!/usr/bin/env bash
# package-deb-build.sh SRC OUT: builds the Debian packages from this tree
# as the README says (`dpkg-buildpackage -us -uc -b`, in a copy of the
# tree so nothing lands next to the worktree), checks that their version
# is the programs' (scripts/version) and orders after the release
# debian/changelog names (a build from git upgrades it), that their
# maintainer scripts restart the services after an upgrade and stop them
# on removal, and checks them with lintian: every tag lintian reports
# (errors, warnings, info, pedantic) must be overridden with a reason in
# debian/*.lintian-overrides. The packages are left in OUT for
# package-deb-system.sh.
set -euo pipefail
SRC=$1 OUT=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

rm -rf "$OUT"
mkdir -p "$OUT/src"
# The tree as it is (uncommitted changes included), without build output.
tar -C "$SRC" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$OUT/src" -xf -
# The copy has no .git: it takes the checkout's version from .version.
version=$("$SRC/scripts/version" "$SRC")
"$SRC/scripts/version" --write "$OUT/src"
start=$(date +%s)
# The README's command; make may use every core (the machine's choice).
(cd "$OUT/src" && DEB_BUILD_OPTIONS="parallel=$(nproc)" dpkg-buildpackage -us -uc -b) >"$OUT/build.log" 2>&1 ||
  fail "dpkg-buildpackage: $(tail -30 "$OUT/build.log")"
ok "dpkg-buildpackage -us -uc -b in $(( $(date +%s) - start ))s"
rm -rf "$OUT/src"
for p in groupsrv exploder groupmail; do
  compgen -G "$OUT/${p}_*.deb" >/dev/null || fail "no $p package"
done
ls "$OUT"/*.deb | sed 's|.*/|  |'

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
  rm -rf "$ctl"
done
ok "maintainer scripts: restart after upgrade, stop on removal"

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
