#!/usr/bin/env bash
# server-scale.sh BIN SRC P11FAULT: what grows with a group's history and
# size, measured in token calls (tests/p11fault counts them,
# GS_P11FAULT_COUNTS), never in seconds.
#   - a group whose secret key was rotated at every member removal is
#     loaded with a bounded number of token searches, not one per version
#     (SoftHSM's search reads every object: versions x objects at every
#     load, after every change of the database, in every worker)
#   - so is the key audit of `serve`'s start and of `check`, which also
#     reads each key's attributes in a few calls (every call is a round
#     trip on a remote token)
set -euo pipefail
BIN=$1 SRC=$2 P11FAULT=$3
[ -f "$P11FAULT" ] || { echo "FAIL: no p11fault module at $P11FAULT" >&2; exit 1; }
SRV_MEMBERS="alice bob"
. "$SRC/tests/integration/server-lib.sh"
counts=$work/p11.counts
calls() { awk -v f="$1" '$1 == f {n += $2} END {print n+0}' "$counts"; }
# The rotations are made on SoftHSM directly (p11fault writes its counts
# file at every call, too slow for hundreds of requests); the server is
# then started again behind p11fault for the measured request.
start_server

# 40 members removed: 40 more secret key versions (auto_rotate_secret_on_remove).
versions=30
for i in $(seq 1 $versions); do
  printf 'user%02d@example.org\n' "$i"
done > "$work/users"
while read -r u; do
  [ "$(status c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/$u")" = 201 ] ||
    fail "PUT $u: $(cat "$work/body")"
  [ "$(status c admin -X DELETE "$base/v1/groups/eng/members/$u")" = 200 ] ||
    fail "DELETE $u: $(cat "$work/body")"
done < "$work/users"
ok "$versions members added and removed"
stop_server
sed -i "s|^module = .*|module = $P11FAULT|" "$conf"
export GS_P11FAULT_TARGET=$module GS_P11FAULT_COUNTS=$counts
start_server
expect_status 200 "" "secret-keys (loads the group)" -- c alice "$base/v1/groups/eng/secret-keys"
expect_status 201 "" "a member added (the database changed)" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/new@example.org"

# The database changed: the next request loads the group again, with every
# secret key version.
f0=$(calls C_FindObjectsInit)
expect_status 200 "" "secret-keys after $versions rotations" -- c alice "$base/v1/groups/eng/secret-keys"
f1=$(calls C_FindObjectsInit)
n=$(/usr/bin/python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["keys"]))' "$work/body")
[ "$n" -ge "$versions" ] || fail "secret-keys answered $n versions, wanted at least $versions"
[ $((f1 - f0)) -le 10 ] || fail "loading a group of $n secret key versions took $((f1 - f0)) token searches"
ok "group of $n secret key versions loaded with $((f1 - f0)) token searches"
stop_server

# `check` audits every key version of every group, as serve does at start.
GS_P11FAULT_COUNTS=$work/check.counts gs check > "$work/check.out" 2>&1 ||
  fail "check: $(tail -n 5 "$work/check.out")"
searches=$(awk '$1 == "C_FindObjectsInit" {print $2}' "$work/check.counts")
[ "${searches:-0}" -le 20 ] || fail "check of $n secret key versions made $searches token searches"
ok "check of $n secret key versions made $searches token searches"
# ... and reads each key's attributes a bounded number of times: on a
# remote token (p11-kit's RPC, a network HSM) every read is a round trip.
reads=$(awk '$1 == "C_GetAttributeValue" {print $2}' "$work/check.counts")
[ "${reads:-0}" -le $((25 * n)) ] ||
  fail "check of $n secret key versions read attributes $reads times (about 20 a version wanted)"
ok "check of $n secret key versions read attributes $reads times"

# Each group key version (RSA) is read once at a load: its modulus, noted
# when the key is found (hsm/keys.c key_note_public), is what the load
# compares with the version's certificate; it exported the public key
# again for that (class, type, modulus, exponent: six more reads a
# version, each a round trip on a remote token). Measured as the reads
# that four more versions add to a load of the group.
load_reads() { # attribute reads of the load that the next request makes
  local r0 r1
  r0=$(calls C_GetAttributeValue)
  expect_status 200 "" "secret-keys (loads the group again)" -- c alice "$base/v1/groups/eng/secret-keys" >&2
  r1=$(calls C_GetAttributeValue)
  echo $((r1 - r0))
}
# One token worker: each worker loads a group into its own cache.
sed -i 's/^\[hsm\]$/[hsm]\nworkers = 1/' "$conf"
start_server
GS_P11FAULT_COUNTS=$work/cli.counts gs group rotate eng > "$work/rotate.out" 2>&1 ||
  fail "group rotate: $(cat "$work/rotate.out")"
reads1=$(load_reads)
for i in 1 2 3 4; do
  GS_P11FAULT_COUNTS=$work/cli.counts gs group rotate eng > "$work/rotate.out" 2>&1 ||
    fail "group rotate: $(cat "$work/rotate.out")"
done
reads5=$(load_reads)
per=$(( (reads5 - reads1) / 4 ))
[ "$per" -le 5 ] || fail "each group key version costs $per attribute reads at a load (its identity, its modulus once: 4 wanted)"
stop_server
ok "a group key version costs $per attribute reads at a load ($reads1 with two versions, $reads5 with six)"
