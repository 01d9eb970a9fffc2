#!/usr/bin/env bash
# package-deb-purge.sh SRC DEBS: what `dpkg --purge groupsrv` deletes, on
# the packages built by package_deb_build, installed in a scratch system:
# overlays over /etc, /usr and /var in a mount namespace of this test's
# own, so that this machine's files, dpkg database and debconf database
# are never touched (root only; package_deb_system installs for real).
#   - a plain install, then purge: the diagnostic log goes;
#     /var/lib/groupsrv (the database and a token store with the group
#     keys), the group server's files in /etc/groupsrv (the PIN) and the
#     audit log with its archives (the record of those keys' use) stay,
#     and purge says so;
#   - the debconf answer groupsrv/purge_keys true (preseeded), then purge:
#     they go too;
#   - a package of the versions whose purge deleted them all, upgraded
#     (or removed, and the new one installed over it), then purged: kept;
#   - installed and purged from outside a target root (dpkg --root
#     --force-script-chrootless): the purge deletes nothing outside it.
set -euo pipefail
SRC=$1 DEBS=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
for p in groupsrv exploder groupmail; do compgen -G "$DEBS/${p}_*.deb" >/dev/null || fail "no $p package in $DEBS"; done
if [ "$(id -u)" != 0 ] || ! unshare -m --propagation private true 2>/dev/null; then
  echo "skip: needs root and mount namespaces (a scratch system of overlays)"
  exit 77
fi
# This machine's /etc, /usr and /var are the overlays' lower layers, which
# must not change while they are mounted: not while package_deb_system
# (of this tree or another's) has the packages installed on it (its lock,
# held for its whole run), nor while it runs dpkg.
exec 9>/tmp/groupsrv-package-test.lock
flock 9
W=$(mktemp -d "${GS_TEST_WORK:-/tmp}/deb-purge.XXXXXX")
trap 'rm -rf "$W"' EXIT

# Run in the namespace: the packages' own paths, as an admin meets them.
cat >"$W/inside.sh" <<'INSIDE'
set -euo pipefail
DEBS=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "skip: $* (a scratch system of overlays)"; exit 77; }
# No systemd here (a /run of our own: deb-systemd-invoke and the units'
# daemon-reload see no /run/systemd/system), so the maintainer scripts
# start and stop nothing. The overlays' upper layers are in that tmpfs
# too, never on the disk of the test's work directory: that may be an
# overlayfs itself (a container's root), which the kernel refuses as an
# upper layer; and all of it goes with the namespace, however this ends.
mount -t tmpfs -o mode=0755 tmpfs /run || skip "no tmpfs on /run"
S=/run/gs-deb-purge
for d in etc usr var; do
  mkdir -p "$S/$d-up" "$S/$d-wk"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$S/$d-up,workdir=$S/$d-wk" "/$d" ||
    skip "no overlay on /$d"
done
# Nor man-db's index, which would take most of this test's time.
rm -f /var/lib/man-db/auto-update
export DEBIAN_FRONTEND=noninteractive
# Nothing of this machine's state decides the answers: the packages
# purged here if the machine has them (the exploder's files keep
# /etc/groupsrv), and debconf's answers for groupsrv forgotten (a
# groupsrv/purge_keys true left by a preseed would make the plain purge
# below an answered one).
dpkg --force-unsafe-io --purge groupsrv exploder groupmail >"$S/clean.log" 2>&1 ||
  fail "dpkg --purge of the machine's packages: $(cat "$S/clean.log")"
echo PURGE | debconf-communicate groupsrv >/dev/null 2>&1 || true
install_all() {
  dpkg --force-unsafe-io -i "${1:-$(echo "$DEBS"/groupsrv_*.deb)}" >"$S/install.log" 2>&1 ||
    fail "dpkg -i: $(tail -20 "$S/install.log")"
  # What the admin makes (docs/operations.md): a token store with a key
  # on it, the PIN, the configuration, and what the server writes.
  install -d -m 0700 /var/lib/groupsrv/softhsm/tokens/t1
  echo key >/var/lib/groupsrv/softhsm/tokens/t1/key.object
  echo db >/var/lib/groupsrv/groupsrv.db
  echo 1234 >/etc/groupsrv/pin
  echo '[hsm]' >/etc/groupsrv/groupsrv.conf
  echo '{}' >/var/log/groupsrv/audit.jsonl
  echo '{}' >/var/log/groupsrv/audit.jsonl.20261201T000000Z
  echo log >/var/log/groupsrv.log
}
install_all
grep -i 'warning\|error' "$S/install.log" && fail "dpkg -i said: $(grep -i 'warning\|error' "$S/install.log")"
dpkg --force-unsafe-io --purge groupsrv >"$S/purge1.log" 2>&1 || fail "dpkg --purge: $(cat "$S/purge1.log")"
# The audit log goes with the keys or not at all: a purge and a fresh
# install went on with the same keys and a new chain that verified, the
# record of their use gone.
for f in /var/lib/groupsrv/softhsm/tokens/t1/key.object /var/lib/groupsrv/groupsrv.db /etc/groupsrv/pin /etc/groupsrv/groupsrv.conf \
         /var/log/groupsrv/audit.jsonl /var/log/groupsrv/audit.jsonl.20261201T000000Z; do
  [ -f "$f" ] || fail "a plain purge deleted $f: $(cat "$S/purge1.log")"
