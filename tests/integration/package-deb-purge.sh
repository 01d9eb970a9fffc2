#!/usr/bin/env bash
# package-deb-purge.sh SRC DEBS: what `dpkg --purge groupsrv` deletes, on
# the packages built by package_deb_build, installed in a scratch system:
# overlays over /etc, /usr and /var in a mount namespace of this test's
# own, so that this machine's files, dpkg database and debconf database
# are never touched (root only; package_deb_system installs for real).
#   - a plain install, then purge: the logs go; /var/lib/groupsrv (the
#     database and a token store with the group keys) and the group
#     server's files in /etc/groupsrv (the PIN) stay, and purge says so;
#   - the debconf answer groupsrv/purge_keys true (preseeded), then purge:
#     they go too.
set -euo pipefail
SRC=$1 DEBS=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
for p in groupsrv exploder groupmail; do compgen -G "$DEBS/${p}_*.deb" >/dev/null || fail "no $p package in $DEBS"; done
if [ "$(id -u)" != 0 ] || ! unshare -m --propagation private true 2>/dev/null; then
  echo "skip: needs root and mount namespaces (a scratch system of overlays)"
  exit 77
fi
W=$(mktemp -d "${GS_TEST_WORK:-/tmp}/deb-purge.XXXXXX")
trap 'rm -rf "$W"' EXIT

# Run in the namespace: the packages' own paths, as an admin meets them.
cat >"$W/inside.sh" <<'INSIDE'
set -euo pipefail
W=$1 DEBS=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
for d in etc usr var; do
  mkdir -p "$W/$d-up" "$W/$d-wk"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/$d-up,workdir=$W/$d-wk" "/$d"
done
# No systemd here: the maintainer scripts start and stop nothing. Nor
# man-db's index, which would take most of this test's time.
mount -t tmpfs tmpfs /run
rm -f /var/lib/man-db/auto-update
export DEBIAN_FRONTEND=noninteractive
install_all() {
  dpkg --force-unsafe-io -i "$DEBS"/groupsrv_*.deb >"$W/install.log" 2>&1 ||
    fail "dpkg -i: $(tail -20 "$W/install.log")"
  # What the admin makes (docs/operations.md): a token store with a key
  # on it, the PIN, the configuration, and what the server writes.
  install -d -m 0700 /var/lib/groupsrv/softhsm/tokens/t1
  echo key >/var/lib/groupsrv/softhsm/tokens/t1/key.object
  echo db >/var/lib/groupsrv/groupsrv.db
  echo 1234 >/etc/groupsrv/pin
  echo '[hsm]' >/etc/groupsrv/groupsrv.conf
  echo '{}' >/var/log/groupsrv/audit.jsonl
  echo log >/var/log/groupsrv.log
}
install_all
grep -i 'warning\|error' "$W/install.log" && fail "dpkg -i said: $(grep -i 'warning\|error' "$W/install.log")"
dpkg --force-unsafe-io --purge groupsrv >"$W/purge1.log" 2>&1 || fail "dpkg --purge: $(cat "$W/purge1.log")"
for f in /var/lib/groupsrv/softhsm/tokens/t1/key.object /var/lib/groupsrv/groupsrv.db /etc/groupsrv/pin /etc/groupsrv/groupsrv.conf; do
  [ -f "$f" ] || fail "a plain purge deleted $f: $(cat "$W/purge1.log")"
done
for f in /var/log/groupsrv /var/log/groupsrv.log; do
  [ ! -e "$f" ] || fail "a plain purge left $f"
done
grep -q 'purge keeps /var/lib/groupsrv' "$W/purge1.log" || fail "a plain purge does not say what it kept: $(cat "$W/purge1.log")"
echo "ok: a plain purge deletes the logs and keeps the token store, the database and /etc/groupsrv's files"

install_all
echo 'groupsrv groupsrv/purge_keys boolean true' | debconf-set-selections
dpkg --force-unsafe-io --purge groupsrv >"$W/purge2.log" 2>&1 || fail "dpkg --purge: $(cat "$W/purge2.log")"
for f in /var/lib/groupsrv /etc/groupsrv /var/log/groupsrv /var/log/groupsrv.log; do
  [ ! -e "$f" ] || fail "a purge with groupsrv/purge_keys true left $f: $(cat "$W/purge2.log")"
done
grep -q 'purge keeps' "$W/purge2.log" && fail "a purge with groupsrv/purge_keys true says it keeps: $(cat "$W/purge2.log")"
echo "ok: with groupsrv/purge_keys true a purge deletes them, and /etc/groupsrv with them"
INSIDE
unshare -m --propagation private bash "$W/inside.sh" "$W" "$DEBS"
