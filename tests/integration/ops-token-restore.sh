#!/usr/bin/env bash
# ops-token-restore.sh BIN SRC: the reverse of ops-restore.sh: a token put
# back from a copy older than the database (a SoftHSM token directory from
# a file backup) next to the current database, which records a group key
# and a group secret key version made since. The operator gets clear
# answers, never a wrong key: `check` exits 1 naming both versions
# missing; the new version's mail is answered 503 key_unavailable naming
# the version, mail to the older version still decrypts, secret-keys is
# 503; and the server's log says so in key=value records a log shipper
# reads (tests/lib/logcheck.py: the key_unavailable line once left text
# after its fields). Then a database restored as root for a service user
# that cannot write it, and a database next to a token made anew.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"

openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg-v15.der" \
  -recip "$certs/group.pem" 2>/dev/null
cms ri "$work/msg-v15.der" "$work/ri-v15.der"
printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc","deliver":"tls"}' "$(b64 "$work/ri-v15.der")" > "$work/req-v15.json"
printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc","deliver":"tls"}' "$(b64 "$work/ri.der")" > "$work/req-oaep.json"
p11tok() { GS_PIN=$(cat "$pin_file") pkcs11-tool --module "$module" --token-label groupsrv --login --pin env:GS_PIN "$@"; }
# remake_v1 ID: version 1's label made again under a running server, as
# another key pair, of CKA_ID ID
remake_v1() {
  p11tok --delete-object --type privkey --label gs:group:eng:v1 >/dev/null 2>&1 &&
    { p11tok --delete-object --type pubkey --label gs:group:eng:v1 >/dev/null 2>&1 || true; } &&
    p11tok --keypairgen --key-type rsa:2048 --label gs:group:eng:v1 --id "$1" --usage-decrypt --sensitive \
      >"$work/p11.out" 2>&1 || fail "pkcs11-tool could not make v1's label again: $(cat "$work/p11.out")"
}

# Version 1's label made again under a running server with the CKA_ID
# groupsrv gives every key it makes (the first 16 bytes of SHA-256 of the
# label), as another installation's group create gives its key of that
# label too, on a token initialised anew: the key holder found its stale
# handle's object again by label and CKA_ID, took the other key without
# loading the group again (so without comparing it with the certificate),
# and answered PKCS#1 v1.5 mail 200 with implicit rejection's substitute
# key. One token worker, whose cache holds the group (every version
# present, so it is not loaded again per request).
cp -a "$work/token" "$work/token.v1"
cp "$conf" "$work/conf.v1"
sed -i 's/^\[hsm\]$/[hsm]\nworkers = 1/' "$conf"
start_server
for i in 1 2 3; do
  expect_status 200 "" "v1.5 mail to version 1 before" -- c alice --data-binary @"$work/req-v15.json" "$base/v1/groups/eng/unwrap"
done
remake_v1 "$(printf %s gs:group:eng:v1 | sha256sum | cut -c1-32)"
# the first request finds the key again and refuses it (503, as a token
# that lost a key); the group is then loaded again and compared
expect_status 503 "" "req-v15: mail to a version whose label and CKA_ID now hold another key" -- \
  c alice --data-binary @"$work/req-v15.json" "$base/v1/groups/eng/unwrap"
for r in req-oaep req-v15 req-oaep; do
  expect_status 503 key_unavailable "$r: mail to a version whose label and CKA_ID now hold another key" -- \
    c alice --data-binary @"$work/$r.json" "$base/v1/groups/eng/unwrap"
done
stop_server
grep -q 'detail="key gs:group:eng:v1 on the token is now another key (its modulus differs' "$work/server.log" ||
  fail "no log line naming the key found again that is another: $(grep -i 'eng:v1' "$work/server.log" | head -3)"
rm -rf "$work/token"
mv "$work/token.v1" "$work/token"
mv "$work/conf.v1" "$conf"
ok "a key found again by label and CKA_ID that is another key is not used"

cp -a "$work/token" "$work/token.bak"
gs group rotate eng > /dev/null
sv=$(gs secret rotate eng | sed -n 's/.*new secret key version \([0-9]*\)$/\1/p')
[ -n "$sv" ] || fail "secret rotate named no version"
gs group show eng --cert > "$work/eng-v2.pem"
rm -rf "$work/token"
cp -a "$work/token.bak" "$work/token"

rc=0; gs check > "$work/check.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "check with an older token: exit $rc: $(cat "$work/check.out")"
grep -q '^missing   group eng key version 2 label gs:group:eng:v2$' "$work/check.out" &&
  grep -q "^missing   group eng secret version $sv label gs:secret:eng:v$sv\$" "$work/check.out" ||
  fail "check does not name the versions missing: $(cat "$work/check.out")"