done
[ ! -e /var/log/groupsrv.log ] || fail "a plain purge left /var/log/groupsrv.log"
grep -q 'purge keeps /var/lib/groupsrv .* and its audit log /var/log/groupsrv' "$S/purge1.log" ||
  fail "a plain purge does not say what it kept: $(cat "$S/purge1.log")"
echo "ok: a plain purge deletes the diagnostic log and keeps the token store, the database, /etc/groupsrv's files and the audit log"

install_all
echo 'groupsrv groupsrv/purge_keys boolean true' | debconf-set-selections
dpkg --force-unsafe-io --purge groupsrv >"$S/purge2.log" 2>&1 || fail "dpkg --purge: $(cat "$S/purge2.log")"
for f in /var/lib/groupsrv /etc/groupsrv /var/log/groupsrv /var/log/groupsrv.log; do
  [ ! -e "$f" ] || fail "a purge with groupsrv/purge_keys true left $f: $(cat "$S/purge2.log")"
done
grep -q 'purge keeps' "$S/purge2.log" && fail "a purge with groupsrv/purge_keys true says it keeps: $(cat "$S/purge2.log")"
echo "ok: with groupsrv/purge_keys true a purge deletes them, and /etc/groupsrv with them"

# Upgrading from a package built before the purge question (before
# 0.1.0+git1249): its postrm deleted /var/lib/groupsrv and the group
# server's files in /etc/groupsrv at every purge. Made here from this
# build with that postrm and a lower version (docs/operations.md,
# "Upgrading", says which ways from it are safe).
old=$S/old-deb
dpkg-deb -R "$DEBS"/groupsrv_*.deb "$old"
cat >"$old/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = "purge" ]; then
	rm -rf /var/lib/groupsrv /var/log/groupsrv
	rm -f /var/log/groupsrv.log /var/log/groupsrv.log.*
	rm -f /etc/groupsrv/groupsrv.conf /etc/groupsrv/pin /etc/groupsrv/server.pem \
		/etc/groupsrv/server.key /etc/groupsrv/clients-ca.pem /etc/groupsrv/ca.pem
fi
exit 0
POSTRM
rm -f "$old/DEBIAN/config" "$old/DEBIAN/templates"
sed -i 's/^Version: .*/Version: 0.0.1~old/' "$old/DEBIAN/control"
dpkg-deb -Znone -b "$old" "$S/groupsrv_old.deb" >/dev/null
kept() { # WHAT: the token store, the database and the PIN are there
  for f in /var/lib/groupsrv/softhsm/tokens/t1/key.object /var/lib/groupsrv/groupsrv.db /etc/groupsrv/pin; do
    [ -f "$f" ] || fail "$1 deleted $f"
  done
}
# The way operations.md gives: upgrade over it; a purge then keeps.
install_all "$S/groupsrv_old.deb"
grep -q purge_keys /var/lib/dpkg/info/groupsrv.postrm && fail "the old package's postrm names purge_keys"
install_all
grep -q purge_keys /var/lib/dpkg/info/groupsrv.postrm || fail "after the upgrade the postrm dpkg keeps is still the old one"
kept "an upgrade from the old package"
dpkg --force-unsafe-io --purge groupsrv >"$S/purge3.log" 2>&1 || fail "dpkg --purge: $(cat "$S/purge3.log")"
kept "a plain purge after an upgrade from the old package"
# The old package removed, not purged: its postrm stays registered
# (dpkg -l: rc) and a purge would run it; the new package installed over
# it first, the purge keeps.
install_all "$S/groupsrv_old.deb"
dpkg --force-unsafe-io --remove groupsrv >"$S/remove.log" 2>&1 || fail "dpkg --remove: $(cat "$S/remove.log")"
[ "$(dpkg-query -W -f '${db:Status-Abbrev}' groupsrv)" = "rc " ] || fail "removed: $(dpkg-query -W -f '${db:Status-Abbrev}' groupsrv)"
grep -q purge_keys /var/lib/dpkg/info/groupsrv.postrm && fail "the removed old package's postrm names purge_keys"
install_all
dpkg --force-unsafe-io --purge groupsrv >"$S/purge4.log" 2>&1 || fail "dpkg --purge: $(cat "$S/purge4.log")"
kept "a plain purge of the new package installed over the removed old one"
echo "ok: from a package whose purge deleted the keys: an upgrade, or the new package over a removed one, then purge keeps them"

