#!/usr/bin/env bash
# doc-operations.sh BIN SRC: docs/operations.md's procedures, their ```sh
# blocks taken from the document and run as written, in order, as a
# newcomer would, on throw-away SoftHSM tokens, with what the text says
# they print and leave checked:
#   - "Trying it out: a throw-away SoftHSM token";
#   - "A first configuration", on the example groupsrv.conf as shipped,
#     with a SoftHSM store made from the packages ("The token under
#     systemd": the shipped template, then "A real token" steps 2-3);
#   - "A real token", steps 1-6 on a SoftHSM store whose slot is still
#     uninitialised (what a new card is), then the server started on the
#     token's TLS key and reached with the local CA as --cacert;
#   - the key ceremony "Step by step (SoftHSM, two servers)", and the
#     .gsk file's signature checked with stock openssl as "The key shipment
#     file" shows.
# The only edits to the blocks: absolute paths (/tmp, /etc/groupsrv,
# /var/lib/groupsrv, /var/lib/gs-b) move into this test's directory, ./scripts/ is the source
# tree's, and `install -o groupsrv -g groupsrv` loses the owner (no such
# user here; the mode is checked); "A first configuration" also loses
# runuser, install's owner and systemctl, and its editor line becomes the
# move of the example's paths (see there).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/docblocks.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/doc-operations.XXXXXX")
srv_pid=
cleanup() {
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
doc=$SRC/docs/operations.md
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
export PATH="$BIN:$PATH"
unset GROUPSRV_CONF SOFTHSM2_CONF GS_USER_PIN GS_SO_PIN
. "$SRC/tests/lib/ports.sh"

# run_block NAME HEADING N DIR [SED...]: block N of HEADING, with the paths
# moved (and any further sed expressions), run by bash -e in DIR (stdin
# this function's), its output in $work/NAME.out; fails the test with the
# block and its output if the block fails.
run_block() {
  local name=$1 heading=$2 n=$3 dir=$4; shift 4
  doc_block "$doc" "$heading" "$n" |
    sed -e "s|/tmp/|$work/tmp/|g" -e "s|/etc/groupsrv/|$work/etc/groupsrv/|g" -e "s|/var/lib/gs-b/|$work/gs-b/|g" \
        -e "s|/var/lib/groupsrv|$work/var/lib/groupsrv|g" \
        -e "s|\./scripts/|$SRC/scripts/|g" -e 's| -o groupsrv -g groupsrv||' "$@" > "$work/$name.sh" ||
    fail "$name: the block is gone from docs/operations.md"
  (cd "$dir" && bash -e "$work/$name.sh") > "$work/$name.out" 2>&1 ||
    fail "$name, as written in docs/operations.md, failed:
$(cat "$work/$name.sh")
---- its output:
$(tail -n 20 "$work/$name.out")"
}
has() { grep -qE -- "$2" "$work/$1.out" || fail "$1: no line matching '$2' in: $(cat "$work/$1.out")"; }
# serve exited at its start: if for a port another test took since it was
# chosen (LOG says "Address already in use"), new ports into the
# configuration for the next try; any other exit fails with WHAT.
ports_taken_again() {
  local log=$1 what=$2 oport=$port ocport=$cport
  grep -q "Address already in use" "$log" || fail "$what: $(tail -n 5 "$log")"
  take_port port cport
  sed -i -e "s/^listen = 127.0.0.1:$oport\$/listen = 127.0.0.1:$port/" \
    -e "s/^listen = 127.0.0.1:$ocport\$/listen = 127.0.0.1:$cport/" -e "s/:$ocport\$/:$cport/" "$GROUPSRV_CONF"
}

# ---- Trying it out: a throw-away SoftHSM token ----
mkdir -p "$work/tmp"
run_block tryout 'Trying it out: a throw-away SoftHSM token' 1 "$SRC"
# ca init and group create say what the token gave up, as the text quotes it
[ "$(grep -c '^weakenings: none$' "$work/tryout.out")" = 2 ] ||
  fail "tryout: ca init and group create should each print 'weakenings: none': $(cat "$work/tryout.out")"
has tryout '^key policy: rewrap on the token'
has tryout '^all keys OK$'
# groupsrv(1): EMAIL.pem 0644, EMAIL.key 0600
[ "$(stat -c %a "$work/tmp/gs/alice@example.org.key")" = 600 ] || fail "tryout: alice's key is not 0600"
[ "$(stat -c %a "$work/tmp/gs/alice@example.org.pem")" = 644 ] || fail "tryout: alice's certificate is not 0644"
openssl x509 -in "$work/tmp/gs/alice@example.org.pem" -noout -ext subjectAltName | grep -q 'email:alice@example.org' ||
  fail "tryout: alice's certificate does not name her"
grep '"action":"member-add"' "$work/tmp/gs/audit.jsonl" | grep -q '"member":"alice@example.org"' ||
  fail "tryout: member add left no record in the trial's audit log"
ok "operations.md's 'Trying it out' ran as written: CA, group, alice's certificate, check"
# Trying it again: a new token with the old database fails as the text
# says (the block without -e, to see each command's answer); after the
# text's second block (the token and the database removed) it runs again
rm -rf "$work/tmp/gs-token"
doc_block "$doc" 'Trying it out: a throw-away SoftHSM token' 1 | sed -e "s|/tmp/|$work/tmp/|g" -e "s|\./scripts/|$SRC/scripts/|g" \
  > "$work/tryagain.sh"
(cd "$SRC" && bash "$work/tryagain.sh") > "$work/tryagain.out" 2>&1 || true
has tryagain 'a CA is already initialised in this database'
has tryagain 'CA key: key not found \(no key gs:ca on the token\)'
has tryagain 'gs:group:eng:v1 .*missing from the token'
run_block tryclean 'Trying it out: a throw-away SoftHSM token' 2 "$SRC"
run_block tryout2 'Trying it out: a throw-away SoftHSM token' 1 "$SRC"
has tryout2 '^all keys OK$'
ok "operations.md's 'Trying it out' again: the old database with a new token fails as the text says; removed, it runs"

# ---- A real token, steps 1-6: a SoftHSM store with an uninitialised slot ----
real=$work/real
mkdir -p "$real/tokens" "$work/etc/groupsrv" "$work/var/lib/groupsrv"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$real" > "$real/softhsm2.conf"
export SOFTHSM2_CONF=$real/softhsm2.conf MODULE=$module
# step 4's configuration, written before step 1 as step 1 says
cat > "$work/etc/groupsrv/groupsrv.conf" <<CONF
[hsm]
module = $module
token = pkcs11:token=groupsrv
pin_source = $work/etc/groupsrv/pin
[db]
path = $real/db/groupsrv.db
[audit]
path = $real/audit.jsonl
CONF
export GROUPSRV_CONF=$work/etc/groupsrv/groupsrv.conf
# step 4 makes every file it uses: nothing is put in place for it here
run_block real1 'A real token' 1 "$real"
has real1 'Slot 0 .*SoftHSM'
has real1 'token state: +uninitialized'
has real1 'RSA-PKCS-OAEP'
printf '%s\n%s\n' so-pin-1234 user-pin-5678 > "$real/pins"
# steps 2 and 3 run in one shell: step 3 reads the PINs step 2 read
{ doc_block "$doc" 'A real token' 2; doc_block "$doc" 'A real token' 3; echo '[ -z "${GS_USER_PIN:-}" ]'; } > "$real/steps23.sh"
sed -i -e "s|/etc/groupsrv/|$work/etc/groupsrv/|g" -e 's| -o groupsrv -g groupsrv||' "$real/steps23.sh"
(cd "$real" && bash -e "$real/steps23.sh" < "$real/pins") > "$work/real23.out" 2>&1 ||
  fail "A real token, steps 2-3, as written, failed: $(cat "$work/real23.out")"
[ "$(stat -c %a "$work/etc/groupsrv/pin")" = 600 ] && [ "$(cat "$work/etc/groupsrv/pin")" = user-pin-5678 ] ||
  fail "step 3 did not leave the user PIN in a 0600 file"
run_block real4 'A real token' 4 "$real"
has real4 '^cap mechanism CKM_RSA_PKCS_OAEP +yes'
has real4 '^cap trusted wrap +yes'
has real4 '^weakenings: none$'
has real4 '^member alice@example.org added to eng as member$'
[ "$(stat -c %a "$work/var/lib/groupsrv/alice@example.org.key")" = 600 ] ||
  fail "step 4: alice's key is not a 0600 file where the text says"
openssl verify -CAfile "$work/etc/groupsrv/ca.pem" "$work/var/lib/groupsrv/alice@example.org.pem" > /dev/null ||
  fail "step 4: alice's certificate is not the local CA's"
has real4 '^all keys OK$'
openssl x509 -in "$work/etc/groupsrv/ca.pem" -noout -subject | grep -q 'CN = Example Org groupsrv CA' ||
  fail "step 4's ca show did not write the CA certificate"
# step 5: the group key as the text says it must show; the PIN typed again
run_block real5 'A real token' 5 "$real" < <(printf 'user-pin-5678\n')
awk '/label: *gs:group:eng:v1/ {on=1; next} /Object;/ {on=0} on' "$work/real5.out" | sed -E 's/  +/ /g' > "$work/real5.key"
grep -q '^ *Access: sensitive, always sensitive, never extractable' "$work/real5.key" &&
  grep -q '^ *Usage: decrypt, unwrap$' "$work/real5.key" &&
  grep -q '^ *Allowed mechanisms: RSA-PKCS,RSA-PKCS-OAEP$' "$work/real5.key" ||
  fail "step 5: the group key is not shown as the text says: $(cat "$work/real5.out")"
ok "operations.md's 'A real token' steps 1-5 ran as written; the group key shows what step 5 says"
# step 6: the TLS key on the token, and the server on it
run_block real6 'A real token' 6 "$real"
has real6 '^key = pkcs11:token=groupsrv;object=tls;type=private$'
# "Token objects" names every label now on the token (the CA, the group's
# keys, the TLS key step 6 made): a reader listing the token with
# pkcs11-tool finds each object in its table
labels_re=$(sed -n '/^## Token objects$/,/^## /p' "$doc" | { grep -oE '^\| `[^`]+`' || true; } | sed -E 's/^\| `//; s/`$//' |
  sed -E 's/[.]/\\./g; s/<16 hex>/[0-9a-f]{16}/g; s/<[^>]+>/[^:]+/g' | paste -sd'|')
[ -n "$labels_re" ] || fail "Token objects: no label column found (a pattern is stale)"
GS_USER_PIN=user-pin-5678 pkcs11-tool --module "$module" --token-label groupsrv --login --pin env:GS_USER_PIN \
  --list-objects > "$real/objects" 2>/dev/null || fail "pkcs11-tool --list-objects on the step 6 token failed"
unnamed=$(awk '$1 == "label:" {print $2}' "$real/objects" | sort -u | { grep -vxE "$labels_re" || true; } | tr '\n' ' ')
[ -n "$(awk '$1 == "label:"' "$real/objects")" ] || fail "pkcs11-tool listed no labels: $(head -n 5 "$real/objects")"
[ -z "$unnamed" ] || fail "operations.md's Token objects has no row for the token's labels: $unnamed"
# step 6's configuration lines, as written, on loopback ports
take_port port cport
doc_block "$doc" 'A real token' 1 ini |
  sed -e "s|/etc/groupsrv/|$work/etc/groupsrv/|g" -e "s|^listen = 0.0.0.0:8443\$|listen = 127.0.0.1:$port|" \
      -e "s|^listen = 0.0.0.0:8444\$|listen = 127.0.0.1:$cport|" -e "s|:8444\$|:$cport|" >> "$GROUPSRV_CONF" ||
  fail "step 6's configuration block is gone"
grep -q "^listen = 127.0.0.1:$cport\$" "$GROUPSRV_CONF" || fail "step 6 sets no [certsrv] listen: $(cat "$GROUPSRV_CONF")"
for attempt in 1 2 3; do
  groupsrv serve > "$real/serve.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS --cacert "$work/etc/groupsrv/ca.pem" --resolve "groupsrv.example.org:$port:127.0.0.1" \
      "https://groupsrv.example.org:$port/healthz" > "$real/healthz" 2>/dev/null && break 2
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$srv_pid" 2>/dev/null && fail "serve on the token's TLS key never answered: $(tail -n 5 "$real/serve.log")"
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=
  # the port was free when chosen; another test may have taken it since
  ports_taken_again "$real/serve.log" "serve on the token's TLS key exited"
done
grep -q '"status":"ok"' "$real/healthz" || fail "no healthy server on the token's TLS key: $(tail -n 5 "$real/serve.log")"
# the certificate server members are sent to (membership-cert) answers under the certificate's name
certsrv=$(curl -fsS --cacert "$work/etc/groupsrv/ca.pem" --resolve "groupsrv.example.org:$port:127.0.0.1" \
  "https://groupsrv.example.org:$port/v1/groups/eng" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["certificate_server"])') ||
  fail "no discovery answer for eng"
curl -sS -o /dev/null --cacert "$work/etc/groupsrv/ca.pem" --resolve "groupsrv.example.org:$cport:127.0.0.1" "$certsrv/" 2> "$real/certsrv.err" ||
  fail "step 6: the advertised certificate server $certsrv does not verify with the local CA: $(cat "$real/certsrv.err")"
# step 8: the backup block, as root, while this server runs: first before
# any `audit rotate` (no archive yet: a cp of audit.jsonl.2* exits 1 there),
# then after one, whose archive it copies. This test's database and audit
# log lie in $real, its /etc/groupsrv in $work/etc.
step8=(-e "s|$work/var/lib/groupsrv/groupsrv.db|$real/db/groupsrv.db|g" -e "s|/var/log/groupsrv|$real|g"
       -e "s|-C /etc |-C $work/etc |" -e "s|/var/backups/|$work/backups/|g")
run_block real8 'A real token' 7 "$real" "${step8[@]}"
[ -z "$(ls "$real" | grep '^audit\.jsonl\.2')" ] || fail "step 8: an archive before any audit rotate"
groupsrv audit rotate > /dev/null
run_block real8 'A real token' 7 "$real" "${step8[@]}"
bak=$work/backups/groupsrv
[ "$(stat -c %a "$bak")" = 700 ] && [ "$(stat -c %a "$bak/groupsrv.db")" = 600 ] ||
  fail "step 8: the backup is readable by others: $(ls -la "$bak")"
ls "$bak" | grep -q '^audit\.jsonl\.2' || fail "step 8: the audit archive was not copied: $(ls "$bak")"
# the token store, with the command the text after the block gives (here
# $real/tokens), under root's usual umask: the archive is for root alone
tokcp=$(tr '\n' ' ' < "$doc" | sed 's/  */ /g' | grep -o 'copy it as root with its owners, `[^`]*`' |
  sed 's/^[^`]*`//; s/`$//') || fail "step 8 no longer says how to copy the token store"
tokcp=${tokcp//\/var\/lib\/groupsrv/$real}; tokcp=${tokcp//\/var\/backups\//$work/backups/}
tokcp=${tokcp/ softhsm/ tokens}
(umask 022; eval "$tokcp") || fail "step 8's token store copy failed: $tokcp"
[ "$(stat -c %a "$work/backups/groupsrv-token.tar")" = 600 ] ||
  fail "step 8: the token store's copy is readable by others: $(ls -l "$work/backups/groupsrv-token.tar") ($tokcp)"
# the text's check of the copy: nothing on this one; an empty token.object
# (what tar copies while a login rewrites it: the token is gone from the
# copy) or key object (a key being made) is named
tokck=$(tr '\n' ' ' < "$doc" | sed 's/  */ /g' | grep -o 'Check the copy: `[^`]*`' | sed 's/^[^`]*`//; s/`$//') ||
  fail "step 8 does not say how to check the token store's copy (SoftHSM rewrites token.object at every login)"
tokck=${tokck//\/var\/backups\//$work/backups/}
out=$(eval "$tokck") && [ -z "$out" ] || fail "step 8: the check of a good token store copy: $out ($tokck)"
mkdir "$work/torn"; tar -C "$work/torn" -xpf "$work/backups/groupsrv-token.tar"
: > "$(echo "$work"/torn/tokens/*/token.object)"
tar -C "$work/torn" -cpf "$work/backups/torn.tar" tokens
out=$(eval "${tokck//groupsrv-token.tar/torn.tar}") && grep -q '/token\.object$' <<< "$out" ||
  fail "step 8: the check of a token store copy with an empty token.object names nothing: $out"
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "serve exited non-zero at SIGTERM: $(tail -n 5 "$real/serve.log")"
srv_pid=
ok "step 6: serve on the token's TLS key, reached by name with the local CA as --cacert"
# step 8's restore of everything into a fresh directory, the old one gone:
# the configuration and PIN from the tar, the database, the audit log with
# its archive, and the token store, whose softhsm2.conf names its new place
new=$work/restored
mkdir -m 0700 "$new" "$new/db" "$new/log" "$new/etc"
mv "$real" "$work/real-gone"; mv "$work/etc/groupsrv" "$work/etc-gone"
tar -C "$new/etc" -xpf "$bak/etc-groupsrv.tar"
cp -p "$bak/groupsrv.db" "$new/db/"
cp -p "$bak"/audit.jsonl* "$new/log/"
tar -C "$new" -xpf "$work/backups/groupsrv-token.tar"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$new" > "$new/softhsm2.conf"
sed -i -e "s|$work/etc/groupsrv/|$new/etc/groupsrv/|g" -e "s|$real/db/|$new/db/|" -e "s|$real/audit|$new/log/audit|" \
  "$new/etc/groupsrv/groupsrv.conf"
export GROUPSRV_CONF=$new/etc/groupsrv/groupsrv.conf SOFTHSM2_CONF=$new/softhsm2.conf
groupsrv check > "$work/restored.check" 2>&1 || fail "step 8: check on the restored copies: $(grep -v '^cap' "$work/restored.check")"
grep -q '^all keys OK$' "$work/restored.check" || fail "step 8: restored keys: $(cat "$work/restored.check")"
groupsrv audit verify > "$work/restored.verify" 2>&1 || fail "step 8: the restored audit log: $(cat "$work/restored.verify")"
grep -q ' in 2 files, ' "$work/restored.verify" || fail "step 8: the restored audit log lacks its archive: $(cat "$work/restored.verify")"
for attempt in 1 2 3; do
  groupsrv serve > "$new/serve.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS --cacert "$new/etc/groupsrv/ca.pem" --resolve "groupsrv.example.org:$port:127.0.0.1" \
      --cert "$work/var/lib/groupsrv/alice@example.org.pem" --key "$work/var/lib/groupsrv/alice@example.org.key" \
      "https://groupsrv.example.org:$port/v1/groups/eng/secret-keys" > "$new/alice.json" 2>/dev/null && break 2
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$srv_pid" 2>/dev/null && break
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=
  # step 6's ports were free when it stopped; another test may have taken one since
  ports_taken_again "$new/serve.log" "serve on the restored copies"
done
[ -n "$srv_pid" ] || fail "serve on the restored copies: no free port in 3 tries"
grep -q '"version":1,' "$new/alice.json" || fail "serve on the restored copies: no secret key for alice: $(cat "$new/alice.json") $(tail -n 5 "$new/serve.log")"
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "restored serve exited non-zero at SIGTERM: $(tail -n 5 "$new/serve.log")"
srv_pid=
groupsrv audit verify > "$work/restored.verify" 2>&1 || fail "step 8: the audit log after serving the restore: $(cat "$work/restored.verify")"
mv "$work/etc-gone" "$work/etc/groupsrv"
ok "step 8: database, audit log and archive, /etc/groupsrv and the token store backed up while serving, restored into a fresh directory and served"
unset GROUPSRV_CONF

# ---- Installing the packages, "A first configuration": the example configuration as shipped ----
# The blocks in order, from the packages' example (dist/examples) with the
# edits the first block's comment names: the SoftHSM module and token fit
# already, so the edit here only moves the example's absolute paths into
# this test's directory (the listen addresses are not used: check only).
# No service user here: runuser and install's owner go; no systemctl.
# The token as a package user makes it ("The token under systemd": a
# SoftHSM store of groupsrv's own from the shipped template, then "A real
# token" steps 2-3), not with scripts/provision-softhsm, which the
# packages do not have. The template is pkcs11-config/'s in the tree.
fc=$work/fc
mkdir -p "$fc/etc/groupsrv" "$fc/var/lib/groupsrv" "$fc/var/log/groupsrv"
fc_paths=(-e "s|$work/etc/groupsrv/|$fc/etc/groupsrv/|g" -e "s|$work/var/lib/groupsrv|$fc/var/lib/groupsrv|g")
{ doc_block "$doc" 'The token under systemd' 1; doc_block "$doc" 'A real token' 2; doc_block "$doc" 'A real token' 3; } |
  sed -e "s|/etc/groupsrv/|$fc/etc/groupsrv/|g" -e "s|/var/lib/groupsrv|$fc/var/lib/groupsrv|g" \
    -e "s|/usr/share/doc/groupsrv/examples/softhsm2.conf.template|$SRC/pkcs11-config/softhsm2.conf.template|" \
    -e "s|MODULE=/usr/lib/softhsm/libsofthsm2.so|MODULE=$module|" -e 's| -o groupsrv -g groupsrv||' > "$fc/token.sh" ||
  fail "the SoftHSM store from the packages: a block is gone from docs/operations.md"
(cd "$fc" && bash -e "$fc/token.sh" < <(printf '%s\n%s\n' so-pin-fc1 user-pin-fc2)) > "$work/fctoken.out" 2>&1 ||
  fail "The token under systemd, a store from the packages, with steps 2-3, failed: $(cat "$fc/token.sh" "$work/fctoken.out")"
[ "$(stat -c %a "$fc/var/lib/groupsrv/softhsm/tokens")" = 700 ] && [ "$(cat "$fc/etc/groupsrv/pin")" = user-pin-fc2 ] ||
  fail "the SoftHSM store from the packages: no 0700 token directory or no PIN file"
run_block first1 'A first configuration' 1 "$fc" "${fc_paths[@]}" \
  -e "s|/usr/share/doc/groupsrv/examples/|$SRC/dist/examples/|" -e 's| -o root -g groupsrv||' \
  -e "s|^editor \\([^ ]*\\).*|sed -i -e 's:/etc/groupsrv/:$fc/etc/groupsrv/:' -e 's:/var/lib/groupsrv/:$fc/var/lib/groupsrv/:' -e 's:/var/log/groupsrv/:$fc/var/log/groupsrv/:' -e 's:^module = .*:module = $module:' \\1|"
[ "$(stat -c %a "$fc/etc/groupsrv/groupsrv.conf")" = 640 ] || fail "first configuration: groupsrv.conf is not 0640"
export GROUPSRV_CONF=$fc/etc/groupsrv/groupsrv.conf SOFTHSM2_CONF=$fc/etc/groupsrv/softhsm2.conf
run_block first2 'A first configuration' 2 "$fc" "${fc_paths[@]}" -e 's|^runuser -u groupsrv -- ||' -e '/^systemctl /d'
has first2 '^tls cert +OK'
has first2 '^tls key +OK'
has first2 '^all keys OK$'
ok "operations.md's 'A first configuration' ran as written on the example configuration: check finds no problem"
unset GROUPSRV_CONF

# ---- The key ceremony, step by step: server A exports to server B ----
A=$work/A B=$work/B
mkdir -p "$A" "$B"
"$SRC/scripts/provision-softhsm" "$A/token" groupsrv > /dev/null
for side in A B; do
  d=${!side}
  if [ "$side" = A ]; then tok=groupsrv; pins=$A/token; else tok=groupsrv-b; pins=$work/gs-b/token; fi
  cat > "$d/${side,}.conf" <<CONF
[hsm]
module = $module
token = pkcs11:token=$tok
pin_source = $pins/user-pin
[db]
path = $d/db/groupsrv.db
[audit]
path = $d/audit.jsonl
CONF
done
export SOFTHSM2_CONF=$A/token/softhsm2.conf
groupsrv -c "$A/a.conf" ca init > /dev/null
run_block cer1 'Step by step (SoftHSM, two servers)' 1 "$A"
has cer1 '^group eng created: key version 1'
# step 2 runs on B: its own token store (the block exports it)
run_block cer2 'Step by step (SoftHSM, two servers)' 2 "$B"
has cer2 '^sha256( [0-9a-f]{4}){16}$'
label=$(sed -n 's/^transport key \(gs:transport:[0-9a-f]*\) made .*/\1/p' "$work/cer2.out")
[ -n "$label" ] || fail "step 2 did not name the transport key: $(cat "$work/cer2.out")"
cp "$B/b-transport.pem" "$A/"
# step 3: the SO's PIN, as a 0600 file named in A's configuration
sed -i "/^\[hsm\]/a so_pin_source = $A/token/so-pin" "$A/a.conf"
run_block cer4 'Step by step (SoftHSM, two servers)' 3 "$A"
grep -qF "$(grep '^sha256 ' "$work/cer2.out")" "$work/cer4.out" ||
  fail "the export did not print the fingerprint B read out: $(cat "$work/cer4.out")"
# step 5: A's CA certificate travels with the file
(cd "$A" && groupsrv -c a.conf ca show > a-ca.pem)
cp "$A/eng.gsk" "$A/a-ca.pem" "$B/"
export SOFTHSM2_CONF=$work/gs-b/token/softhsm2.conf
run_block cer5 'Step by step (SoftHSM, two servers)' 4 "$B"
has cer5 '^group +eng +v1 +gs:group:eng:v1 .* OK \(imported copy\)$'
has cer5 '^all keys OK$'
# step 6: the copies show "Access: sensitive", not never extractable
# steps 6 and 7 set MODULE and the PIN's variable themselves
unset MODULE
run_block cer6 'Step by step (SoftHSM, two servers)' 5 "$B" -e "s|^MODULE=/usr/lib/softhsm/libsofthsm2.so\$|MODULE=$module|"
awk '/label: *gs:group:eng:v1/ {on=1; next} /Object;/ {on=0} on' "$work/cer6.out" | sed -E 's/  +/ /g' > "$work/cer6.key"
grep -q '^ *Access: sensitive$' "$work/cer6.key" || fail "step 6: the copy does not show 'Access: sensitive': $(cat "$work/cer6.out")"
# step 7: the import (step 5) deleted the transport key, both halves: the
# listing in step 6's shell finds none; then the deletion by hand, on a
# transport key made again, with the label it printed
cer7() { # N LABEL: step 7's block N in step 6's shell
  { doc_block "$doc" 'Step by step (SoftHSM, two servers)' 5 | grep -E '^(MODULE|GS_USER_PIN)='
    doc_block "$doc" 'Step by step (SoftHSM, two servers)' "$1"; } |
    sed -e "s|/var/lib/gs-b/|$work/gs-b/|g" -e "s|^MODULE=/usr/lib/softhsm/libsofthsm2.so\$|MODULE=$module|" \
        -e "s|gs:transport:[0-9a-f]*|$2|g" > "$work/cer7-$1.sh" || fail "cer7: the blocks are gone from docs/operations.md"
  (cd "$B" && bash -e "$work/cer7-$1.sh") > "$work/cer7.out" 2>&1 ||
    fail "cer7 (step 7's block $1 in step 6's shell), as written in docs/operations.md, failed: $(cat "$work/cer7-$1.sh") ---- $(tail -n 20 "$work/cer7.out")"
}
b_objects() {
  GS_USER_PIN=$(cat "$work/gs-b/token/user-pin") pkcs11-tool --module "$module" --token-label groupsrv-b --login \
    --pin env:GS_USER_PIN --list-objects > "$work/cer7.objects" 2>&1 || fail "cannot list B's objects: $(cat "$work/cer7.objects")"
}
has cer5 "^transport key $label deleted \(both halves\)"
cer7 6 "$label"
has cer7 '^no transport key left on B$'
# a listing that fails (a shell where SoftHSM's store is another: no
# token groupsrv-b) says so, never "no transport key left"
SOFTHSM2_CONF=$work/no-such-softhsm2.conf cer7 6 "$label"
! grep -q 'no transport key left' "$work/cer7.out" ||
  fail "step 7's listing, failing, says no transport key is left: $(cat "$work/cer7.out")"
b_objects
! grep -q "gs:transport:" "$work/cer7.objects" || fail "the import left the transport key: $(cat "$work/cer7.objects")"
(cd "$B" && groupsrv -c b.conf token transport-key --out left.pem) > "$work/cer7.out" 2>&1 || fail "a second transport key on B"
left=$(sed -n 's/^transport key \(gs:transport:[0-9a-f]*\) made .*/\1/p' "$work/cer7.out")
cer7 7 "$left"
b_objects
! grep -q "gs:transport:" "$work/cer7.objects" || fail "step 7's deletion left the transport key: $(cat "$work/cer7.objects")"
ok "operations.md's key ceremony, steps 1-7, ran as written: B holds copies, the import deleted the transport key, and step 7 deletes one left"

# ---- The key shipment file: its signature with stock openssl ----
export SOFTHSM2_CONF=$A/token/softhsm2.conf
run_block gsk 'The key shipment file (`.gsk`)' 1 "$A"
has gsk '^Verified OK$'
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); assert m["format"] == "groupsrv-key-shipment-1" and m["group"]["name"] == "eng", m' \
  "$A/manifest.json" || fail "the manifest cut out by the recipe is not the shipment's JSON"
ok "operations.md's .gsk recipe: the manifest cut out with dd verifies with the CA's key"

# ---- pkcs11-config/README.md, "SoftHSM2": a token store the service user can open ----
# Run as root, as a deployment is; the service user is `nobody` here (no
# groupsrv user on a test machine), and it must be able to log in.
# (Root only; and the work directory's parents must let `nobody` through.)
mkdir -p "$work/var/lib/groupsrv"
chmod 755 "$work" "$work/var" "$work/var/lib" "$work/var/lib/groupsrv"
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && runuser -u nobody -- test -x "$work/var/lib/groupsrv"; then
  unset SOFTHSM2_CONF
  doc_block "$SRC/pkcs11-config/README.md" 'SoftHSM2 (tests, demo, small deployments)' 1 |
    sed -e "s|/var/lib/groupsrv|$work/var/lib/groupsrv|g" -e "s|^scripts/|$SRC/scripts/|" \
        -e "s|groupsrv:groupsrv|nobody:$(id -gn nobody)|g" > "$work/p11readme.sh" ||
    fail "pkcs11-config/README.md lost its SoftHSM2 block"
  (bash -e "$work/p11readme.sh") > "$work/p11readme.out" 2>&1 ||
    fail "pkcs11-config/README.md's SoftHSM2 block, as written, failed: $(cat "$work/p11readme.out")"
  tok=$work/var/lib/groupsrv/token
  cat > "$work/p11readme.conf" <<CONF
[hsm]
module = $module
token = pkcs11:token=groupsrv
pin_source = $tok/user-pin
CONF
  chmod 644 "$work/p11readme.conf"
  runuser -u nobody -- env SOFTHSM2_CONF="$tok/softhsm2.conf" "$BIN/groupsrv" -c "$work/p11readme.conf" check \
    > "$work/p11check.out" 2>&1 || true
  grep -q '^token  *OK ' "$work/p11check.out" ||
    fail "the service user cannot open the token pkcs11-config/README.md makes: $(cat "$work/p11check.out")"
  ok "pkcs11-config/README.md's SoftHSM2 token opens as the service user"
  # "NSS softokn": the database made as written, opened by path with the block's init_args
  nssmod=/usr/lib/x86_64-linux-gnu/libsoftokn3.so
  if [ -f "$nssmod" ]; then
    install -m 0600 -o nobody /dev/null "$work/nss-pin" && echo nss-pin-1234 > "$work/nss-pin"
    doc_block "$SRC/pkcs11-config/README.md" 'NSS softokn (tested)' 1 |
      sed -e "s|/var/lib/groupsrv|$work/var/lib/groupsrv|g" -e "s|/etc/groupsrv/pin|$work/nss-pin|g" \
          -e "s|-o groupsrv|-o nobody|g" -e "s|runuser -u groupsrv|runuser -u nobody|g" > "$work/nssreadme.sh" ||
      fail "pkcs11-config/README.md lost its NSS softokn block"
    (bash -e "$work/nssreadme.sh") > "$work/nssreadme.out" 2>&1 ||
      fail "pkcs11-config/README.md's NSS softokn block, as written, failed: $(cat "$work/nssreadme.out")"
    doc_block "$SRC/pkcs11-config/README.md" 'NSS softokn (tested)' 1 ini |
      sed -e "s|/var/lib/groupsrv|$work/var/lib/groupsrv|g" -e "s|/etc/groupsrv/pin|$work/nss-pin|g" > "$work/nssreadme.conf"
    chmod 644 "$work/nssreadme.conf"
    runuser -u nobody -- "$BIN/groupsrv" -c "$work/nssreadme.conf" check > "$work/nsscheck.out" 2>&1 || true
    grep -q '^token  *OK ' "$work/nsscheck.out" ||
      fail "the service user cannot open the NSS database pkcs11-config/README.md makes: $(cat "$work/nsscheck.out")"
    ok "pkcs11-config/README.md's NSS softokn database opens as the service user"
  fi
else
  echo "skipped: pkcs11-config/README.md's SoftHSM2 block (needs root and a work directory nobody can reach)"
fi
