# server-lib.sh: shared set-up for the groupsrv server integration tests.
# Sourced by server-*.sh with BIN (build/bin) and SRC (source dir) set.
# Makes a throw-away SoftHSM token, a local CA, group "eng" with members,
# a server certificate from a file-based test CA, and starts `groupsrv serve`
# on free loopback ports. Everything lives under $work and is removed by
# the EXIT trap (the server is stopped first).
# GS_TOKEN=NAME (tests/tokens/NAME.sh, loaded and entered by the caller):
# that token instead of the SoftHSM one; its keys made beforehand
# (TOK_CA_KEY, TOK_GROUP_KEY) are adopted with --use-key.

work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/server.XXXXXX")
srv_pid=
bg_pids= # background helpers of a test (load loops): killed first
cleanup() {
  local p
  for p in $bg_pids; do kill "$p" 2>/dev/null || true; done
  if [ -n "$srv_pid" ] && kill -0 "$srv_pid" 2>/dev/null; then
    kill -TERM "$srv_pid" 2>/dev/null || true
    wait "$srv_pid" 2>/dev/null || true
  fi
  if [ -n "${GS_TOKEN:-}" ]; then tok_stop "$work" || true; fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; [ -f "$work/server.log" ] && tail -n 30 "$work/server.log" >&2; exit 1; }
ok() { echo "ok: $*"; }

. "$SRC/tests/lib/ports.sh"
. "$SRC/tests/lib/has-line.sh"
# a port nobody listens on (for "server unreachable"); a server's: take_port
free_port() { local p; take_port p && echo "$p"; }

if [ -n "${GS_TOKEN:-}" ]; then
  tok_start "$work"
  module=$TOK_MODULE
  token_uri=$TOK_URI
  pin_file=$TOK_PIN_FILE
else
  "$SRC/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
  export SOFTHSM2_CONF=$work/token/softhsm2.conf
  module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
  token_uri=pkcs11:token=groupsrv
  pin_file=$work/token/user-pin
  # SRV_MODULE: the module the server and the admin commands load (e.g. the
  # fault-injecting tests/p11fault in front of SoftHSM); default SoftHSM.
  if [ -n "${SRV_MODULE:-}" ]; then export GS_P11FAULT_TARGET=$module; module=$SRV_MODULE; fi
fi
take_port port cport
certs=$work/certs
mkdir -p "$certs"

# File-based test CA: the server certificate, plus client certificates
# that the local CA on the token cannot make (expired ones).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=test server CA" \
  -keyout "$certs/tca.key" -out "$certs/tca.pem" 2>/dev/null
mkserver() { # mkserver NAME: server cert for 127.0.0.1 signed by the test CA
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$certs/$1.key" -out "$certs/$1.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$certs/$1.ext"
  openssl x509 -req -in "$certs/$1.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial \
    -days 2 -extfile "$certs/$1.ext" -out "$certs/$1.pem" 2>/dev/null
}
mkserver server

conf=$work/groupsrv.conf
cat > "$conf" <<CONF
[server]
listen = 127.0.0.1:$port
threads = ${SRV_THREADS:-4}
max_body = 65536
unwrap_batch_max = 10
rate_limit = ${SRV_RATE:-0}
timeout = 10
metrics = ${SRV_METRICS:-admin}
log_level = ${SRV_LOG_LEVEL:-info}
${SRV_ACCESS_LOG:+access_log = $SRV_ACCESS_LOG}
[tls]
cert = $certs/server.pem
key = $certs/server.key
client_ca = $certs/clients.pem
[hsm]
module = $module
token = $token_uri
pin_source = $pin_file
${SRV_WORKERS:+workers = $SRV_WORKERS}
[db]
path = $work/groupsrv.db
[audit]
path = $work/audit.jsonl
[certsrv]
listen = 127.0.0.1:$cport
lifetime = 3600
CONF

gs() { "$BIN/groupsrv" -c "$conf" "$@"; }
if [ -n "${TOK_CA_KEY:-}" ]; then
  gs ca init --use-key "$TOK_CA_KEY" > "$work/ca-init.out"
else
  gs ca init --key rsa:2048 > "$work/ca-init.out"
fi
if [ -n "${TOK_GROUP_KEY:-}" ]; then
  gs group create eng --address eng@example.org --use-key "$TOK_GROUP_KEY" \
    --methods tls,recipient-key,group-secret,membership-cert > "$work/group-create.out"
else
  gs group create eng --address eng@example.org --key rsa:2048 \
    --methods tls,recipient-key,group-secret,membership-cert > "$work/group-create.out"
fi
gs group show eng --cert > "$certs/group.pem"
for m in ${SRV_MEMBERS:-alice bob dave erin fuzz mallory rl}; do
  gs member add eng "$m@example.org" --issue-cert --out "$certs" >/dev/null