ok "check names the versions the older token lacks (exit 1)"

start_server
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg2.der" \
  -recip "$work/eng-v2.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
cms ri "$work/msg2.der" "$work/ri2.der"
printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ri2.der")" > "$work/req2.json"
expect_status 503 key_unavailable "mail to the version the token lacks" -- \
  c alice --data-binary @"$work/req2.json" "$base/v1/groups/eng/unwrap"
grep -q 'group key version 2 is not on this server' "$work/body" || fail "the answer does not name the version: $(cat "$work/body")"
unwrap_as alice tls
check_cek "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')"
ok "mail to version 1, which the token has, still decrypts"
expect_status 503 key_unavailable "secret-keys without the current secret key" -- c alice "$base/v1/groups/eng/secret-keys"
stop_server
grep -q 'msg="key version not on this token (groupsrv check lists them)" kind="group key" version=2' "$work/server.log" ||
  fail "no log line naming the missing version"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/server.log" || fail "the server log is not one record per line"
ok "the log names the missing version in key=value fields"

# Version 1's label made again with another key under a running server
# (the token initialised anew and its labels filled again by another
# installation, each key with its own CKA_ID): the key found by the
# group's label is not the one its certificate names. The first request
# missed the old object and reloaded the group, which took whatever the
# label held: PKCS#1 v1.5 mail was answered 200 with implicit
# rejection's substitute key (every member's decryption failed) and
# RSA-OAEP mail 400 unwrap_failed (the sender blamed), while check said
# "certificate key differs" and a restart would refuse to serve. It is
# served as a version this token lacks: 503 key_unavailable, logged.
cp -a "$work/token" "$work/token.v1"
start_server
expect_status 200 "" "v1.5 mail to version 1 before" -- c alice --data-binary @"$work/req-v15.json" "$base/v1/groups/eng/unwrap"
mism() { grep -c 'msg="group key is not the one its certificate names (.*" label="gs:group:eng:v1"' "$work/server.log" || true; }
mbase=$(mism)
remake_v1 0a0b0c
for r in req-v15 req-oaep req-v15 req-oaep; do
  expect_status 503 key_unavailable "$r: mail to a version whose label now holds another key" -- \
    c alice --data-binary @"$work/$r.json" "$base/v1/groups/eng/unwrap"
done
# Logged once for the key found, not at every request (the group is
# loaded afresh at each while it lacks a key: the error was logged at
# each); again when another key turns up under the label.
[ "$(mism)" = $((mbase + 1)) ] || fail "the mismatch logged $(($(mism) - mbase)) times for one key over four requests"
remake_v1 0a0b0d
expect_status 503 key_unavailable "mail to a version whose label now holds a third key" -- \
  c alice --data-binary @"$work/req-v15.json" "$base/v1/groups/eng/unwrap"
[ "$(mism)" = $((mbase + 2)) ] || fail "another key under the label: the mismatch logged $(($(mism) - mbase)) times in all, wanted 2"
stop_server
grep -q 'msg="group key is not the one its certificate names (.*" label="gs:group:eng:v1"' "$work/server.log" ||
  fail "no log line naming the key that is not the certificate's: $(grep -i 'eng:v1' "$work/server.log" | head -3)"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/server.log" || fail "the server log is not one record per line"
rm -rf "$work/token"
mv "$work/token.v1" "$work/token"
ok "a version whose label holds another key is served as missing (503 key_unavailable, logged), not used"

