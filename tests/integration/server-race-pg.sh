#!/usr/bin/env bash
# server-race-pg.sh BIN SRC P11FAULT: two admin commands at once on a
# shared PostgreSQL database ([db] url, a private cluster from
# tests/lib/pg.sh), where the keys lock is an advisory lock: two `group
# create` of one name (one made, the other told it exists, one key per
# label) and two `member remove` that each rotate the secret (two
# versions), with p11fault holding each key generation 1.5 s so that the
# two overlap for certain.
set -euo pipefail
BIN=$1 SRC=$2 P11FAULT=$3
. "$SRC/tests/lib/pg.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/race-pg.XXXXXX")
trap 'pg_cleanup; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
pg_start
url=$(pg_createdb groupsrv)
"$SRC/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
export SOFTHSM2_CONF=$work/token/softhsm2.conf GS_P11FAULT_TARGET=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
export GS_P11FAULT_CONTROL=$work/p11fault.ctl
cat > "$work/groupsrv.conf" <<CONF
[hsm]
module = $P11FAULT
token = pkcs11:token=groupsrv
pin_source = $work/token/user-pin
[db]
url = $url
[audit]
path = $work/audit.jsonl
CONF
gs() { "$BIN/groupsrv" -c "$work/groupsrv.conf" "$@"; }
gs ca init --key rsa:2048 >/dev/null
labels() { # label counts on the token: none names more than one key
  pkcs11-tool --module "$GS_P11FAULT_TARGET" --login --pin "$(cat "$work/token/user-pin")" -O 2>/dev/null |
    sed -n 's/^ *label: *//p' | sort | uniq -c |
    awk '($2 ~ /^gs:(group|ca)/ && $1 > 2) || ($2 ~ /^gs:(secret|reject)/ && $1 > 1) {print; bad=1} END {exit bad}' ||
    fail "$1: a label on the token names more than one key (above)"
}

echo "delay C_GenerateKeyPair 1500" > "$work/p11fault.ctl"
set +e
gs group create eng --address eng@example.org --key rsa:2048 > "$work/c1.out" 2>&1 & p1=$!
gs group create eng --address eng@example.org --key rsa:2048 > "$work/c2.out" 2>&1 & p2=$!
wait "$p1"; rc1=$?; wait "$p2"; rc2=$?
set -e
[ "$rc1$rc2" = 03 ] || [ "$rc1$rc2" = 30 ] || fail "two group create: exit $rc1 ($(cat "$work/c1.out")), $rc2 ($(cat "$work/c2.out"))"
grep -q "group eng already exists" "$work/c1.out" "$work/c2.out" || fail "the loser's line: $(cat "$work/c1.out" "$work/c2.out")"
labels "two group create"
ok "two group create of one name on PostgreSQL: one made it, the other exit 3"

rm -f "$work/p11fault.ctl"
for m in m1 m2; do gs member add eng "$m@example.org" --issue-cert --out "$work" >/dev/null; done
echo "delay C_GenerateKey 1500" > "$work/p11fault.ctl"
set +e
gs member remove eng m1@example.org > "$work/r1.out" 2>&1 & p1=$!
gs member remove eng m2@example.org > "$work/r2.out" 2>&1 & p2=$!
wait "$p1"; rc1=$?; wait "$p2"; rc2=$?
set -e
[ "$rc1$rc2" = 00 ] || fail "two member remove: exit $rc1 ($(cat "$work/r1.out")), $rc2 ($(cat "$work/r2.out"))"
v=$(cat "$work/r1.out" "$work/r2.out" | sed -n 's/.*new secret key version \([0-9]*\).*/\1/p' | sort -u | wc -l)
[ "$v" = 2 ] || fail "two removals, secret versions: $(cat "$work/r1.out" "$work/r2.out")"
labels "two member remove"
ok "two member remove on PostgreSQL: $(cat "$work/r1.out" "$work/r2.out" | grep -o 'version [0-9]*' | tr '\n' ' ')"
