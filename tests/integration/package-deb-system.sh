#!/usr/bin/env bash
# package-deb-system.sh SRC DEBS: the Debian packages that
# package-deb-build.sh left in DEBS, installed on this machine (as root,
# as CI runs), used and purged again:
#   - the service users and their directories, with their owners and modes;
#   - `systemd-analyze verify` on the units, and the exposure
#     `systemd-analyze security --offline=true` gives them (<= 2.0, and the
#     figure docs/operations.md reports);
#   - `groupsrv --help`, `man groupsrv` (and the other two);
#   - a group server set up as docs/operations.md says (a SoftHSM token of
#     its own in /var/lib/groupsrv, the TLS key on it), `groupsrv check` as
#     the service user, `groupsrv serve` running as groupsrv;
#   - docs/postfix.md run step by step (package-postfix.sh);
#   - `groupsrv audit rotate` by root under the running server, logrotate
#     on the diagnostic logs, the audit log left alone;
#   - installed first as the release debian/changelog names (the same
#     packages, repacked with that version), then upgraded to this build's
#     version (a build from git: RELEASE+gitN.gHASH), which dpkg must take
#     as an upgrade: a conffile the admin changed, /etc/groupsrv, the
#     database, the audit log, the spool and the users kept as they were,
#     and the programs' --version the package's;
#   - remove: the programs go, all of that stays;
#   - purge: nothing left but the two system users (Debian policy keeps them).
# One run at a time on a machine (a lock), and the packages are purged
# whatever happens, so other test runs see a clean system.
set -euo pipefail
SRC=$1 DEBS=$2
PKGS=(groupsrv exploder groupmail)
fail() {
  echo "FAIL: $*" >&2
  [ -f /var/log/groupsrv.log ] && tail -n 20 /var/log/groupsrv.log >&2
  exit 1
}
ok() { echo "ok: $*"; }
. "$SRC/tests/lib/ports.sh"
installed() { dpkg-query -W -f='${db:Status-Status}\n' "$1" 2>/dev/null | grep -qv '^not-installed$'; }
# A plain purge keeps /var/lib/groupsrv, the group server's files in
# /etc/groupsrv and its audit log (the group keys and the record of their
# use: package_deb_purge checks that); this one
# is answered yes, so that nothing of this test is left on the machine.
purge() {
  echo 'groupsrv groupsrv/purge_keys boolean true' | debconf-set-selections
  flock /tmp/apt.lock dpkg --purge "${PKGS[@]}" >>"$W/purge.log" 2>&1
}

