#!/usr/bin/env bash
# groupmail-e2e.sh BIN SRC: groupmail against a real `groupsrv serve` on a
# throw-away SoftHSM token (set up by server-lib.sh): every decrypt method
# on a message made by `openssl cms`, groupmail encrypt -> decrypt, send over
# SMTP, a removed member, tampered / foreign messages, pin mismatch.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server

# The config file carries the server and trust settings; flags add the rest.
gm_home_init "[hsm]" "module = $module"
gm() { "$BIN/groupmail" "$@"; }
as() { local who=$1; shift; gm "$@" --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key"; }
expect_rc() { # expect_rc WANT DESC -- command...
  local want=$1 desc=$2; shift 3
  local got=0
  "$@" >"$work/gm.out" 2>"$work/gm.err" || got=$?
  [ "$got" = "$want" ] || fail "$desc: exit $got, wanted $want: $(head -c 400 "$work/gm.err")"
  if [ "$want" != 0 ]; then
    [ "$(wc -l < "$work/gm.err")" -le 1 ] || fail "$desc: error is not one line: $(cat "$work/gm.err")"
  fi
  ok "$desc (exit $want)"
}
same() { cmp -s "$1" "$2" || fail "$3: output differs from the original"; }
# --mime input is canonicalised to CRLF inside S/MIME (RFC 8551): compare text
same_text() { cmp -s <(tr -d '\r' < "$1") <(tr -d '\r' < "$2") || fail "$3: text differs from the original"; }

# fetch-cert: verified against the group CA and pinned 0600
expect_rc 0 "fetch-cert" -- gm fetch-cert
pin=$gm_home/.local/share/groupmail/pins/eng@127.0.0.1_$port.pem
[ -f "$pin" ] || fail "no pin file at $pin"
[ "$(stat -c %a "$pin")" = 600 ] || fail "pin file mode $(stat -c %a "$pin")"
cmp -s <(openssl x509 -in "$pin" -outform DER) <(openssl x509 -in "$certs/group.pem" -outform DER) || fail "pinned cert"
expect_rc 4 "fetch-cert with the wrong group CA" -- gm fetch-cert --group-ca "$certs/tca.pem" --store "$work/other-store"
# --out /dev/stdout: standard output holds the certificate alone, the
# "pinned" line goes to standard error (it followed the PEM on stdout).
gm fetch-cert --out /dev/stdout > "$work/fc.out" 2> "$work/fc.err" || fail "fetch-cert --out /dev/stdout: exit $?"
[ "$(tail -n 1 "$work/fc.out")" = "-----END CERTIFICATE-----" ] ||
  fail "fetch-cert --out /dev/stdout: more than the certificate on standard output: $(tail -n 1 "$work/fc.out")"
grep -q '^pinned ' "$work/fc.err" || fail "fetch-cert --out /dev/stdout: no pinned line on standard error"
ok "fetch-cert --out /dev/stdout: the certificate alone on standard output"
# the server by name, pinned in a store of its own; and the same pin as an
# older groupmail named it when the server was typed in capitals (the
# host as typed), in another: both are looked at after the re-key below
expect_rc 0 "fetch-cert by name" -- gm fetch-cert --server "https://localhost:$port" --store "$work/named"
mkdir -p "$work/typed/pins"
cp "$work/named/pins/eng@localhost_$port.pem" "$work/typed/pins/eng@LocalHost_$port.pem"

# A stock S/MIME message to the group (GCM, OAEP SHA-1) and msg.der (CBC) from server-lib.
printf 'Subject: e2e\n\nthe body of the e2e message\n' > "$work/m.txt"
openssl cms -encrypt -binary -aes-256-gcm -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep \
  -in "$work/m.txt" -out "$work/m.smime" 2>/dev/null

for via in tls recipient-key membership-cert group-secret; do
  rm -f "$work/out.txt"
  expect_rc 0 "decrypt --via $via (openssl cms GCM message)" -- as alice decrypt --via "$via" --in "$work/m.smime" --out "$work/out.txt"
  same "$work/out.txt" "$work/m.txt" "$via"
  [ "$(stat -c %a "$work/out.txt")" = 600 ] || fail "plaintext mode"
  expect_rc 0 "decrypt --via $via (openssl cms CBC DER message, stdout)" -- as alice decrypt --via "$via" --in "$work/msg.der"
  same "$work/gm.out" "$work/msg.txt" "$via DER"
done
ls "$gm_home/.local/share/groupmail/membership/" | grep -q '\.key$' || fail "membership key not cached"

# --out naming a stream, as scripts and mail tools give it: a named pipe a
# reader waits on, and /dev/stdout (here a link to /proc/self/fd/1, so that
# a groupmail that renames over it cannot replace the real one) on a pipe
# and on a file standard output appends to. Each is written like standard
# output, and stays what it was: renaming a temp file over it used to put
# a regular file holding the plaintext in its place (as root, /dev/null).
mkfifo "$work/plain.fifo"
cat "$work/plain.fifo" > "$work/fifo.got" &
reader=$!
expect_rc 0 "decrypt --out a named pipe" -- as alice decrypt --in "$work/msg.der" --out "$work/plain.fifo"
if [ ! -p "$work/plain.fifo" ]; then kill "$reader" 2>/dev/null || true; fail "decrypt --out replaced the named pipe"; fi
wait "$reader"
same "$work/fifo.got" "$work/msg.txt" "decrypt --out a named pipe"
ln -s /proc/self/fd/1 "$work/stdout"
as alice decrypt --in "$work/msg.der" --out "$work/stdout" | cat > "$work/pipe.got"
[ -L "$work/stdout" ] || fail "decrypt --out /dev/stdout on a pipe replaced the link"
same "$work/pipe.got" "$work/msg.txt" "decrypt --out /dev/stdout on a pipe"
echo "kept line" > "$work/append.got"
as alice decrypt --in "$work/msg.der" --out "$work/stdout" >> "$work/append.got"
[ -L "$work/stdout" ] || fail "decrypt --out /dev/stdout on a file replaced the link"
cmp -s "$work/append.got" <(echo "kept line"; cat "$work/msg.txt") || fail "decrypt --out /dev/stdout >> FILE"
as alice unwrap --via tls --in "$work/msg.der" --out "$work/stdout" | cat > "$work/pipe.got"
[ -L "$work/stdout" ] && check_cek "$(cat "$work/pipe.got")" || fail "unwrap --out /dev/stdout"
# /dev/stderr (a link to /proc/self/fd/2) with standard error appended to
# a file: the same. It used to be renamed over: the link replaced by a
# regular file holding the plaintext (as root, /dev/stderr itself).
ln -s /proc/self/fd/2 "$work/stderr"
echo "kept line" > "$work/err.got"
as alice decrypt --in "$work/msg.der" --out "$work/stderr" 2>> "$work/err.got" ||
  fail "decrypt --out /dev/stderr 2>> FILE: $(cat "$work/err.got")"
[ -L "$work/stderr" ] || fail "decrypt --out /dev/stderr on a file replaced the link"
cmp -s "$work/err.got" <(echo "kept line"; cat "$work/msg.txt") || fail "decrypt --out /dev/stderr 2>> FILE"
ok "--out a named pipe, /dev/stdout or /dev/stderr: written to, never replaced"
# Standard output a socket (inetd, a systemd socket unit, socat): the
# link cannot be opened on one (ENXIO) and used to be renamed over; the
# file standard output already is, is standard output, whatever its type.
if command -v python3 > /dev/null; then
  python3 -c 'import socket, subprocess, sys
a, b = socket.socketpair()
p = subprocess.Popen(sys.argv[1:], stdout=b)
b.close()
sys.stdout.buffer.write(b"".join(iter(lambda: a.recv(65536), b"")))
sys.exit(p.wait())' "$BIN/groupmail" decrypt --in "$work/msg.der" --out "$work/stdout" \
    --cert "$certs/alice@example.org.pem" --key "$certs/alice@example.org.key" > "$work/sock.got" 2> "$work/gm.err" ||
    fail "decrypt --out /dev/stdout on a socket: $(head -c 400 "$work/gm.err")"
  [ -L "$work/stdout" ] || fail "decrypt --out /dev/stdout on a socket replaced the link"
  same "$work/sock.got" "$work/msg.txt" "decrypt --out /dev/stdout on a socket"
  ok "--out /dev/stdout on a socket is standard output"
fi
# A named pipe at --out replaced by a regular file between the look at its
# type and its opening (anyone who can write the directory can): gdb makes
# the swap as groupmail opens it. The file is left as it was, never written
# over from its start with the plaintext; groupmail refuses (exit 1).
if command -v gdb > /dev/null; then
  mkfifo "$work/race"
  timeout 60 gdb -batch -nx -q -ex 'set startup-with-shell off' -ex 'catch syscall openat' \
    -ex "condition 1 \$_streq((char *) \$rsi, \"$work/race\")" -ex run \
    -ex "shell rm -f '$work/race' && printf 'another user file\n' > '$work/race'" \
    -ex continue -ex continue -ex continue \
    --args "$BIN/groupmail" decrypt --in "$work/msg.der" --out "$work/race" \
    --cert "$certs/alice@example.org.pem" --key "$certs/alice@example.org.key" > "$work/gdb.out" 2>&1 || true
  grep -q 'Catchpoint 1 (call to syscall openat)' "$work/gdb.out" || fail "gdb did not stop the --out open: $(tail -5 "$work/gdb.out")"
  [ "$(cat "$work/race")" = "another user file" ] || fail "decrypt --out: a file swapped in for the named pipe was written to"
  grep -q 'exited with code 01' "$work/gdb.out" || fail "decrypt --out a swapped named pipe: not exit 1: $(tail -5 "$work/gdb.out")"
  ok "--out a named pipe swapped for a file as it is opened: refused, the file untouched"
fi
# A named pipe another user made in a world-writable sticky directory at
# the --out path (/tmp/msg.txt, guessed): its reader would get the
# plaintext. Refused, as the kernel refuses the shell's `>` it
# (fs.protected_fifos); one's own named pipe there is written to. Root
# only: the pipe must belong to someone else.
# refused_pipe FIFO OUT DESC: decrypt --out OUT (which leads to FIFO) is
# exit 1 and FIFO's reader gets nothing. The reader ends at the end of
# what it was sent, never cut short: where the open never reached the
# pipe (the kernel refused it), the write end is opened here to end it.
refused_pipe() {
  local fifo=$1 out=$2 desc=$3 reader
  : > "$work/stolen"
  timeout 30 cat "$fifo" > "$work/stolen" &
  reader=$!
  expect_rc 1 "decrypt --out $desc" -- as alice decrypt --in "$work/msg.der" --out "$out"
  if kill -0 "$reader" 2>/dev/null; then timeout 2 sh -c ': > "$1"' _ "$fifo" || true; fi
  wait "$reader" || true
  [ ! -s "$work/stolen" ] || fail "decrypt --out wrote the plaintext to $desc"
}
if [ "$(id -u)" = 0 ]; then
  mkdir -m 1777 "$work/sticky"
  mkfifo "$work/sticky/msg.txt" "$work/sticky/own.fifo"
  chown 65534 "$work/sticky/msg.txt"
  refused_pipe "$work/sticky/msg.txt" "$work/sticky/msg.txt" "another user's named pipe in a sticky directory"
  cat "$work/sticky/own.fifo" > "$work/own.got" &
  reader=$!
  expect_rc 0 "decrypt --out one's own named pipe in a sticky directory" -- \
    as alice decrypt --in "$work/msg.der" --out "$work/sticky/own.fifo"
  wait "$reader"
  same "$work/own.got" "$work/msg.txt" "decrypt --out one's own named pipe in a sticky directory"
  # The other user's pipe reached through their symbolic link in the
  # sticky directory (the state a rename over the entry leaves after the
  # open): the directory the path names counts, not only where it leads.
  # (Where fs.protected_symlinks is 1 the kernel refuses the open itself.)
  mkdir -m 755 "$work/theirs"
  mkfifo "$work/theirs/out.fifo"
  chown 65534 "$work/theirs" "$work/theirs/out.fifo"
  ln -s "$work/theirs/out.fifo" "$work/sticky/link.txt"
  chown -h 65534 "$work/sticky/link.txt"
  refused_pipe "$work/theirs/out.fifo" "$work/sticky/link.txt" \
    "another user's named pipe through their link in a sticky directory"
  # A sticky directory its group can write (a team's shared one): the same
  # rule, as fs.protected_fifos = 2 takes it.
  mkdir -m 1770 "$work/team"
  mkfifo "$work/team/msg.txt"
  chown 65534 "$work/team/msg.txt"
  refused_pipe "$work/team/msg.txt" "$work/team/msg.txt" "another user's named pipe in a group-writable sticky directory"
fi
# standard output closed by the caller (>&-): the output has nowhere to go,
# exit 1. The plaintext used to go, exit 0, to whichever file took
# descriptor 1 next: with -v the message's spool file in $TMPDIR.
closed_stdout() { as alice -v decrypt --via tls <"$work/m.smime" >&-; }
expect_rc 1 "decrypt with standard output closed" -- closed_stdout
grep -q "cannot write the output" "$work/gm.err" || fail "decrypt >&-: $(cat "$work/gm.err")"
# The same with --out naming the closed stream (/dev/stdout, /dev/fd/1: here
# the link $work/stdout), or standard output open read-only: the link used
# to be opened anew, reopening the /dev/null standing in for it for
# writing (the plaintext gone, exit 0), or (read-only) renamed over. And
# --out /dev/stderr with standard error closed. --out /dev/null is written.
closed_named() { as alice decrypt --via tls --in "$work/msg.der" --out "$1" >&-; }
expect_rc 1 "decrypt --out /dev/stdout with standard output closed" -- closed_named "$work/stdout"
grep -q "cannot write the output" "$work/gm.err" || fail "--out /dev/stdout >&-: $(cat "$work/gm.err")"
expect_rc 1 "decrypt --out /dev/fd/1 with standard output closed" -- closed_named /dev/fd/1
# /proc/thread-self/fd/1 names the same descriptor through the thread's
# own directory (/proc/PID/task/TID/fd), which the walk did not take for
# standard output: the stand-in /dev/null was opened anew, exit 0.
expect_rc 1 "decrypt --out /proc/thread-self/fd/1 with standard output closed" -- closed_named /proc/thread-self/fd/1
expect_rc 0 "decrypt --out /dev/null with standard output closed" -- closed_named /dev/null
echo "kept line" > "$work/ro.got"
readonly_stdout() { as alice decrypt --via tls --in "$work/msg.der" --out "$work/stdout" 1< "$work/ro.got"; }
expect_rc 1 "decrypt --out /dev/stdout with standard output read-only" -- readonly_stdout
[ -L "$work/stdout" ] && [ "$(cat "$work/ro.got")" = "kept line" ] || fail "--out /dev/stdout 1< FILE replaced or wrote"
closed_stderr() { as alice decrypt --via tls --in "$work/msg.der" --out "$work/stderr" 2>&-; }
expect_rc 1 "decrypt --out /dev/stderr with standard error closed" -- closed_stderr
# a cached membership certificate the server no longer takes (its local CA
# made anew, a server restored from backup): groupmail asks for a new one
# once, instead of 401s until the cached one expires
mc=$(ls "$gm_home"/.local/share/groupmail/membership/*.pem)
openssl req -x509 -newkey rsa:2048 -nodes -subj "/O=groupsrv membership/OU=eng" -days 1 \
  -keyout "${mc%.pem}.key" -out "$mc" 2>/dev/null
expect_rc 0 "decrypt --via membership-cert with a cached certificate the server refuses" -- \
  as alice decrypt --via membership-cert --in "$work/msg.der"
same "$work/gm.out" "$work/msg.txt" "membership-cert after a refused cached certificate"
openssl verify -CAfile "$certs/localca.pem" "$mc" >/dev/null || fail "the refused cached certificate was not replaced"
[ "$(stat -c %a "$gm_home"/.local/share/groupmail/membership/*.key)" = 600 ] || fail "membership key mode"
for f in "$gm_home"/.local/share/groupmail/secret-keys/*/*/v*.json; do
  [ "$(stat -c %a "$f")" = 600 ] || fail "secret key file mode"
  grep -q wrapped_key "$f" || fail "secret key stored unwrapped?"
done
ok "stores are 0600, secret keys kept wrapped"

# A store on a full disk (a 64 KiB tmpfs; CI runs as root): the membership
# certificate cannot be cached, a local store error (exit 1, not 4 as for
# a bad answer), no file written; with room again the same command works.
fs=$work/storefs
mkdir -p "$fs"
mount -t tmpfs -o size=64k,mode=0700 tmpfs "$fs" || fail "cannot mount a tmpfs (this test runs as root, as CI does)"
trap 'umount "$fs" 2>/dev/null || true; cleanup' EXIT
expect_rc 0 "fetch-cert into the small store" -- gm fetch-cert --store "$fs/store"
dd if=/dev/zero of="$fs/filler" bs=1k count=100 2>/dev/null || true
expect_rc 1 "decrypt --via membership-cert with its store's disk full" -- \
  as alice decrypt --via membership-cert --store "$fs/store" --in "$work/msg.der"
grep -q 'cannot store the membership certificate.*No space left on device' "$work/gm.err" ||
  fail "the store error does not say why: $(cat "$work/gm.err")"
[ ! -s "$work/gm.out" ] || fail "plaintext written although the command failed"
[ -z "$(find "$fs/store" -type f ! -path '*/pins/*')" ] || fail "files left in the full store: $(find "$fs/store" -type f)"
rm -f "$fs/filler"
expect_rc 0 "decrypt --via membership-cert with room again" -- \
  as alice decrypt --via membership-cert --store "$fs/store" --in "$work/msg.der"
same "$work/gm.out" "$work/msg.txt" "membership-cert with room again"
umount "$fs"
ok "a full store: exit 1 and nothing written; room again: served"

# keys list: the synced versions from the store, nothing unwrapped, nothing created
expect_rc 0 "keys list" -- gm keys list
grep -Eq '^v1 kek_id=[0-9a-f]+ algorithm=RSA-OAEP(-256)? member_cert=[0-9a-f]{16}$' "$work/gm.out" ||
  fail "keys list output: $(cat "$work/gm.out")"
nlisted=$(wc -l < "$work/gm.out")
nstored=$(ls "$gm_home"/.local/share/groupmail/secret-keys/*/*/v*.json | wc -l)
[ "$nlisted" = "$nstored" ] || fail "keys list shows $nlisted versions, the store has $nstored"
expect_rc 0 "keys list --cert (alice's directory only)" -- as alice keys list
[ "$(wc -l < "$work/gm.out")" -ge 1 ] || fail "keys list --cert lists nothing for alice"
expect_rc 0 "keys list on an empty store" -- gm keys list --store "$work/empty-store"
[ ! -s "$work/gm.out" ] || fail "keys list on an empty store printed: $(cat "$work/gm.out")"
[ ! -e "$work/empty-store" ] || fail "keys list created the store"
expect_rc 2 "keys with an unknown subcommand" -- gm keys frob

# local-key (option C): the group key on "our own" token (here: the server's token)
expect_rc 0 "decrypt --via local-key" -- gm decrypt --via local-key \
  --group-key "pkcs11:token=groupsrv;object=gs:group:eng:v1;type=private" --pin-source "$work/token/user-pin" \
  --in "$work/m.smime" --out "$work/out-c.txt"
same "$work/out-c.txt" "$work/m.txt" "local-key"

# recipient-key with the member key on a token: alice's key imported into
# her own SoftHSM token; TLS uses her key file (see docs/groupmail.1.md).
"$SRC/scripts/provision-softhsm" "$work/alicetok" alice >/dev/null
SOFTHSM2_CONF=$work/alicetok/softhsm2.conf GS_USER_PIN=$(cat "$work/alicetok/user-pin") \
  pkcs11-tool --module "$module" --token-label alice --login --pin env:GS_USER_PIN \
  --write-object <(openssl pkey -in "$certs/alice@example.org.key" -outform DER) --type privkey \
  --label alice --id 0a --usage-decrypt >/dev/null 2>&1 || fail "import alice's key"
expect_rc 0 "decrypt --via recipient-key with the key on a token" -- env SOFTHSM2_CONF="$work/alicetok/softhsm2.conf" \
  "$BIN/groupmail" decrypt --via recipient-key --cert "$certs/alice@example.org.pem" \
  --key "pkcs11:token=alice;object=alice;type=private" --pin-source "$work/alicetok/user-pin" \
  --tls-cert "$certs/alice@example.org.pem" --tls-key "$certs/alice@example.org.key" --in "$work/m.smime"
same "$work/gm.out" "$work/m.txt" "recipient-key token"

# group-secret with a KEKRI message (the exploder's group-secret mode)
cms ri "$work/msg.der" "$work/ri.der"
printf '{"recipient_info":"%s","to":"group-secret"}' "$(b64 "$work/ri.der")" > "$work/rw.json"
c dle --data-binary @"$work/rw.json" "$base/v1/groups/eng/rewrap" > "$work/rw.out"
b64d "$(json_get "$work/rw.out" recipient_infos 0 2>/dev/null || json_get "$work/rw.out" recipient_info)" > "$work/kekri.der"
cms swap "$work/msg.der" "$work/kekri.der" "$work/kek-msg.der"
expect_rc 0 "decrypt --via group-secret of a KEKRI-only message (local key store)" -- \
  as bob decrypt --via group-secret --in "$work/kek-msg.der"
same "$work/gm.out" "$work/msg.txt" "group-secret KEKRI"
# the same copy with another method: the error names the method that reads it
# (it used to suggest --via own-key, the member-certs copies' method)
expect_rc 5 "decrypt --via tls of a KEKRI-only message" -- as bob decrypt --via tls --in "$work/kek-msg.der"
grep -q -- 'to a group secret key .*: --via group-secret$' "$work/gm.err" ||
  fail "a group-secret copy read --via tls: $(cat "$work/gm.err")"
# a message for the group that also carries a KEKRI of the sender's own
# (openssl cms -secretkey beside -recip): --via group-secret has the
# group's RecipientInfo re-wrapped, as --via tls reads it (it took the
# KEKRI for the group secret key's: exit 5, "needs a group secret key this
# member does not have")
openssl cms -encrypt -binary -aes-256-cbc -secretkey 000102030405060708090a0b0c0d0e0f -secretkeyid 0a0b \
  -recip "$certs/group.pem" -in "$work/msg.txt" -outform DER -out "$work/own-kek.der"
for via in tls group-secret; do
  expect_rc 0 "decrypt --via $via of a message to the group with the sender's own KEKRI" -- \
    as bob decrypt --via "$via" --in "$work/own-kek.der"
  same "$work/gm.out" "$work/msg.txt" "the group's RecipientInfo beside a KEKRI, $via"
done

# unwrap for scripts
expect_rc 0 "unwrap --via tls prints the key" -- as alice unwrap --via tls --in "$work/msg.der"
check_cek "$(cat "$work/gm.out")"
# --out: the same line in a file of mode 0600 (written whole, then renamed),
# nothing on standard output; an --out that cannot be made leaves nothing
expect_rc 0 "unwrap --out writes the key to a 0600 file" -- as alice unwrap --via tls --in "$work/msg.der" --out "$work/cek.hex"
[ ! -s "$work/gm.out" ] || fail "unwrap --out also printed: $(cat "$work/gm.out")"
[ "$(stat -c %a "$work/cek.hex")" = 600 ] || fail "unwrap --out mode $(stat -c %a "$work/cek.hex")"
check_cek "$(cat "$work/cek.hex")"
expect_rc 1 "unwrap --out into a missing directory" -- as alice unwrap --via tls --in "$work/msg.der" --out "$work/nodir/k"
grep -q "cannot create $work/nodir/k" "$work/gm.err" || fail "unwrap --out error: $(cat "$work/gm.err")"
expect_rc 0 "unwrap --via recipient-key prints a KTRI" -- as alice unwrap --via recipient-key --recipient-info "$work/ri.der"
b64d "$(cat "$work/gm.out")" > "$work/ri-a.der"
check_ktri "$work/ri-a.der" "$certs/alice@example.org.pem" "$certs/alice@example.org.key"
# --recipient-info as base64 text the way base64(1) writes it (76-column
# lines) or on one line with spaces around: the same key
base64 "$work/ri.der" > "$work/ri.b64"
expect_rc 0 "unwrap --recipient-info in base64 lines" -- as alice unwrap --via tls --recipient-info "$work/ri.b64"
check_cek "$(cat "$work/gm.out")"
printf '  %s \n' "$(base64 -w0 "$work/ri.der")" > "$work/ri1.b64"
expect_rc 0 "unwrap --recipient-info in one base64 line" -- as alice unwrap --via tls --recipient-info "$work/ri1.b64"
check_cek "$(cat "$work/gm.out")"
: > "$work/empty.ri"
expect_rc 5 "unwrap --recipient-info of an empty file" -- as alice unwrap --via tls --recipient-info "$work/empty.ri"
grep -q 'neither DER nor base64' "$work/gm.err" || fail "empty --recipient-info: $(cat "$work/gm.err")"
# a bare PKCS#1 v1.5 RecipientInfo: the content algorithm comes from the
# command line, since no message names it (the server never guesses)
openssl cms -encrypt -binary -aes-128-cbc -in "$work/msg.txt" -outform DER -out "$work/v15.der" \
  -recip "$certs/group.pem" 2>/dev/null
cms ri "$work/v15.der" "$work/v15-ri.der"
expect_rc 1 "unwrap of a bare v1.5 RecipientInfo without --content-algorithm" -- \
  as alice unwrap --via tls --recipient-info "$work/v15-ri.der"
grep -q "content_algorithm_required" "$work/gm.err" || fail "v1.5 without length: $(cat "$work/gm.err")"
expect_rc 0 "unwrap of a bare v1.5 RecipientInfo with --content-algorithm" -- \
  as alice unwrap --via tls --recipient-info "$work/v15-ri.der" --content-algorithm aes-128-cbc
[ "$(tr -d '\n' < "$work/gm.out" | wc -c)" = 32 ] || fail "v1.5 unwrap: not a 16-byte key: $(cat "$work/gm.out")"
expect_rc 0 "unwrap of a v1.5 message (its content algorithm sent along)" -- as alice unwrap --via tls --in "$work/v15.der"
[ "$(tr -d '\n' < "$work/gm.out" | wc -c)" = 32 ] || fail "v1.5 message unwrap: not a 16-byte key"
expect_rc 2 "--content-algorithm without --recipient-info" -- \
  as alice unwrap --via tls --in "$work/v15.der" --content-algorithm aes-128-cbc
# a name no one knows is the caller's typo: usage (2), said before
# anything is sent, not the server's unsupported_algorithm read as a bad
# message (5); the OID and OpenSSL's spelling are names it knows
expect_rc 2 "--content-algorithm with a typo" -- \
  as alice unwrap --via tls --recipient-info "$work/v15-ri.der" --content-algorithm aes-128-cbcc
grep -q -- "--content-algorithm aes-128-cbcc: not a content algorithm" "$work/gm.err" ||
  fail "--content-algorithm typo: $(cat "$work/gm.err")"
expect_rc 0 "--content-algorithm as the OID" -- \
  as alice unwrap --via tls --recipient-info "$work/v15-ri.der" --content-algorithm 2.16.840.1.101.3.4.1.2

# groupmail encrypt (from the pin) -> groupmail decrypt via the server
expect_rc 0 "encrypt to the pinned group certificate" -- gm encrypt --mime --in "$work/m.txt" --out "$work/gm.smime"
expect_rc 0 "decrypt a groupmail message --via tls" -- as alice decrypt --in "$work/gm.smime"
same_text "$work/gm.out" "$work/m.txt" "groupmail encrypt"
# A --group-cert file whose CERTIFICATE block is marked encrypted
# (Proc-Type: 4,ENCRYPTED): OpenSSL's default asked for a pass phrase on
# the terminal or, with none (a script, cron), printed its prompt and read
# a line of standard input as the pass phrase. Refused now, asking nothing
# (setsid: no terminal, whoever runs the test).
printf -- '-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,%s\n\n%s\n-----END CERTIFICATE-----\n' \
  00112233445566778899AABBCCDDEEFF AAAAAAAAAAAAAAAAAAAAAA== > "$work/enc-cert.pem"
expect_rc 1 "a --group-cert whose PEM block is marked encrypted" -- \
  setsid -w "$BIN/groupmail" encrypt --group-cert "$work/enc-cert.pem" --in "$work/m.txt" <<< "typed"
grep -q 'pass phrase' "$work/gm.err" && fail "groupmail asked for a pass phrase: $(cat "$work/gm.err")"

# send over SMTP to a real (aiosmtpd) server, then decrypt what arrived
/usr/bin/python3 "$SRC/tests/lib/smtpd.py" --dir "$work/mail" --port-file "$work/smtp.port" --pid-file "$work/smtp.pid" &
smtp_pid=$!
trap 'kill $smtp_pid 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 100); do [ -s "$work/smtp.port" ] && break; sleep 0.1; done
expect_rc 0 "send --encrypt via SMTP" -- gm send --encrypt --mime --smtp "smtp://127.0.0.1:$(cat "$work/smtp.port")" \
  --to eng@example.org --from alice@example.org --in "$work/m.txt"
expect_rc 5 "send refuses plaintext" -- gm send --smtp "smtp://127.0.0.1:$(cat "$work/smtp.port")" \
  --to eng@example.org --from alice@example.org --in "$work/m.txt"
got=$(ls "$work/mail/new" | head -n1)
[ -n "$got" ] || fail "no mail arrived"
grep -q 'eng@example.org' "$work/mail/envelope.log" || fail "envelope recipient"
expect_rc 0 "decrypt the mail that arrived" -- as bob decrypt --via recipient-key --in "$work/mail/new/$got"
same_text "$work/gm.out" "$work/m.txt" "sent mail"

# Messages of any size in the same memory (groupmail(1)): 1 MiB and
# 32 MiB encrypted and decrypted, the peak RSS of each compared.
rss() { /usr/bin/python3 "$SRC/tests/lib/maxrss.py" "$work/rss.$1" "${@:2}"; cat "$work/rss.$1"; }
for mb in 1 32; do
  head -c $((mb * 1048576)) /dev/urandom > "$work/big$mb"
  enc[$mb]=$(rss enc$mb "$BIN/groupmail" encrypt --in "$work/big$mb" --out "$work/big$mb.p7m")
  dec[$mb]=$(rss dec$mb "$BIN/groupmail" decrypt --via tls --in "$work/big$mb.p7m" --out "$work/big$mb.out" \
    --cert "$certs/alice@example.org.pem" --key "$certs/alice@example.org.key")
  same "$work/big$mb.out" "$work/big$mb" "decrypt of $mb MiB"
done
for step in enc dec; do
  declare -n kb=$step
  [ $((kb[32] - kb[1])) -lt 8192 ] || fail "$step: peak RSS ${kb[1]} kB for 1 MiB, ${kb[32]} kB for 32 MiB"
  ok "$step: peak RSS ${kb[1]} kB for 1 MiB, ${kb[32]} kB for 32 MiB"
done
rm -f "$work"/big*

# ---- refusals and bad input ----
rm -f "$work/x.txt"
expect_rc 3 "removed member gets exit 3 (tls)" -- as carol decrypt --via tls --in "$work/m.smime" --out "$work/x.txt"
[ ! -e "$work/x.txt" ] || fail "plaintext file left behind"
expect_rc 3 "removed member gets exit 3 (membership-cert)" -- as carol decrypt --via membership-cert --store "$work/carol-store" --in "$work/m.smime"
expect_rc 3 "removed member gets exit 3 (keys sync)" -- as carol keys sync --store "$work/carol-store"

# a passphrase-protected key file (openssl genpkey -aes256): refused in one
# line, exit 1, as the TLS client key (libcurl) and as the key that unwraps
# a KTRI, with no passphrase prompt: OpenSSL's prompt reads the terminal,
# or without one (setsid: as from procmail or cron) standard input.
openssl pkey -in "$certs/alice@example.org.key" -aes256 -passout pass:secret -out "$work/alice-enc.key"
for via in tls recipient-key; do
  expect_rc 1 "decrypt --via $via with a passphrase-protected key" -- setsid "$BIN/groupmail" decrypt --via "$via" \
    --in "$work/msg.der" --store "$work/enc-store" --cert "$certs/alice@example.org.pem" --key "$work/alice-enc.key" </dev/null
  ! grep -qi "pass phrase" "$work/gm.err" || fail "decrypt --via $via prompted for a passphrase: $(cat "$work/gm.err")"
done
# A key encrypted with the empty passphrase (openssl pkcs8 -topk8 -passout
# pass:): libcurl, given the empty passphrase, loads it for --via tls, so
# every method takes it, not tls alone.
openssl pkcs8 -topk8 -in "$certs/alice@example.org.key" -passout pass: -out "$work/alice-empty.key"
for via in tls recipient-key; do
  expect_rc 0 "decrypt --via $via with a key encrypted with the empty passphrase" -- setsid "$BIN/groupmail" decrypt \
    --via "$via" --in "$work/msg.der" --store "$work/enc-store" --cert "$certs/alice@example.org.pem" \
    --key "$work/alice-empty.key" </dev/null
  same "$work/gm.out" "$work/msg.txt" "decrypt --via $via with a key encrypted with the empty passphrase"
done

# tampered: flip a byte of the GCM ciphertext (near the end of the base64)
/usr/bin/python3 - "$work/m.smime" "$work/t.smime" <<'PY'
import base64, sys
raw = open(sys.argv[1]).read()
head, body = raw.split("\n\n", 1)
der = bytearray(base64.b64decode("".join(body.split())))
der[-40] ^= 1
open(sys.argv[2], "w").write(head + "\n\n" + base64.encodebytes(bytes(der)).decode())
PY
expect_rc 5 "tampered message: exit 5" -- as alice decrypt --via tls --in "$work/t.smime" --out "$work/x.txt"
[ ! -e "$work/x.txt" ] || fail "plaintext file left behind after tampering"
ls "$work" | grep -q 'x.txt.tmp' && fail "temp file left behind"

# a message not for this group (nor for alice)
openssl cms -encrypt -aes-256-gcm -recip "$certs/bob@example.org.pem" -in "$work/m.txt" -out "$work/alien.smime" 2>/dev/null
expect_rc 5 "message not for the group: exit 5" -- as alice decrypt --via tls --in "$work/alien.smime" --out "$work/x.txt"
grep -q "own key" "$work/gm.err" || fail "no hint at --via own-key: $(cat "$work/gm.err")"
# one encrypted to alice herself (a member-certs copy): her own key, no server
openssl cms -encrypt -aes-128-cbc -recip "$certs/alice@example.org.pem" -in "$work/m.txt" -out "$work/mine.smime" 2>/dev/null
expect_rc 0 "a copy for alice's own certificate, whatever --via" -- as alice decrypt --via tls --in "$work/mine.smime" --out "$work/mine.txt"
same_text "$work/mine.txt" "$work/m.txt" "own-key decryption"
expect_rc 0 "--via own-key" -- as alice decrypt --via own-key --in "$work/mine.smime" --out "$work/mine2.txt"
same_text "$work/mine2.txt" "$work/m.txt" "--via own-key"
# a NUL in a header line (after the first, or in the Content-Type): refused
# as framing, nothing written; it used to end the line there, the rest of
# it dropped and the next field run into it, and a Content-Type of
# "application/pkcs7-mime<NUL>junk" was read as S/MIME
/usr/bin/python3 - "$work/mine.smime" "$work/nul1.smime" "$work/nul2.smime" <<'PY'
import sys
m = open(sys.argv[1], "rb").read()
nl = m.index(b"\n") + 1
open(sys.argv[2], "wb").write(m[:nl] + b"X-Note: a\x00b\n" + m[nl:])
open(sys.argv[3], "wb").write(m.replace(b"application/pkcs7-mime", b"application/pkcs7-mime\x00junk", 1))
PY
for n in nul1 nul2; do
  expect_rc 5 "a NUL in a header line ($n)" -- as alice decrypt --via own-key --in "$work/$n.smime" --out "$work/x.txt"
  grep -q "malformed S/MIME framing" "$work/gm.err" || fail "$n: $(cat "$work/gm.err")"
  [ ! -e "$work/x.txt" ] || fail "plaintext written for $n"
done
# a footer appended inside the base64, and the CMS under
# Content-Transfer-Encoding: binary: said as they are (they were "input
# truncated" and "malformed S/MIME framing", where the exploder said
# "must be base64")
{ cat "$work/mine.smime"; printf '\nFooter text here\n'; } >"$work/footer.smime"
{ sed '/^$/q' "$work/mine.smime" | sed 's/^Content-Transfer-Encoding: base64$/Content-Transfer-Encoding: binary/'
  sed '1,/^$/d' "$work/mine.smime" | base64 -d; } >"$work/binary.smime"
expect_rc 5 "a footer inside the base64" -- as alice decrypt --via own-key --in "$work/footer.smime" --out "$work/x.txt"
grep -q "text in the base64 that is not base64 (a footer" "$work/gm.err" || fail "footer: $(cat "$work/gm.err")"
expect_rc 5 "Content-Transfer-Encoding: binary" -- as alice decrypt --via own-key --in "$work/binary.smime" --out "$work/x.txt"
grep -q "not in base64 (its Content-Transfer-Encoding is another" "$work/gm.err" || fail "binary: $(cat "$work/gm.err")"
[ ! -e "$work/x.txt" ] || fail "plaintext written for a footer or binary message"
expect_rc 5 "--via own-key on a message without alice's RecipientInfo" -- as alice decrypt --via own-key --in "$work/alien.smime" --out "$work/x.txt"
[ ! -e "$work/x.txt" ] || fail "plaintext left for a foreign message"
printf 'not a message\n' > "$work/junk.txt"
expect_rc 5 "not a message: exit 5" -- as alice decrypt --in "$work/junk.txt"
# OpenSSL 3.0's `openssl cms -encrypt -recip group.pem` and `openssl smime
# -encrypt` without a cipher option send 3DES-CBC with PKCS#1 v1.5 (so
# does old Outlook): read by every method, the server told des-ede3-cbc
openssl cms -encrypt -in "$work/m.txt" -out "$work/des3.eml" -recip "$certs/group.pem"
openssl smime -encrypt -in "$work/m.txt" -out "$work/des3-smime.eml" "$certs/group.pem"
for via in tls recipient-key membership-cert group-secret; do
  for f in des3 des3-smime; do
    expect_rc 0 "openssl $f's default (3DES) --via $via" -- as alice decrypt --via "$via" --in "$work/$f.eml" --out "$work/out.txt"
    same_text "$work/out.txt" "$work/m.txt" "3DES ($f, $via)"
  done
done
# a CMS message with a content cipher groupmail does not read (Camellia):
# exit 5, and the error says what it reads rather than "not a CMS message"
openssl cms -encrypt -binary -camellia256 -in "$work/m.txt" -outform DER -out "$work/cam.der" -recip "$certs/group.pem"
expect_rc 5 "a Camellia message: exit 5" -- as alice decrypt --in "$work/cam.der" --out "$work/x.txt"
grep -q 'AES-CBC' "$work/gm.err" && ! grep -q 'not an encrypted' "$work/gm.err" || fail "Camellia: $(cat "$work/gm.err")"
[ ! -e "$work/x.txt" ] || fail "plaintext file left for a Camellia message"

# What lists and mail gateways make of a stock client's message on its way:
# a Thunderbird one (NSS cmsutil -E: PKCS#1 v1.5, AES-128-CBC) whose list
# tagged the Subject and added a footer outside the encryption, turning it
# into multipart/mixed (as Mailman does; a gateway's disclaimer too), and
# one signed after it was encrypted (multipart/signed around the
# pkcs7-mime part). groupmail reads the S/MIME part, as mail clients do;
# two encrypted parts are refused; `send` still refuses both shapes (a
# part outside the encryption, or not S/MIME at the top).
nssdb=$work/nss-send
mkdir -p "$nssdb"
certutil -N -d "sql:$nssdb" --empty-password
certutil -A -d "sql:$nssdb" -n eng -t ",," -i "$certs/group.pem"
cmsutil -E -d "sql:$nssdb" -r eng -i "$work/m.txt" -o "$work/tb.der" || fail "cmsutil -E"
tb_part() {
  printf 'Content-Type: application/pkcs7-mime; name="smime.p7m"; smime-type=enveloped-data\r\n'
  printf 'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="smime.p7m"\r\n'
  printf 'Content-Description: S/MIME Encrypted Message\r\n\r\n'
  base64 -w 72 "$work/tb.der" | sed 's/$/\r/'
}
footer_mail() { # footer_mail N: the list's multipart/mixed with N S/MIME parts
  printf 'From: alice@example.org\r\nTo: eng@example.org\r\nSubject: [eng] e2e\r\nMIME-Version: 1.0\r\n'
  printf 'Content-Type: multipart/mixed;\r\n boundary="===============4159286624421592736=="\r\n\r\n'
  local i
  for i in $(seq 1 "$1"); do
    printf -- '--===============4159286624421592736==\r\n'
    tb_part
  done
  printf -- '--===============4159286624421592736==\r\nContent-Type: text/plain; charset="us-ascii"\r\n'
  printf 'Content-Transfer-Encoding: 7bit\r\n\r\n_______________________________________________\r\n'
  printf 'eng mailing list\r\n--===============4159286624421592736==--\r\n'
}
footer_mail 1 > "$work/footer.eml"
for via in tls recipient-key; do
  rm -f "$work/out.txt"
  expect_rc 0 "a Thunderbird message with a list footer outside the encryption (--via $via)" -- \
    as alice decrypt --via "$via" --in "$work/footer.eml" --out "$work/out.txt"
  same "$work/out.txt" "$work/m.txt" "footer message, $via"
done
footer_mail 2 > "$work/footer2.eml"
expect_rc 5 "two encrypted parts in one multipart/mixed: exit 5" -- as alice decrypt --in "$work/footer2.eml"
tb_part > "$work/tb.eml"
openssl cms -sign -signer "$certs/bob@example.org.pem" -inkey "$certs/bob@example.org.key" -in "$work/tb.eml" \
  -out "$work/ets.eml" || fail "openssl cms -sign"
expect_rc 0 "encrypted, then signed (multipart/signed)" -- as alice decrypt --in "$work/ets.eml" --out "$work/out.txt"
same "$work/out.txt" "$work/m.txt" "encrypted, then signed"
openssl cms -sign -signer "$certs/bob@example.org.pem" -inkey "$certs/bob@example.org.key" -in "$work/m.txt" \
  -out "$work/signed.eml" || fail "openssl cms -sign"
expect_rc 5 "signed, not encrypted: exit 5" -- as alice decrypt --in "$work/signed.eml" --out "$work/x.txt"
grep -q 'it is signed' "$work/gm.err" || fail "signed message: $(cat "$work/gm.err")"
# several recipients, the group's not the first: Thunderbird encrypts to
# the sender too (NSS keeps the order given), and a sender naming the
# recipients by subjectKeyIdentifier (openssl cms -keyid; DER sorts them)
certutil -A -d "sql:$nssdb" -n alice -t ",," -i "$certs/alice@example.org.pem"
cmsutil -E -d "sql:$nssdb" -r alice,eng -i "$work/m.txt" -o "$work/tb2.der" || fail "cmsutil -E -r alice,eng"
[ "$(openssl cms -cmsout -print -inform DER -in "$work/tb2.der" | grep -c 'd.issuerAndSerialNumber')" = 2 ] ||
  fail "two RecipientInfos wanted"
openssl cms -encrypt -keyid -aes-256-cbc -binary -in "$work/m.txt" -outform DER -out "$work/ski.der" \
  -recip "$certs/carol@example.org.pem" -recip "$certs/alice@example.org.pem" -recip "$certs/group.pem"
for f in tb2 ski; do
  for via in tls recipient-key group-secret; do
    expect_rc 0 "bob reads $f (the group's RecipientInfo not first) --via $via" -- \
      as bob decrypt --via "$via" --in "$work/$f.der" --out "$work/out.txt"
    same "$work/out.txt" "$work/m.txt" "$f, $via"
  done
done
for f in footer ets; do
  expect_rc 5 "send refuses a $f message (not S/MIME as a whole)" -- gm send --smtp "smtp://127.0.0.1:$(cat "$work/smtp.port")" \
    --to eng@example.org --in "$work/$f.eml"
done

# TLS pin of the server: mismatch -> exit 4; the right pin works
expect_rc 4 "server pin mismatch: exit 4" -- as alice decrypt --pin "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" --in "$work/m.smime"
openssl x509 -in "$certs/server.pem" -pubkey -noout > "$work/server-pub.pem"
expect_rc 0 "server pin match" -- as alice decrypt --pin "$work/server-pub.pem" --in "$work/m.smime"

# server down / unreachable -> exit 4
expect_rc 4 "server unreachable: exit 4" -- as alice decrypt --server "https://127.0.0.1:$(free_port)" --in "$work/m.smime"
expect_rc 1 "a --cacert file that does not exist: exit 1 (local)" -- \
  as alice decrypt --cacert "$work/no-such-ca.pem" --in "$work/m.smime"
expect_rc 4 "a server the --cacert does not verify: exit 4" -- as alice decrypt --cacert "$certs/localca.pem" --in "$work/m.smime"
expect_rc 2 "usage error: exit 2" -- gm decrypt --via carrier-pigeon
# a configuration file: -c before the command too (as groupsrv takes it);
# one that is missing, has an unknown key or a bad value is exit 1 (local)
printf '[server]\nurl = %s\ngroup = eng\ncacert = %s\ngroup_ca = %s\n[identity]\ncert = %s\nkey = %s\n' "$base" \
  "$certs/tca.pem" "$certs/localca.pem" "$certs/alice@example.org.pem" "$certs/alice@example.org.key" > "$work/gm.ini"
expect_rc 0 "groupmail -c FILE decrypt" -- gm -c "$work/gm.ini" decrypt --in "$work/msg.der"
same "$work/gm.out" "$work/msg.txt" "-c before the command"
expect_rc 0 "groupmail --config=FILE keys list" -- gm --config="$work/gm.ini" keys list
printf '[server]\nurl = %s\nfrobnicate = 1\n' "$base" > "$work/bad.ini"
printf '[server]\ntimeout = soon\n' > "$work/bad2.ini"
expect_rc 1 "a config file with an unknown key" -- gm decrypt -c "$work/bad.ini" --in "$work/msg.der"
expect_rc 1 "a config file with a bad value" -- gm -c "$work/bad2.ini" decrypt --in "$work/msg.der"
expect_rc 1 "a config file that is not there" -- gm -c "$work/none.ini" decrypt --in "$work/msg.der"
expect_rc 1 "GROUPMAIL_CONFIG with an unknown key" -- env GROUPMAIL_CONFIG="$work/bad.ini" "$BIN/groupmail" decrypt \
  --in "$work/msg.der"
# a line longer than libinih's buffer is refused by its number, not cut
# short (a long pkcs11: URI or path would silently lose its end)
printf '[identity]\ncert = %s/%s.pem\n' "$work" "$(printf 'c%.0s' $(seq 1 240))" > "$work/long.ini"
expect_rc 1 "a config line longer than 199 characters" -- gm -c "$work/long.ini" decrypt --in "$work/msg.der"
grep -q "long.ini:2: line longer than 199 characters" "$work/gm.err" || fail "long config line: $(cat "$work/gm.err")"
# encrypt with the pin when the group server cannot say whether the group
# has a new key: its TLS identity not verified (an interceptor's
# certificate, or the wrong --cacert) is the pin, but said, not silently;
# a group the server does not have (404: deleted) is not encrypted to
expect_rc 0 "encrypt, the server's TLS identity not verified" -- \
  gm encrypt --cacert "$certs/localca.pem" --in "$work/m.txt" --out "$work/unasked.der"
grep -q '^groupmail: warning: could not ask the group server whether group eng has a new key (.*): encrypting to the pinned certificate$' \
  "$work/gm.err" || fail "encrypt, the check not made, was silent: $(cat "$work/gm.err")"
[ -s "$work/unasked.der" ] || fail "encrypt with the check not made wrote nothing"
cp "$pin" "$gm_home/.local/share/groupmail/pins/gone@127.0.0.1_$port.pem"
expect_rc 4 "encrypt to the pin of a group the server has not" -- \
  gm encrypt --group gone --in "$work/m.txt" --out "$work/gone.der"
grep -q 'has no group gone' "$work/gm.err" || fail "encrypt to a gone group: $(cat "$work/gm.err")"
[ ! -e "$work/gone.der" ] || fail "encrypt to a gone group left its output"
# a group re-key (groupsrv group rotate): mail to the new key needs a
# repin; after it, mail to the key pinned before is still read (the server
# still decrypts it), by every method, and a later fetch-cert keeps both
gs group rotate eng >/dev/null
gs group show eng --cert > "$work/group-v2.pem"
openssl cms -encrypt -binary -aes-256-cbc -in "$work/m.txt" -outform DER -out "$work/v2.der" -recip "$work/group-v2.pem"
expect_rc 5 "mail to a newer group key before the repin" -- as alice decrypt --in "$work/v2.der"
grep -q 'fetch-cert --repin' "$work/gm.err" || fail "no repin hint: $(cat "$work/gm.err")"
# encrypt (and send --encrypt) to the pinned key of before the re-key: told
# so, as fetch-cert is, not mail to a key a removed member may hold, or
# that the group may retire (it went out, exit 0)
expect_rc 4 "encrypt to the pinned key after the re-key" -- gm encrypt --in "$work/m.txt" --out "$work/old-key.der"
grep -q '^groupmail: the group has a new key: .*fetch-cert --repin$' "$work/gm.err" ||
  fail "encrypt after the re-key: $(cat "$work/gm.err")"
[ ! -e "$work/old-key.der" ] || fail "encrypt after the re-key left its output"
expect_rc 4 "fetch-cert after the re-key, without --repin" -- gm fetch-cert
# one server however its URL is typed (host in capitals, a slash after
# it, the port with a leading zero, as curl reads it; the root's dot
# too, which localhost does not resolve with): the one
# pin, refused as well, not a new pin
# under another name that takes any certificate, as a first use does
for url in "https://LocalHost:$port/" "https://LOCALHOST:$port" "https://localhost:0$port"; do
  expect_rc 4 "fetch-cert after the re-key, the server typed $url" -- gm fetch-cert --server "$url" --store "$work/named"
  grep -q 'differs from the one pinned' "$work/gm.err" || fail "the server typed $url: $(cat "$work/gm.err")"
done
[ "$(ls "$work/named/pins")" = "eng@localhost_$port.pem" ] || fail "pins of one server: $(ls "$work/named/pins")"
# a pin named as the server was typed is the server's pin (moved to its name)
expect_rc 4 "fetch-cert after the re-key, a pin named by the host as typed" -- \
  gm fetch-cert --server "https://LocalHost:$port" --store "$work/typed"
grep -q 'differs from the one pinned' "$work/gm.err" || fail "a pin named as typed: $(cat "$work/gm.err")"
[ "$(ls "$work/typed/pins")" = "eng@localhost_$port.pem" ] || fail "the pin named as typed: $(ls "$work/typed/pins")"
# two pins of one server that differ, the new name's and an older
# groupmail's named as the server was typed (taken apart, one of them
# after the re-key): neither is picked, until fetch-cert --repin
mkdir -p "$work/twins/pins"
cp "$work/group-v2.pem" "$work/twins/pins/eng@localhost_$port.pem"
cp "$work/named/pins/eng@localhost_$port.pem" "$work/twins/pins/eng@LocalHost_$port.pem"
expect_rc 4 "encrypt with two pins of the server that differ" -- \
  gm encrypt --server "https://LocalHost:$port" --store "$work/twins" --in "$work/m.txt" --out "$work/twins.der"
grep -q 'two pins for this server differ' "$work/gm.err" || fail "two pins: $(cat "$work/gm.err")"
[ ! -e "$work/twins.der" ] || fail "encrypt with two pins left its output"
expect_rc 4 "fetch-cert with two pins of the server that differ" -- \
  gm fetch-cert --server "https://LocalHost:$port" --store "$work/twins"
expect_rc 0 "fetch-cert --repin with two pins of the server" -- \
  gm fetch-cert --repin --server "https://LocalHost:$port" --store "$work/twins"
[ "$(ls "$work/twins/pins")" = "eng@localhost_$port.pem" ] || fail "pins after the repin: $(ls "$work/twins/pins")"
expect_rc 0 "fetch-cert --repin" -- gm fetch-cert --repin
for round in repinned fetched-again; do
  for via in tls recipient-key group-secret; do
    expect_rc 0 "$round: mail to the new key, --via $via" -- as alice decrypt --via "$via" --in "$work/v2.der" --out "$work/out.txt"
    same "$work/out.txt" "$work/m.txt" "new key, $via"
    expect_rc 0 "$round: mail to the key pinned before, --via $via" -- \
      as alice decrypt --via "$via" --in "$work/msg.der" --out "$work/out.txt"
    same "$work/out.txt" "$work/msg.txt" "old key, $via"
  done
  expect_rc 0 "fetch-cert again" -- gm fetch-cert
done
# a group certificate renewed for the same key (group renew-cert): what
# members see is what operations.md ("Routine key management") tells the
# operator: fetch-cert refuses it as a re-key until --repin, encrypt goes
# on with the pinned one, and mail to the key reads before and after
gs group renew-cert eng >/dev/null
said=$(tr '\n' ' ' < "$SRC/docs/operations.md" | sed 's/  */ /g' |
  grep -o 'fetch-cert` `group certificate differs from the one pinned in PIN-FILE (re-key?): check, then fetch-cert --repin` (exit 4)' |
  sed 's/^fetch-cert` `//; s/` (exit 4)$//') || fail "operations.md does not say what fetch-cert says after group renew-cert"
expect_rc 4 "fetch-cert after group renew-cert, without --repin" -- gm fetch-cert
pinfile=$(grep -o 'pinned in [^ ]* (re-key' "$work/gm.err" | sed 's/^pinned in //; s/ (re-key$//')
[ "$(sed 's/^groupmail: //' "$work/gm.err")" = "${said/PIN-FILE/$pinfile}" ] ||
  fail "fetch-cert after renew-cert does not say what operations.md quotes: $(cat "$work/gm.err") / $said"
expect_rc 0 "encrypt with the pinned certificate after group renew-cert" -- gm encrypt --in "$work/m.txt" --out "$work/renew.der"
expect_rc 0 "fetch-cert --repin after group renew-cert" -- gm fetch-cert --repin
expect_rc 0 "mail to the renewed key, encrypted before the repin" -- as alice decrypt --in "$work/renew.der" --out "$work/out.txt"
same_text "$work/out.txt" "$work/m.txt" "renewed key"
# a store pinned after the re-key (a new member, a new computer) holds the
# current version alone: mail sent to the key before is still read, as the
# server still unwraps it (it was exit 5, "not encrypted to group eng")
for via in tls recipient-key group-secret; do
  expect_rc 0 "a store pinned after the re-key: mail to the key before, --via $via" -- \
    as alice decrypt --via "$via" --store "$work/pinned-after-rekey" --in "$work/msg.der" --out "$work/out.txt"
  same "$work/out.txt" "$work/msg.txt" "old key, pinned after the re-key, $via"
done
[ "$(grep -c 'BEGIN CERTIFICATE' "$work/pinned-after-rekey/pins/"*.pem)" = 2 ] ||
  fail "test set-up: the new store's pin holds more than the current chain"
# while a message to another certificate of the group's CA (bob's), which
# the server does not take for a version of the group, is not for it
openssl cms -encrypt -binary -aes-256-cbc -in "$work/m.txt" -outform DER -out "$work/to-bob.der" \
  -recip "$certs/bob@example.org.pem"
expect_rc 5 "a message to another certificate of the group's CA" -- \
  as alice decrypt --via tls --store "$work/pinned-after-rekey" --in "$work/to-bob.der"
grep -q 'not encrypted to group eng .*own key' "$work/gm.err" || fail "to bob's certificate: $(cat "$work/gm.err")"
# mail from bob to the key before whose client (Thunderbird, Outlook) added
# bob's own certificate, which the group's CA issued too, his RecipientInfo
# first: the server refuses his (unknown_recipient) and is asked with the
# next (it was exit 5: two RecipientInfos naming the CA were not guessed
# between)
cms ri "$work/to-bob.der" "$work/bob-ri.der"
cms ri "$work/msg.der" "$work/v1-ri.der"
cat "$work/bob-ri.der" "$work/v1-ri.der" >"$work/bob-v1-ris.der"
cms swap "$work/msg.der" "$work/bob-v1-ris.der" "$work/from-bob.der"
for via in tls membership-cert; do
  expect_rc 0 "mail to the key before and the sender's own certificate, --via $via" -- \
    as alice decrypt --via "$via" --store "$work/pinned-after-rekey" --in "$work/from-bob.der" --out "$work/out.txt"
  same "$work/out.txt" "$work/msg.txt" "old key and the sender's certificate, $via"
done
# the same from a sender whose client names recipients by subjectKeyIdentifier
# (openssl cms -keyid, Outlook set to key identifiers): no issuer tells the
# key before from bob's own certificate, and the server is asked the same
# way (it was exit 5, "not encrypted to group eng")
openssl cms -encrypt -keyid -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/from-bob-ski.der" \
  -recip "$certs/bob@example.org.pem" -recip "$certs/group.pem"
expect_rc 0 "mail by key identifier to the key before and the sender's own certificate" -- \
  as alice decrypt --via tls --store "$work/pinned-after-rekey" --in "$work/from-bob-ski.der" --out "$work/out.txt"
same "$work/out.txt" "$work/msg.txt" "old key by key identifier"
# a pin file that kept many earlier versions (as after some 20 re-keys) is
# still read: its reader once took 16 certificates, the re-key kept 64
for i in $(seq 1 20); do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=eng v$i" \
    -keyout /dev/null 2>/dev/null >>"$pin"
done
[ "$(grep -c 'BEGIN CERTIFICATE' "$pin")" -gt 20 ] || fail "test set-up: the pin file did not grow"
expect_rc 0 "mail to the new key with 20 more versions pinned" -- as alice decrypt --in "$work/v2.der" --out "$work/out.txt"
same "$work/out.txt" "$work/m.txt" "new key, long pin file"
expect_rc 0 "fetch-cert with 20 more versions pinned" -- gm fetch-cert

# ---- a group secret key version retired (groupsrv secret retire) ----
# bob stored the version the KEKRI message is wrapped under: he still
# reads it; a store that never had it cannot get it any more.
sv=$(gs secret rotate eng | sed -n 's/^group eng: new secret key version \([0-9]*\)$/\1/p')
gs secret retire eng --before "$sv" >/dev/null
expect_rc 0 "a retired secret key version, stored before: still read" -- \
  as bob decrypt --via group-secret --in "$work/kek-msg.der"
same "$work/gm.out" "$work/msg.txt" "group-secret KEKRI after the retire"
expect_rc 5 "a retired secret key version, never stored" -- \
  as alice decrypt --via group-secret --store "$work/fresh-store" --in "$work/kek-msg.der"
grep -q "the server does not hand it out (a version retired with groupsrv secret retire" "$work/gm.err" ||
  fail "the retired version's refusal: $(cat "$work/gm.err")"
echo "groupmail-e2e: all passed"