# A database restored as root with cp (root's file, 0644) for a service
# that runs as another user: SQLite opens it read-only without a word, so
# the server said healthy and refused every membership change, the
# removal the restore calls for too. check names it, serve refuses.
# The service user must reach everything: a copy of the work directory,
# the token and the programs in a directory of its own under /tmp (the
# build tree may be in a directory only its owner can enter, as a CI
# clone in a mktemp directory is).
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  nb=$(mktemp -d /tmp/gs-restore.XXXXXX)
  trap 'rm -rf "$nb"; cleanup' EXIT
  chmod 755 "$nb"
  cp -a "$work/." "$nb/"
  cp "$BIN/groupsrv" "$BIN/groupsrv-net" "$nb/"
  sed -i "s#$work#$nb#g" "$nb/groupsrv.conf" "$nb/token/softhsm2.conf"
  chown -R nobody "$nb"
  rm -f "$nb/groupsrv.db" "$nb/groupsrv.db-wal" "$nb/groupsrv.db-shm"
  cp "$work/groupsrv.db" "$nb/groupsrv.db"
  chown root "$nb/groupsrv.db"
  chmod 644 "$nb/groupsrv.db"
  as_nobody() { runuser -u nobody -- env SOFTHSM2_CONF="$nb/token/softhsm2.conf" "$nb/groupsrv" -c "$nb/groupsrv.conf" "$@"; }
  rc=0; as_nobody check > "$nb/check.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^database  PROBLEM: database $nb/groupsrv.db cannot be written by this user (uid $(id -u nobody)): " "$nb/check.out" ||
    fail "check of a database the service user cannot write: exit $rc: $(grep -E 'database|problem' "$nb/check.out")"
  rc=0; as_nobody serve > "$nb/serve.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q 'msg="not started: the database cannot be written by this user" detail="database ' "$nb/serve.out" ||
    fail "serve on a database it cannot write: exit $rc: $(cat "$nb/serve.out")"
  # The database the service user's, 0600, but what SQLite makes beside
  # it is not: a directory root made (no -wal and -shm can be created:
  # check's own open failed 'user_version: attempt to write a readonly
  # database', naming nothing), or root's -wal and -shm (copied back with
  # the file by root's cp: SQLite opened the database read-only without a
  # word, check passed, serve said healthy, every membership change
  # failed 'attempt to write a readonly database').
  chown nobody "$nb/groupsrv.db"
  chmod 600 "$nb/groupsrv.db"
  mkdir "$nb/db"
  mv "$nb/groupsrv.db" "$nb/db/"
  sed -i "s#^path = $nb/groupsrv.db\$#path = $nb/db/groupsrv.db#" "$nb/groupsrv.conf"
  grep -q "^path = $nb/db/groupsrv.db\$" "$nb/groupsrv.conf" || fail "the [db] path line moved: $(cat "$nb/groupsrv.conf")"
  chmod 755 "$nb/db" # root's, as chown -R left it out
  rc=0; as_nobody check > "$nb/check.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^database  PROBLEM: database $nb/db/groupsrv.db cannot be written by this user (uid $(id -u nobody)): its directory $nb/db, where SQLite creates the -wal and -shm files: Permission denied: " "$nb/check.out" ||
    fail "check of a database in a directory the service user cannot write: exit $rc: $(grep -E 'database|problem' "$nb/check.out")"
  rc=0; as_nobody serve > "$nb/serve.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "err=\"database $nb/db/groupsrv.db cannot be written by this user (uid $(id -u nobody)): its directory $nb/db, " "$nb/serve.out" ||
    fail "serve on a database in a directory it cannot write: exit $rc: $(cat "$nb/serve.out")"
  chown nobody "$nb/db"
  as_nobody check > "$nb/check.out" 2>&1 || true # (exit 1: the older token's missing versions)
  grep -q "^database  OK   $nb/db/groupsrv.db " "$nb/check.out" && ! grep -q '^database  PROBLEM' "$nb/check.out" ||
    fail "check once the directory is the service user's: $(grep -E '^database' "$nb/check.out")"
  touch "$nb/db/groupsrv.db-wal" "$nb/db/groupsrv.db-shm"
  chown root "$nb/db/groupsrv.db-wal" "$nb/db/groupsrv.db-shm"
  chmod 644 "$nb/db/groupsrv.db-wal" "$nb/db/groupsrv.db-shm"
  rc=0; as_nobody check > "$nb/check.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^database  PROBLEM: database $nb/db/groupsrv.db cannot be written by this user (uid $(id -u nobody)): $nb/db/groupsrv.db-wal, left by another user: Permission denied: " "$nb/check.out" ||
    fail "check of a database with root's -wal and -shm: exit $rc: $(grep -E 'database|problem' "$nb/check.out")"
  rc=0; as_nobody serve > "$nb/serve.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "database $nb/db/groupsrv.db cannot be written by this user (uid $(id -u nobody)): $nb/db/groupsrv.db-wal, left by another user" "$nb/serve.out" ||
    fail "serve on a database with root's -wal and -shm: exit $rc: $(cat "$nb/serve.out")"
  chown nobody "$nb/db/groupsrv.db-wal" "$nb/db/groupsrv.db-shm"
  # a database others can read (cp as root with its umask): a warning
  chmod 644 "$nb/db/groupsrv.db"
  as_nobody check > "$nb/check.out" 2>&1 || true
  grep -q "^database  WARNING: $nb/db/groupsrv.db: mode 0644: its group or others can read " "$nb/check.out" &&
    grep -q "^database  WARNING: $nb/db/groupsrv.db-wal: mode 0644: " "$nb/check.out" ||
    fail "check does not warn about a database others can read: $(grep -E 'database|problem' "$nb/check.out")"
  chmod 600 "$nb/db/groupsrv.db" "$nb/db/groupsrv.db-wal"
  # A directory root keeps, with the service user's -wal and -shm already
  # in it, is a database SQLite writes (it creates nothing more there):
  # check must not call it a problem, nor serve refuse to start on it.
  chown root "$nb/db"
  chmod 755 "$nb/db"
  as_nobody check > "$nb/check.out" 2>&1 || true # (exit 1: the older token's missing versions)
  grep -q "^database  OK   $nb/db/groupsrv.db " "$nb/check.out" && ! grep -q '^database  PROBLEM' "$nb/check.out" ||
    fail "check of a database in root's directory beside its own -wal and -shm: $(grep -E '^database' "$nb/check.out")"
  # but not a file in rollback-journal mode (a copy so, old -wal and -shm
  # left beside it): its switch to WAL at serve's start, and each write
  # after, makes a -journal there, 'attempt to write a readonly database'
  sqlite3 "$nb/db/groupsrv.db" 'PRAGMA journal_mode = DELETE' > /dev/null
  install -m 0600 -o nobody /dev/null "$nb/db/groupsrv.db-wal"
  install -m 0600 -o nobody /dev/null "$nb/db/groupsrv.db-shm"
  rc=0; as_nobody check > "$nb/check.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^database  PROBLEM: database $nb/db/groupsrv.db cannot be written by this user (uid $(id -u nobody)): its directory $nb/db, where SQLite creates the -wal and -shm files: Permission denied: " "$nb/check.out" ||
    fail "check of a rollback-journal database in root's directory beside old -wal and -shm: exit $rc: $(grep -E '^database' "$nb/check.out")"
  sqlite3 "$nb/db/groupsrv.db" 'PRAGMA journal_mode = WAL' > /dev/null
  install -m 0600 -o nobody /dev/null "$nb/db/groupsrv.db-wal"
  install -m 0600 -o nobody /dev/null "$nb/db/groupsrv.db-shm"
  # A [db] path that is a symbolic link: SQLite makes the -wal and -shm
  # beside the file it points to, so the link's directory is not asked
  # (none there yet: the directory they are made in is).
  mkdir "$nb/real"
  mv "$nb/db/groupsrv.db" "$nb/real/"
  rm "$nb/db/groupsrv.db-wal" "$nb/db/groupsrv.db-shm" # (empty: touched above)
  chown nobody "$nb/real"
  ln -s "$nb/real/groupsrv.db" "$nb/db/groupsrv.db"
  as_nobody check > "$nb/check.out" 2>&1 || true
  grep -q "^database  OK   $nb/db/groupsrv.db " "$nb/check.out" && ! grep -q '^database  PROBLEM' "$nb/check.out" ||
    fail "check of a database through a link in root's directory: $(grep -E '^database' "$nb/check.out")"
  # and the -wal others can read (SQLite makes it with the file's mode)
  # is the one beside the file linked to
  chmod 644 "$nb/real/groupsrv.db"
  as_nobody check > "$nb/check.out" 2>&1 || true
  grep -q "^database  WARNING: $nb/real/groupsrv.db-wal: mode 0644: " "$nb/check.out" ||
    fail "check does not warn about the -wal beside a linked database: $(grep -E '^database' "$nb/check.out")"
  # A token store restored as root with cp -r: the token's own directory
  # root's. SoftHSM leaves such a token out of its slot list without a
  # word (syslog only), so check and serve said only "no token present
  # matches the token URI", as for a typo: the directory is named now.
  chmod 600 "$nb/real/groupsrv.db"
  tdir=$(find "$nb/token/tokens" -mindepth 1 -maxdepth 1 -type d | head -1)
  [ -n "$tdir" ] || fail "no token directory in $nb/token/tokens"
  chown -R root "$tdir"
  rc=0; as_nobody check > "$nb/check.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^token     PROBLEM: .*no token present matches the token URI; no initialised token is present; SoftHSM leaves out a token directory this user cannot open: $tdir (uid 0's, mode 0700))\$" "$nb/check.out" ||
    fail "check with the token's directory root's: exit $rc: $(grep -E '^token' "$nb/check.out")"
  rc=0; as_nobody serve > "$nb/serve.out" 2>&1 || rc=$?
  grep -q "SoftHSM leaves out a token directory this user cannot open: $tdir (uid 0's, mode 0700)" "$nb/serve.out" ||
    fail "serve with the token's directory root's: exit $rc: $(cat "$nb/serve.out")"
  ok "a SoftHSM token directory restored as root: check and serve name it ($(grep -o 'SoftHSM leaves out.*' "$nb/check.out"))"
  rm -rf "$nb"
  trap cleanup EXIT
  ok "a database restored as another user, in a directory it cannot write or beside root's -wal: check names it, serve does not start; a database others can read: check warns; in root's directory beside its own -wal and -shm, or through a link: fine"