done
gs member add eng dle@example.org --issue-cert --out "$certs" --role exploder >/dev/null
gs member add eng admin@example.org --issue-cert --out "$certs" --role admin >/dev/null
# carol: a valid certificate from the local CA, but no longer a member.
gs member add eng carol@example.org --issue-cert --out "$certs" >/dev/null
gs member remove eng carol@example.org >/dev/null
gs ca show > "$certs/localca.pem"
# Client CAs: the local CA and the file test CA (for the expired certificate).
cat "$certs/localca.pem" "$certs/tca.pem" > "$certs/clients.pem"

# curl as a given member: c NAME ARGS...; anon: no client certificate.
c() {
  local who=$1; shift
  curl -sS --cacert "$certs/tca.pem" --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key" "$@"
}
anon() { curl -sS --cacert "$certs/tca.pem" "$@"; }
base=https://127.0.0.1:$port
cbase=https://127.0.0.1:$cport

# SRV_LAUNCH (optional): a command prefix that execs its argument, such as
# "prlimit --nofile=100:100 --", so that serve starts under its limits.
start_server() {
  local attempt i
  for attempt in 1 2 3; do
    local mark
    mark=0
    [ -f "$work/server.log" ] && mark=$(wc -c < "$work/server.log")
    ${SRV_LAUNCH:-} "$BIN/groupsrv" -c "$conf" serve >>"$work/server.log" 2>&1 &
    srv_pid=$!
    for i in $(seq 1 100); do
      if anon -o /dev/null "$base/healthz" 2>/dev/null; then return 0; fi
      kill -0 "$srv_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$srv_pid" 2>/dev/null && fail "server did not become healthy"
    wait "$srv_pid" 2>/dev/null || true
    # The ports were free when take_port chose them, seconds ago; another
    # test's connection may have taken one since (ephemeral ports come from
    # the same range). Choose again and retry; any other failure is real.
    tail -c +"$((mark + 1))" "$work/server.log" | has_line "Address already in use" ||
      fail "server exited at start: $(tail -n 5 "$work/server.log")"
    local oport=$port ocport=$cport
    take_port port cport
    sed -i -e "s/^listen = 127.0.0.1:$oport\$/listen = 127.0.0.1:$port/" \
      -e "s/^listen = 127.0.0.1:$ocport\$/listen = 127.0.0.1:$cport/" "$conf"
    base=${base%:*}:$port # the host part as the test set it (a name, in some)
    cbase=${cbase%:*}:$cport
    echo "note: a listening port was taken meanwhile; retrying on $port and $cport" >&2
  done
  fail "server exited at start: $(tail -n 5 "$work/server.log")"
}

# status METHOD-ARGS...: prints the HTTP status only (body to $work/body)
status() { "$@" -o "$work/body" -w '%{http_code}' || true; }
expect_status() { # expect_status WANT CODE-OR-EMPTY DESC -- command...
  local want=$1 code=$2 desc=$3; shift 4
  local got
  got=$(status "$@")
  [ "$got" = "$want" ] || fail "$desc: HTTP $got, wanted $want: $(head -c 300 "$work/body")"
  if [ -n "$code" ]; then
    grep -q "\"code\":\"$code\"" "$work/body" || fail "$desc: wanted error code $code: $(head -c 300 "$work/body")"
  fi
  ok "$desc ($want${code:+ $code})"
}

# stop_server: SIGTERM, and the exit status must be 0 (a sanitizer build
# exits non-zero on a leak or an error, reported in the server log).
stop_server() {
  kill -TERM "$srv_pid"
  wait "$srv_pid" || { srv_pid=; fail "the server exited non-zero at SIGTERM"; }
  srv_pid=
}