# A system changed from outside it: dpkg --root T --force-script-chrootless
# (image builders; mmdebstrap's chrootless mode) runs the maintainer
# scripts here, with DPKG_ROOT=T. Their purge deletes T's diagnostic logs
# and spool,
# and nothing of the system they run on: the audit log, diagnostic log and
# spool here (made before, as a running server's are) stay.
T=$S/target
mkdir -p "$T/var/lib/dpkg/info" "$T/var/lib/dpkg/updates" "$T/var/cache/debconf" "$T/etc"
touch "$T/var/lib/dpkg/status"
cp /etc/passwd /etc/group /etc/debconf.conf "$T/etc/"
mine="/var/log/groupsrv/audit.jsonl /var/log/groupsrv.log /var/lib/groupsrv/groupsrv.db /var/spool/exploder/exploder.db
  /var/log/exploder/exploder.log /etc/groupsrv/exploder.conf /etc/groupsrv/pin"
for f in $mine; do mkdir -p "$(dirname "$f")" && echo here >"$f"; done
chrootless() { dpkg --root="$T" --force-script-chrootless --force-depends --force-unsafe-io "$@"; }
# The system dpkg runs on as one running systemd, its groupsrv and exploder
# enabled and running: what the maintainer scripts ask of its systemctl
# and deb-systemd-invoke is recorded (nothing may be: not the host's
# daemon-reload, nor a start, restart or stop of its services).
mkdir -p /run/systemd/system
for t in systemctl deb-systemd-invoke; do
  real=$(command -v "$t" || echo "/usr/bin/$t")
  printf '#!/bin/sh\necho "%s $*" >>%s/host-systemd.log\nexit 0\n' "$t" "$S" >"$real"
  chmod 0755 "$real"
done
chrootless -i "$DEBS"/groupsrv_*.deb "$DEBS"/exploder_*.deb >"$S/chrootless.log" 2>&1 ||
  fail "dpkg --root $T --force-script-chrootless -i: $(tail -20 "$S/chrootless.log")"
# again: an upgrade (the postinst's restart)
chrootless -i "$DEBS"/groupsrv_*.deb "$DEBS"/exploder_*.deb >>"$S/chrootless.log" 2>&1 ||
  fail "dpkg --root $T --force-script-chrootless -i again: $(tail -20 "$S/chrootless.log")"
for f in $mine; do
  mkdir -p "$(dirname "$T$f")" && echo target >"$T$f"
done
chrootless --purge groupsrv exploder >"$S/chrootless-purge.log" 2>&1 ||
  fail "dpkg --root $T --force-script-chrootless --purge: $(tail -20 "$S/chrootless-purge.log")"
for f in $mine; do
  [ "$(cat "$f" 2>/dev/null)" = here ] || fail "a purge of the packages in $T deleted $f of the system it ran on"
done
[ ! -s "$S/host-systemd.log" ] ||
  fail "installing, upgrading and purging the packages in $T asked the running system's systemd: $(sort -u "$S/host-systemd.log")"
for f in /var/log/groupsrv.log /var/spool/exploder /var/log/exploder /etc/groupsrv/exploder.conf; do
  [ ! -e "$T$f" ] || fail "a purge of the packages in $T left $T$f"
done
for f in /var/lib/groupsrv/groupsrv.db /etc/groupsrv/pin /var/log/groupsrv/audit.jsonl; do
  [ -f "$T$f" ] || fail "a plain purge of the packages in $T deleted $T$f"
done
echo "ok: dpkg --root --force-script-chrootless: a purge deletes the target's diagnostic logs and spool, nothing of the running system; install, upgrade and purge start, restart and stop none of its services"
INSIDE
flock /tmp/apt.lock unshare -m --propagation private bash "$W/inside.sh" "$DEBS"