fi

# A typo in [hsm] token (token=grupsrv): the labels of the tokens present
# are named beside it.
sed 's#^token = pkcs11:token=groupsrv$#token = pkcs11:token=grupsrv#' "$work/groupsrv.conf" > "$work/typo.conf"
grep -q '^token = pkcs11:token=grupsrv$' "$work/typo.conf" || fail "no [hsm] token line to misspell: $(grep '^token' "$work/groupsrv.conf")"
rc=0; "$BIN/groupsrv" -c "$work/typo.conf" check > "$work/check.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q '^token     PROBLEM: .*no token present matches the token URI; tokens present: token="groupsrv")$' "$work/check.out" ||
  fail "check with a misspelt token URI: exit $rc: $(grep '^token' "$work/check.out")"
ok "a misspelt [hsm] token: check names the tokens present ($(grep -o 'tokens present.*' "$work/check.out"))"
# A token's label is any 32 bytes its owner chose (a card in the reader,
# another module's token behind p11-kit): named raw, one with an escape
# sequence, a C1 CSI (as UTF-8, and as a raw byte) and our quote reached
# the operator's terminal and the log as it was. Named percent-encoded,
# it is what [hsm] token takes.
softhsm2-util --init-token --free --label "$(printf 'x\033[2J\302\233\233"q\\')" --so-pin 0000 --pin 0000 >/dev/null ||
  fail "softhsm2-util could not make a token with an odd label"