[ "$(id -u)" = 0 ] || fail "installs packages: run as root (CI does)"
for p in "${PKGS[@]}"; do compgen -G "$DEBS/${p}_*.deb" >/dev/null || fail "no $p package in $DEBS"; done
# Postfix, its delivery agents and the service users look in here, so it
# is in /tmp, not in the build tree: a checkout in a directory they cannot
# enter (/root on a fresh CI machine) would stop Postfix at its start.
W=$(mktemp -d /tmp/groupsrv-package.XXXXXX)
chmod 0755 "$W"
srv_pid=
cleanup() {
  set +e
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
  declare -F postfix_cleanup >/dev/null && postfix_cleanup
  # KEEP_INSTALLED=1 (debugging only) leaves a failed run's packages installed.
  if [ "${KEEP_INSTALLED:-0}" != 1 ]; then
    for p in "${PKGS[@]}"; do installed "$p" && { purge; break; }; done
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
exec 9>/tmp/groupsrv-package-test.lock
flock 9
for p in "${PKGS[@]}"; do installed "$p" && { echo "purging $p left by an earlier run" >&2; purge; }; done

# ---- install: the release, upgraded later to this build ----
# The release's packages: these, with the version debian/changelog names
# (or just before it, when this build is that release), so that the
# upgrade below is dpkg's upgrade from the release to this build.
version=$(dpkg-deb -f "$DEBS"/groupsrv_*.deb Version)
release=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
[ "$version" != "$release" ] || release="$release~0"
dpkg --compare-versions "$version" gt "$release" || fail "this build ($version) does not order after $release"
mkdir "$W/release"
for p in "${PKGS[@]}"; do
  dpkg-deb -R "$DEBS/${p}_"*.deb "$W/release/$p"
  sed -i -e "s/^Version: .*/Version: $release/" -e '/^Source: /d' "$W/release/$p/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -z1 -b "$W/release/$p" "$W/release/${p}_${release}.deb" >/dev/null
done
flock /tmp/apt.lock dpkg -i "$W/release/groupsrv_$release.deb" "$W/release/exploder_$release.deb" \
  "$W/release/groupmail_$release.deb" >"$W/install.log" 2>&1 || fail "dpkg -i: $(tail -20 "$W/install.log")"
grep -qi 'warning\|error\|fail' "$W/install.log" && fail "dpkg -i said: $(grep -i 'warning\|error\|fail' "$W/install.log")"
[ "$(dpkg-query -W -f='${Version}' groupsrv)" = "$release" ] || fail "installed: $(dpkg-query -W groupsrv)"
ok "installed ${PKGS[*]} $release"
for u in groupsrv:/var/lib/groupsrv exploder:/var/spool/exploder; do
  ent=$(getent passwd "${u%%:*}") || fail "no user ${u%%:*}"
  [ "$(cut -d: -f6,7 <<<"$ent")" = "${u#*:}:/usr/sbin/nologin" ] || fail "user ${u%%:*}: $ent"
  [ "$(cut -d: -f3 <<<"$ent")" -lt 1000 ] || fail "${u%%:*} is not a system user: $ent"
done
want_mode() { [ "$(stat -c '%U:%G %a' "$1")" = "$2" ] || fail "$1: $(stat -c '%U:%G %a' "$1"), want $2"; }
want_mode /etc/groupsrv "root:root 755"
want_mode /var/lib/groupsrv "groupsrv:groupsrv 700"
want_mode /var/log/groupsrv "groupsrv:groupsrv 750"
want_mode /var/spool/exploder "exploder:exploder 700"
want_mode /var/log/exploder "exploder:exploder 750"
ok "users and directories"

# ---- units ----
units=(/lib/systemd/system/groupsrv.service /lib/systemd/system/exploder.service)
# verify also runs `man 1 PROG` for Documentation=man:...: at a width other
# than man's default, man-db keeps no formatted copy in /var/cache/man (the
# package does not own those; man-db's cron clears them).
out=$(MANWIDTH=100 systemd-analyze verify "${units[@]}" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"
for doc in $(sed -n 's/^Documentation=//p' "${units[@]}" | tr ' ' '\n' | sed -n 's|^file:||p'); do
  [ -f "$doc" ] || fail "a unit's Documentation= names $doc, which is not installed"
done
ok "systemd-analyze verify: no complaint; Documentation= pages and files installed"
# systemd opens a unit's output file as root, before it switches to User=,
# following links: in a directory the service user may write, that user
# could point it at any file and have root open it for the service.
for f in $(sed -n 's/^Standard\(Output\|Error\)=\(append\|file\|truncate\)://p' "${units[@]}" | sort -u); do
  d=$(dirname "$f")
  [ "$(stat -c %u "$d")" = 0 ] && [ $(( 0$(stat -c %a "$d") & 022 )) = 0 ] ||
    fail "a unit writes its output to $f, in $d: $(stat -c '%U:%G %a' "$d"), which not only root may write"
done
ok "the units' output files are in directories only root may write"
for u in "${units[@]}"; do
  n=$(basename "$u")
  systemd-analyze security --offline=true "$u" >"$W/security-$n" 2>&1 || true
  level=$(sed -n "s/^→ Overall exposure level for $n: \([0-9.]*\) .*/\1/p" "$W/security-$n")
  [ -n "$level" ] || fail "no exposure for $n: $(tail -3 "$W/security-$n")"
  awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || fail "$n: exposure $level > 2.0: $(grep '✗' "$W/security-$n")"
  grep -q "| \`$n\` | $level |" "$SRC/docs/operations.md" ||
    fail "docs/operations.md does not report $n at $level: $(grep '✗' "$W/security-$n")"
  ok "systemd-analyze security --offline=true: $n exposure $level"
done

# ---- commands and manuals ----
groupsrv --help | grep -q '^usage: groupsrv' || fail "groupsrv --help"
exploder --help 2>&1 | grep -q '^usage: exploder' || fail "exploder --help"
groupmail --help 2>&1 | grep -q '^usage: groupmail' || fail "groupmail --help"
# (MANWIDTH: see systemd-analyze verify above.)
for p in groupsrv exploder groupmail; do
  page=$(MANPAGER=cat MANWIDTH=100 man "$p" 2>"$W/man.err") || fail "man $p: $(cat "$W/man.err")"
  grep -q "^NAME" <<<"$page" && grep -Eq "^ +$p +- " <<<"$page" || fail "man $p: no NAME: $(head -5 <<<"$page")"
done
man -w groupsrv | grep -qx /usr/share/man/man1/groupsrv.1.gz || fail "man -w groupsrv: $(man -w groupsrv)"
ok "--help and man pages of the three programs"
# The installed operations.md's links to its neighbours work (not .gz).
doc=/usr/share/doc/groupsrv
for l in $(grep -o '](\([a-z-]*\.md\))' "$doc/operations.md" | sed 's/^](\(.*\))$/\1/' | sort -u); do
  [ -f "$doc/$l" ] || fail "operations.md links to $l, which is not in $doc: $(ls "$doc")"
done
ok "operations.md's links resolve in $doc"

# ---- a group server, set up as docs/operations.md says ----
export SOFTHSM2_CONF=/var/lib/groupsrv/softhsm/softhsm2.conf
"$SRC/scripts/provision-softhsm" /var/lib/groupsrv/softhsm groupsrv >/dev/null
chown -R groupsrv:groupsrv /var/lib/groupsrv/softhsm
install -m 0600 -o groupsrv -g groupsrv /var/lib/groupsrv/softhsm/user-pin /etc/groupsrv/pin
take_port GSPORT CPORT
sed -e "s|^listen = 0.0.0.0:8443|listen = 127.0.0.1:$GSPORT|" -e "s|^listen = 0.0.0.0:8444|listen = 127.0.0.1:$CPORT|" \
  -e "s|^module = .*|module = ${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}|" \
  /usr/share/doc/groupsrv/examples/groupsrv.conf | install -m 0640 -o root -g groupsrv /dev/stdin /etc/groupsrv/groupsrv.conf
gs() { runuser -u groupsrv -- groupsrv "$@"; }
# gs_ok DESC ARGS...: gs ARGS, its output and exit status in the failure
gs_ok() {
  local desc=$1 rc=0
  shift
  gs "$@" >"$W/gs.out" 2>&1 || rc=$?
  [ "$rc" = 0 ] || fail "$desc: exit $rc: $(tail -n 20 "$W/gs.out")"
}
gs_ok "ca init as groupsrv" ca init --key rsa:2048
gs_ok "group create" group create eng --address eng@lists.example.org --key rsa:2048
gs_ok "tls init" tls init --dns localhost --out /var/lib/groupsrv/server.pem
install -m 0644 /var/lib/groupsrv/server.pem /etc/groupsrv/server.pem
MEMBERS=$W/members
install -d -m 0700 -o groupsrv -g groupsrv /var/lib/groupsrv/members
for m in alice bob; do
  gs_ok "member add $m" member add eng "$m@example.org" --issue-cert --out /var/lib/groupsrv/members
done
mv /var/lib/groupsrv/members "$MEMBERS"
gs check >"$W/check.out" 2>&1 || fail "groupsrv check as groupsrv: $(cat "$W/check.out")"
grep -q PROBLEM "$W/check.out" && fail "groupsrv check: $(cat "$W/check.out")"
ok "groupsrv check as the service user: $(grep -c ' OK' "$W/check.out") rows OK"
# As the unit runs it: the service user, the diagnostic log appended to.
runuser -u groupsrv -- /usr/bin/groupsrv -c /etc/groupsrv/groupsrv.conf serve >>/var/log/groupsrv.log 2>&1 &
srv_pid=$!
gs ca show >"$W/localca.pem"
for _ in $(seq 1 100); do
  curl -sS --cacert "$W/localca.pem" -o /dev/null "https://localhost:$GSPORT/healthz" 2>/dev/null && break
  kill -0 "$srv_pid" 2>/dev/null || fail "groupsrv serve exited"
  sleep 0.1
done
curl -sS --cacert "$W/localca.pem" -o /dev/null "https://localhost:$GSPORT/healthz" || fail "server not healthy"
ok "groupsrv serve runs as groupsrv, TLS key on the token"

# ---- docs/postfix.md, every step ----
. "$SRC/tests/integration/package-postfix.sh"

# ---- the audit log: rotated by root under the running server ----
audit=/var/log/groupsrv/audit.jsonl
before=$(wc -l <"$audit")
groupsrv audit rotate >"$W/rotate.out" || fail "audit rotate as root: $(cat "$W/rotate.out")"
want_mode "$audit" "groupsrv:groupsrv 600"
pf_send_encrypted "after the rotation" "$W/third.eml"
pf_wait_mail alice "after the rotation"
[ "$(wc -l <"$audit")" -gt 1 ] || fail "the server did not write on in the new audit file"
v=$(gs audit verify) || fail "audit verify: $v"
[[ "$v" == "ok: "*" lines in 2 files, chain head "* ]] || fail "audit verify: $v"
ok "audit rotate by root while serving ($before records sealed): $v"

# ---- logrotate: the diagnostic logs, never the audit log ----
audit_id=$(stat -c %i "$audit")
archive=$(sed -n 's/^sealed .* as \(.*\); .* continues the chain$/\1/p' "$W/rotate.out")
logrotate -f -s "$W/logrotate.state" /etc/logrotate.d/groupsrv /etc/logrotate.d/exploder >"$W/logrotate.log" 2>&1 ||
  fail "logrotate: $(cat "$W/logrotate.log")"
for l in /var/log/groupsrv.log /var/log/exploder/exploder.log; do
  [ -s "$l.1" ] || fail "logrotate did not rotate $l: $(ls -l "$(dirname "$l")")"
done
[ "$(stat -c %i "$audit")" = "$audit_id" ] && [ -f "$archive" ] || fail "logrotate touched the audit log"
gs_ok "audit chain after logrotate" audit verify
ok "logrotate rotated groupsrv.log and exploder.log, not the audit log"

# ---- purge ----
kill "$srv_pid"
wait "$srv_pid" 2>/dev/null || true
srv_pid=
postfix_cleanup

# ---- upgrade: from the release to this build ----
# A conffile the admin changed, the admin's files in /etc/groupsrv, the
# database, the audit log, the spool and the users: all kept as they were.
echo "# changed by the admin" >> /etc/logrotate.d/groupsrv
kept() {
  find /etc/groupsrv /etc/logrotate.d/groupsrv /var/lib/groupsrv /var/log/groupsrv /var/spool/exploder \
    -not -name '*.db-wal' -not -name '*.db-shm' \
    -printf '%p %u:%g %m\n' | sort
  sha256sum /etc/groupsrv/* /etc/logrotate.d/groupsrv /var/lib/groupsrv/groupsrv.db /var/log/groupsrv/audit.jsonl 2>/dev/null
  getent passwd groupsrv exploder
}
kept > "$W/kept.before"
flock /tmp/apt.lock dpkg -i "$DEBS"/groupsrv_*.deb "$DEBS"/exploder_*.deb "$DEBS"/groupmail_*.deb \
  >"$W/upgrade.log" 2>&1 || fail "dpkg -i over the installed packages: $(tail -20 "$W/upgrade.log")"
grep -qi 'warning\|error\|fail' "$W/upgrade.log" && fail "dpkg -i over them said: $(grep -i 'warning\|error\|fail' "$W/upgrade.log")"
for p in "${PKGS[@]}"; do
  grep -qF "Preparing to unpack .../${p}_${version}_" "$W/upgrade.log" &&
    grep -qF "Unpacking $p ($version) over ($release)" "$W/upgrade.log" ||
    fail "$p: not an upgrade from $release to $version: $(cat "$W/upgrade.log")"
  [ "$(dpkg-query -W -f='${Version}' "$p")" = "$version" ] || fail "after the upgrade: $(dpkg-query -W "$p")"
  [ "$("$p" --version)" = "$p $version" ] || fail "$p --version after the upgrade: $("$p" --version)"
done
kept > "$W/kept.after"
cmp -s "$W/kept.before" "$W/kept.after" || fail "the upgrade changed: $(diff "$W/kept.before" "$W/kept.after")"
gs check > "$W/check.out" 2>&1 || fail "check after the upgrade: $(grep PROBLEM "$W/check.out")"
ok "upgrade $release -> $version: the changed conffile, /etc/groupsrv, database, audit log, spool and users kept"

# ---- remove: the programs go, configuration and state stay (Debian policy) ----
flock /tmp/apt.lock dpkg -r "${PKGS[@]}" >"$W/remove.log" 2>&1 || fail "dpkg -r: $(tail -20 "$W/remove.log")"
for f in /usr/bin/groupsrv /usr/bin/exploder /usr/bin/groupmail /lib/systemd/system/groupsrv.service; do
  [ ! -e "$f" ] || fail "$f left after dpkg -r"
done
kept > "$W/kept.removed"
cmp -s "$W/kept.before" "$W/kept.removed" || fail "dpkg -r changed: $(diff "$W/kept.before" "$W/kept.removed")"
ok "remove: the programs gone; configuration, conffiles, database, audit log, spool and users kept"
purge || fail "dpkg --purge: $(tail -20 "$W/purge.log")"
for p in "${PKGS[@]}"; do installed "$p" && fail "$p still known to dpkg after purge"; done
left=$(find /etc /usr /lib /var/lib /var/log /var/spool /var/cache/man \
  \( -name '*groupsrv*' -o -name '*exploder*' -o -name '*groupmail*' \) -not -path "$W/*" 2>/dev/null || true)
[ -z "$left" ] || fail "left after purge: $left"
getent passwd groupsrv >/dev/null && getent passwd exploder >/dev/null || fail "purge removed a system user"
ok "purged: nothing left but the users groupsrv and exploder (kept by policy)"