# wait_healthz [TENTHS]: until /healthz answers 200 (default 5 s); fails
# (non-zero, its last answer in $work/body) if it never did.
wait_healthz() {
  local i
  for i in $(seq 1 "${1:-50}"); do
    [ "$(status anon "$base/healthz")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# expect_healthz WANT CODE-OR-EMPTY DESC: /healthz answers WANT within 3 s,
# then as expect_status. One token and audit check serves every probe of
# the process for a second (docs/api.md), so a change shows within that.
expect_healthz() {
  local i
  for i in $(seq 1 30); do
    [ "$(status anon "$base/healthz")" = "$1" ] && break
    sleep 0.1
  done
  expect_status "$1" "$2" "$3" -- anon "$base/healthz"
}

# srv_net_pid: the network process of the running serve (groupsrv-net, a
# child of $srv_pid): the one that holds the connections and their memory.
srv_net_pid() { ps --ppid "$srv_pid" -o pid=,comm= | awk '$2 == "groupsrv-net" {print $1; exit}'; }

# logged_after MARK GREP-ARGS...: server.log has a match past its byte MARK
# (has_line: not `tail | grep -q`, whose early exit under pipefail can end
# tail with SIGPIPE, status 141, the line there).
logged_after() {
  local m=$1
  shift
  tail -c +"$((m + 1))" "$work/server.log" | has_line "$@"
}
# await SECONDS CMD...: whether CMD succeeds within SECONDS (tried every
# 0.1 s); wait_until SECONDS DESC CMD...: the same, or the test fails
# saying DESC.
await() {
  local n=$(($1 * 10))
  shift
  for _ in $(seq 1 "$n"); do "$@" && return 0; sleep 0.1; done
  return 1
}
wait_until() {
  local s=$1 desc=$2
  shift 2
  await "$s" "$@" || fail "$desc"
}
# served_serial: the serial number of the TLS certificate the server
# presents on $port; served_other_than SERIAL: one is served, not SERIAL.
served_serial() { openssl s_client -connect "127.0.0.1:$port" </dev/null 2>/dev/null | openssl x509 -noout -serial; }
served_other_than() { local now; now=$(served_serial); [ -n "$now" ] && [ "$now" != "$1" ]; }

b64() { base64 -w0 "$1"; }
# token_labels [MODULE]: the label of every object on the test token, one a
# line, sorted; MODULE defaults to $module (the one the server loads). The
# PIN goes through the environment, not on pkcs11-tool's command line.
token_labels() {
  GS_PIN=$(cat "$pin_file") pkcs11-tool --module "${1:-$module}" --login --pin env:GS_PIN -O 2>/dev/null |
    sed -n 's/^ *label: *//p' | sort
}
json_get() { /usr/bin/python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); 
for k in sys.argv[2:]: v=v[int(k)] if isinstance(v,list) else v[k]
print(v)' "$@"; }
b64d() { /usr/bin/python3 -c 'import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.argv[1]))' "$1"; }
cms() { /usr/bin/python3 "$SRC/tests/integration/server-cms.py" "$@"; }

# A message to the group, made by a stock tool.
printf 'Subject: test\n\nhello group, this is the secret body\n' > "$work/msg.txt"
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg.der" \
  -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
cms ri "$work/msg.der" "$work/ri.der"

# check_cek HEXKEY: the content key decrypts the message
check_cek() {
  local iv
  iv=$(cms content "$work/msg.der" "$work/ct.bin")
  openssl enc -d -aes-256-cbc -K "$1" -iv "$iv" -in "$work/ct.bin" -out "$work/dec.txt" 2>/dev/null ||
    fail "content key does not decrypt the message"
  cmp -s "$work/dec.txt" "$work/msg.txt" || fail "decrypted text differs"
}
# member_secret_key MEMBER DIR: the member's copy of the group's current
# secret key, unwrapped with the member's own key; sets sk and kekid (hex).
member_secret_key() {
  c "$1" "$base/v1/groups/eng/secret-keys" >"$2/sk.json"
  b64d "$(json_get "$2/sk.json" keys 0 wrapped_key)" >"$2/wsk.bin"
  openssl pkeyutl -decrypt -inkey "$certs/$1@example.org.key" -pkeyopt rsa_padding_mode:oaep \
    -in "$2/wsk.bin" -out "$2/sk.bin" || fail "$1 cannot unwrap the group secret key"
  sk=$(od -An -tx1 "$2/sk.bin" | tr -d ' \n')
  kekid=$(b64d "$(json_get "$2/sk.json" keys 0 kek_id)" | od -An -tx1 | tr -d ' \n')
}
# unwrap_as MEMBER DELIVER [URL]: POST the message's RecipientInfo to
# unwrap with that deliver, expecting 200; the answer is in $work/body.
unwrap_as() {
  printf '{"recipient_info":"%s","deliver":"%s"}' "$(b64 "$work/ri.der")" "$2" >"$work/req-$2.json"
  expect_status 200 "" "unwrap deliver=$2" -- c "$1" --data-binary @"$work/req-$2.json" \
    "${3:-$base/v1/groups/eng/unwrap}"
}
# check_ktri RI.der CERT KEY: a KTRI answer decrypts the message with openssl cms
check_ktri() {
  cms swap "$work/msg.der" "$1" "$work/swapped.der"
  openssl cms -decrypt -inform DER -in "$work/swapped.der" -recip "$2" -inkey "$3" -out "$work/dec.txt" 2>"$work/cms.err" ||
    fail "openssl cms cannot decrypt with the returned KTRI: $(cat "$work/cms.err")"
  cmp -s "$work/dec.txt" "$work/msg.txt" || fail "decrypted text differs"
}

# gm_home_init [INI LINES...]: a private HOME for groupmail whose config file
# names this server, group eng and the CAs; extra lines (an [hsm] section)
# are appended. Sets gm_home.
gm_home_init() {
  gm_home=$work/gmhome
  mkdir -p "$gm_home/.config/groupmail"
  export HOME=$gm_home XDG_CONFIG_HOME= XDG_DATA_HOME=
  unset GROUPMAIL_CONFIG GROUPMAIL_SERVER GROUPMAIL_GROUP GROUPMAIL_CERT GROUPMAIL_KEY GROUPMAIL_CACERT || true
  { printf '[server]\nurl = %s\ngroup = eng\ncacert = %s\ngroup_ca = %s\ntimeout = 10\n' "$base" \
      "$certs/tca.pem" "$certs/localca.pem"
    local l
    for l in "$@"; do echo "$l"; done; } > "$gm_home/.config/groupmail/config"
}