rc=0; "$BIN/groupsrv" -c "$work/typo.conf" check > "$work/check.out" 2>&1 || rc=$?
! LC_ALL=C grep -q "$(printf '[\033\233]')" "$work/check.out" ||
  fail "check sent a token label's control bytes to the terminal: $(grep -a '^token' "$work/check.out" | od -c | head)"
[ "$rc" = 1 ] && grep -q '^token     PROBLEM: .*no token present matches the token URI; tokens present: token=.*"x%1B%5B2J%C2%9B%9B%22q%5C"' "$work/check.out" ||
  fail "check with a misspelt token URI and an odd label: exit $rc: $(grep -a '^token' "$work/check.out" | od -c | head -20)"
ok "a token label with control bytes is named percent-encoded ($(grep -o 'tokens present.*' "$work/check.out"))"

# A database restored next to a token made anew (initialised again, `ca
# init` and `group create` run on it): the labels are there, the keys are
# others. check names the CA's and the group key's rows, as serve refuses.
cp "$work/groupsrv.db" "$work/old.db"
rm -rf "$work/token" "$work/groupsrv.db" "$work/groupsrv.db-wal" "$work/groupsrv.db-shm"
"$SRC/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
gs ca init --key rsa:2048 >/dev/null
gs group create eng --address eng@example.org --key rsa:2048 --methods tls >/dev/null
rm -f "$work/groupsrv.db" "$work/groupsrv.db-wal" "$work/groupsrv.db-shm"
cp "$work/old.db" "$work/groupsrv.db"
rc=0; gs check > "$work/check.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "check with another token's keys: exit $rc: $(cat "$work/check.out")"
grep -Eq '^ca +- +- +gs:ca .*PROBLEM: certificate key differs from the token key$' "$work/check.out" ||
  fail "check does not name the CA key that is not the certificate's: $(grep -E '^(ca|group) ' "$work/check.out")"
grep -Eq '^group +eng +v1 +gs:group:eng:v1 .*PROBLEM: certificate key differs from the token key$' "$work/check.out" ||
  fail "check does not name the group key that is not the certificate's: $(grep -E '^group ' "$work/check.out")"
rc=0; "$BIN/groupsrv" -c "$conf" serve > "$work/serve.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q 'CA certificate does not match the token key gs:ca' "$work/serve.out" ||
  fail "serve with another token's CA key: exit $rc: $(cat "$work/serve.out")"
ok "a database next to a token made anew: check names the keys that are not the certificates', serve refuses"
