#!/usr/bin/env bash
# ops-cli.sh BIN SRC: what an operator's script sees from groupsrv before
# any token is involved, as groupsrv(1) documents it: every error exactly
# one line on stderr, usage errors ending in "(see groupsrv --help)" with
# exit 2, a configuration that cannot serve exit 5 (a line too long for
# inih, a directory), `audit verify` on a shared database that cannot be
# reached exit 1 with one line, `audit rotate` quiet on stderr as cron
# wants it, serve naming why it cannot use its audit log (a link, a
# directory); and docs/scale-out.md's HAProxy configuration is the one
# the cluster runs.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/ports.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ops-cli.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# expect RC PATTERN DESC -- command...: exit status RC, nothing on stdout,
# exactly one line on stderr matching PATTERN (grep -E).
expect() {
  local want=$1 pat=$2 desc=$3 rc=0
  shift 4
  "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" = "$want" ] || fail "$desc: exit $rc, wanted $want: $(cat "$work/err")"
  [ ! -s "$work/out" ] || fail "$desc: wrote to stdout: $(cat "$work/out")"
  [ "$(wc -l < "$work/err")" = 1 ] || fail "$desc: not one line on stderr: $(cat "$work/err")"
  grep -Eq -- "$pat" "$work/err" || fail "$desc: stderr lacks /$pat/: $(cat "$work/err")"
  ok "$desc (exit $want): $(cat "$work/err")"
}

conf=$work/groupsrv.conf
cat > "$conf" <<CONF
[hsm]
module = /usr/lib/softhsm/libsofthsm2.so
pin_source = $work/pin
[db]
path = $work/groupsrv.db
[audit]
path = $work/audit.jsonl
CONF
gs() { "$BIN/groupsrv" -c "$conf" "$@"; }
usage='\(see groupsrv --help\)$'
line='^groupsrv: '

# ---- usage errors of audit and serve, as of every other command ----
expect 2 "$line.*$usage" "audit without a subcommand" -- gs audit
expect 2 "$line.*$usage" "audit with an unknown subcommand" -- gs audit vrfy
expect 2 "$line.*unknown option --bogus.*$usage" "audit verify with an unknown option" -- gs audit verify --bogus
expect 2 "--file needs a value.*$usage" "audit verify --file without a value" -- gs audit verify --file
expect 2 "unknown option --no-follow.*$usage" "audit rotate --no-follow (verify's option)" -- gs audit rotate --no-follow
expect 2 "$line.*$usage" "serve with an argument" -- gs serve now

# ---- serve without its TLS files: the configuration cannot serve ----
expect 5 'level=error .*msg="not started: \[tls\] cert and key are required" config=".*groupsrv\.conf"$' "serve without [tls]" -- gs serve

# ---- a configuration line longer than inih's buffer ----
long=$(printf '/var/lib/groupsrv/%0200d' 0)
sed "s|^path = $work/groupsrv.db|path = $long|" "$conf" > "$work/long.conf"
expect 5 "long\.conf:5: line longer than 199 characters" "a 207-character line" -- \
  "$BIN/groupsrv" -c "$work/long.conf" group list
expect 5 "cannot open config file: Is a directory" "a directory as the configuration" -- \
  "$BIN/groupsrv" -c "$work" group list

# ---- check: [server] listen and [certsrv] listen on one port ----
# serve binds both at start and stops on the second (Address already in
# use); check said nothing. The rows come before the token's: none here.
listen_row() { # SERVER CERTSRV: check's listen row for the two addresses
  { cat "$conf"; printf '[server]\nlisten = %s\n[certsrv]\nlisten = %s\n' "$1" "$2"; } > "$work/listen.conf"
  "$BIN/groupsrv" -c "$work/listen.conf" check 2>&1 | grep '^listen ' || true
}
dual=("[::]:8443 127.0.0.1:8443") # [::] spans IPv4 too, unless net.ipv6.bindv6only = 1
[ "$(cat /proc/sys/net/ipv6/bindv6only 2>/dev/null || echo 0)" != 1 ] || dual=()
# fe80::1 on interface 1 twice is one address; on interfaces 1 and 2 (by
# number: none need exist for check) two, which both bind
for pair in "127.0.0.1:8443 127.0.0.1:8443" "0.0.0.0:8443 127.0.0.1:8443" "${dual[@]}" "[fe80::1%1]:8443 [fe80::1%1]:8443"; do
  row=$(listen_row $pair)
  grep -Eq '^listen +PROBLEM: \[certsrv\] listen .* and \[server\] listen .* are on one port: serve cannot bind both' <<<"$row" ||
    fail "check, [server] and [certsrv] listen $pair: $row"
done
for pair in "127.0.0.1:8443 127.0.0.1:8444" "[::1]:8443 127.0.0.1:8443" "[fe80::1%1]:8443 [fe80::1%2]:8443"; do
  row=$(listen_row $pair)
  grep -Eq '^listen +OK +\[server\] .*, \[certsrv\] ' <<<"$row" || fail "check, [server] and [certsrv] listen $pair: $row"
done
ok "check: [server] and [certsrv] listen on one port (or a wildcard covering the other) is a problem; $(listen_row 127.0.0.1:8443 0.0.0.0:8443)"
# a port below 1024 for a user without CAP_NET_BIND_SERVICE (the unit's
# groupsrv has none): serve stops 'cannot listen ... Permission denied',
# check said OK. Run as nobody when root (a copy of the program and the
# configuration where nobody reaches them), else as this user.
low=$(mktemp -d /tmp/gs-lowport.XXXXXX)
trap 'rm -rf "$work" "$low"' EXIT
chmod 755 "$low"
cp "$BIN/groupsrv" "$low/"
listen_row 127.0.0.1:443 127.0.0.1:8444 > /dev/null
install -m 0644 "$work/listen.conf" "$low/listen.conf"
as_user=()
[ "$(id -u)" != 0 ] || as_user=(runuser -u nobody --)
"${as_user[@]}" "$low/groupsrv" -c "$low/listen.conf" check > "$work/out" 2>&1 || true
start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)
if [ "$start" -gt 443 ]; then
  grep -Eq "^listen +WARNING: \[server\] listen 127\.0\.0\.1:443: port 443 is below $start \(net\.ipv4\.ip_unprivileged_port_start\): binding it takes CAP_NET_BIND_SERVICE" "$work/out" ||
    fail "check, [server] listen on port 443 without CAP_NET_BIND_SERVICE: $(grep '^listen' "$work/out")"
  ! grep -q '^listen .*WARNING: \[certsrv\]' "$work/out" || fail "check warns about [certsrv] port 8444: $(grep '^listen' "$work/out")"
  ok "check: a port below $start without CAP_NET_BIND_SERVICE is a warning: $(grep '^listen .*WARNING' "$work/out")"
fi
rm -rf "$low"

# ---- check: [server] user ----
# serve started as root runs its network process as [server] user: one
# that does not exist or is root stops serve at start, and one that can
# read the token store, a PIN file or the [tls] key leaves those to a
# network process that got round its seccomp filter. check had no row for
# it. As root: files in a directory anyone may enter (nobody reaches them
# but for their modes); as another user the setting is not taken.
usr=$(mktemp -d /tmp/gs-user.XXXXXX)
trap 'rm -rf "$work" "$usr"' EXIT
chmod 755 "$usr"
mkdir -p -m 0755 "$usr/tokens/tok"
install -m 0644 /dev/null "$usr/tokens/tok/key.object"
install -m 0644 /dev/null "$usr/pin"
install -m 0600 /dev/null "$usr/tls.key"
printf 'directories.tokendir = %s/tokens\n' "$usr" > "$usr/softhsm2.conf"
user_rows() { # USER [MODULE]: check's user rows with [server] user = USER
  sed -e "s|^pin_source = .*|pin_source = $usr/pin|" -e "${2:+s|^module = .*|module = $2|}" "$conf" > "$usr/u.conf"
  printf '[server]\nuser = %s\n[tls]\ncert = %s/tls.pem\nkey = %s/tls.key\n' "$1" "$usr" "$usr" >> "$usr/u.conf"
  SOFTHSM2_CONF=$usr/softhsm2.conf "$BIN/groupsrv" -c "$usr/u.conf" check 2>&1 | grep '^user ' || true
}
if [ "$(id -u)" = 0 ]; then
  rows=$(user_rows nobody)
  grep -q "^user      PROBLEM: \[server\] user nobody (uid [0-9]*) can read the user PIN source $usr/pin: " <<<"$rows" &&
    grep -q "^user      PROBLEM: \[server\] user nobody (uid [0-9]*) can read 1 of the token store's 1 files, such as $usr/tokens/tok/key.object: " <<<"$rows" &&
    ! grep -q "tls.key" <<<"$rows" || fail "check, [server] user that can read the PIN file and the token store: $rows"
  ok "check: [server] user that can read the PIN file and the token's files is a problem: $rows"
  chmod 0600 "$usr/pin" "$usr/tokens/tok/key.object"
  rows=$(user_rows nobody)
  grep -q "^user      OK   \[server\] user nobody (uid [0-9]*, gid [0-9]*): serve's network process runs as it and needs no file; it can read none of the 3 files checked" <<<"$rows" ||
    fail "check, [server] user that can read none of them: $rows"
  # ...nor when it owns them (the service user that owns the token)
  chown nobody "$usr/tls.key"
  rows=$(user_rows nobody)
  grep -q "^user      PROBLEM: \[server\] user nobody (uid [0-9]*) can read the \[tls\] key $usr/tls.key: " <<<"$rows" ||
    fail "check, [server] user that owns the [tls] key: $rows"
  rows=$(user_rows root)
  grep -q "^user      PROBLEM: \[server\] user root is root (uid 0): serve does not start" <<<"$rows" || fail "check, [server] user root: $rows"
  rows=$(user_rows gs-no-such-user)
  grep -q "^user      PROBLEM: \[server\] user gs-no-such-user: .*: serve does not start" <<<"$rows" ||
    fail "check, [server] user that does not exist: $rows"
  ok "check: [server] user root or missing is a problem, one that reads none of the secrets OK"
  # SoftHSM's store is the token's only when [hsm] module is SoftHSM: with
  # another module (opencryptoki here) a SoftHSM store beside it (softhsm2
  # installed) is another program's, not a problem of this configuration
  chown root "$usr/tls.key"
  chmod 0644 "$usr/tokens/tok/key.object"
  rows=$(user_rows nobody /usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0)
  grep -q "^user      OK   \[server\] user nobody (uid [0-9]*, gid [0-9]*): serve's network process runs as it and needs no file; it can read none of the 2 files checked (not the token's store" <<<"$rows" ||
    fail "check with another module names SoftHSM's store: $rows"
  rows=$(user_rows nobody softhsm2)
  grep -q "^user      PROBLEM: \[server\] user nobody (uid [0-9]*) can read 1 of the token store's 1 files" <<<"$rows" ||
    fail "check with the module given by its p11-kit name does not check SoftHSM's store: $rows"
  # a link of another name to SoftHSM's file loads SoftHSM: its store is
  # the token's; a link named libsofthsm2.so to another module's is not
  ln -s /usr/lib/softhsm/libsofthsm2.so "$usr/token-module.so"
  rows=$(user_rows nobody "$usr/token-module.so")
  grep -q "^user      PROBLEM: \[server\] user nobody (uid [0-9]*) can read 1 of the token store's 1 files" <<<"$rows" ||
    fail "check with [hsm] module a link to SoftHSM does not check SoftHSM's store: $rows"
  mkdir "$usr/other" && ln -s /usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0 "$usr/other/libsofthsm2.so"
  rows=$(user_rows nobody "$usr/other/libsofthsm2.so")
  grep -q "^user      OK   .*(not the token's store" <<<"$rows" ||
    fail "check with [hsm] module a link named libsofthsm2.so to opencryptoki names SoftHSM's store: $rows"
  # a p11-kit module name of the admin's own (token.module, module:
  # SoftHSM's file) loads SoftHSM: judged by the file p11-kit gives, not
  # the name; softhsm2.module naming another module's file is not
  # SoftHSM. p11-kit's module files (root reads the system ones only) in
  # a mount namespace of this test's own
  p11mods=$(pkg-config --variable=p11_module_configs p11-kit-1 2>/dev/null || echo /usr/share/p11-kit/modules)
  if [ -d "$p11mods" ] && unshare --mount --propagation private true 2>/dev/null; then
    mkdir "$usr/p11mods"
    printf 'module: /usr/lib/softhsm/libsofthsm2.so\n' > "$usr/p11mods/token.module"
    ns_rows() { # MODULE: user_rows nobody MODULE, with $usr/p11mods as p11-kit's module files
      user_rows nobody "$1" >/dev/null
      SOFTHSM2_CONF=$usr/softhsm2.conf unshare --mount --propagation private sh -c \
        'mount --bind "$1" "$2" && exec "$3" -c "$4" check' sh "$usr/p11mods" "$p11mods" "$BIN/groupsrv" "$usr/u.conf" \
        2>&1 | grep '^user ' || true
    }
    rows=$(ns_rows token)
    grep -q "^user      PROBLEM: \[server\] user nobody (uid [0-9]*) can read 1 of the token store's 1 files" <<<"$rows" ||
      fail "check with [hsm] module a p11-kit name of SoftHSM's module file does not check SoftHSM's store: $rows"
    rm "$usr/p11mods/token.module"
    printf 'module: /usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0\n' > "$usr/p11mods/softhsm2.module"
    rows=$(ns_rows softhsm2)
    grep -q "^user      OK   .*(not the token's store" <<<"$rows" ||
      fail "check with [hsm] module softhsm2, p11-kit's name for opencryptoki, names SoftHSM's store: $rows"
  else
    echo "# skipped: p11-kit names of the admin's own (no mount namespace here, or no $p11mods)"
  fi
  chmod 0600 "$usr/tokens/tok/key.object"
  ok "check: SoftHSM's token store is checked for [hsm] module SoftHSM only (by file or p11-kit name)"
  user_rows gs-no-such-user >/dev/null # u.conf for the run below
  # run as another user (a copy of the program where nobody reaches it):
  # the setting is not taken, so only a warning for a user that is missing
  cp "$BIN/groupsrv" "$usr/"
  chmod 0644 "$usr/u.conf"
  rows=$(runuser -u nobody -- "$usr/groupsrv" -c "$usr/u.conf" check 2>&1 | grep '^user ' || true)
  grep -q "^user      WARNING: \[server\] user gs-no-such-user: .*: serve started as root would not start" <<<"$rows" ||
    fail "check as nobody, [server] user that does not exist: $rows"
  ok "check as another user: a [server] user that is missing is a warning: $rows"
else
  rows=$(user_rows gs-no-such-user)
  grep -q "^user      WARNING: \[server\] user gs-no-such-user: .*: serve started as root would not start" <<<"$rows" ||
    fail "check as another user, [server] user that does not exist: $rows"
  rows=$(user_rows nobody)
  grep -q "^user      OK   \[server\] user nobody (uid [0-9]*): taken only when serve starts as root" <<<"$rows" ||
    fail "check as another user, [server] user nobody: $rows"
  ok "check as another user: [server] user is taken only by serve started as root"
fi
rm -rf "$usr"

# ---- an audit log in a directory the service user cannot write ----
# (an admin's mkdir as root, then chown of the file alone): serve appends
# and check said OK, but the monthly `audit rotate` as that user failed
# with "audit log cannot be written" while the file's mode was right.
# check warns, and rotate names the directory. As nobody when root (the
# directory stays root's), else in a directory made read-only.
aud=$(mktemp -d /tmp/gs-auditdir.XXXXXX)
trap '{ [ ! -d "$aud" ] || chmod -R u+w "$aud"; }; rm -rf "$work" "$aud"' EXIT
chmod 755 "$aud"
cp "$BIN/groupsrv" "$aud/"
mkdir -m 0755 "$aud/log"
install -m 0600 /dev/null "$aud/log/audit.jsonl"
sed "s|^path = $work/audit.jsonl|path = $aud/log/audit.jsonl|" "$conf" > "$aud/g.conf"
chmod 0644 "$aud/g.conf"
as_user=()
if [ "$(id -u)" = 0 ]; then
  as_user=(runuser -u nobody --)
  chown nobody "$aud/log/audit.jsonl"
else
  chmod 0555 "$aud/log"
fi
uid=$("${as_user[@]}" id -u)
"${as_user[@]}" "$aud/groupsrv" -c "$aud/g.conf" check > "$work/out" 2>&1 || true
grep -q "^audit log OK   $aud/log/audit.jsonl\$" "$work/out" &&
  grep -q "^audit log WARNING: its directory $aud/log cannot be written by this user (uid $uid): Permission denied: \`audit rotate\` run as this user cannot archive the log" "$work/out" ||
  fail "check, audit log in a directory its user cannot write: $(grep '^audit' "$work/out")"
ok "check: an audit log whose directory its user cannot write is a warning: $(grep '^audit log WARNING' "$work/out")"
rc=0; "${as_user[@]}" "$aud/groupsrv" -c "$aud/g.conf" audit rotate > "$work/out" 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "^groupsrv: audit rotate: $aud/log/audit.jsonl: its directory cannot be written by this user (uid $uid): Permission denied (rotating makes the next file and the archive's name there" "$work/err" ||
  fail "audit rotate in a directory its user cannot write: exit $rc: $(cat "$work/err")"
ok "audit rotate names the directory it cannot write (exit 1): $(grep '^groupsrv:' "$work/err")"
chmod u+w "$aud/log"
rm -rf "$aud"

# ---- [tls] client_ca that can verify no client ----
# check said OK for any file with a certificate in it; serve then refused
# every client certificate: a leaf (CA:FALSE) given as the CA, an expired
# CA, a CRL past its nextUpdate (the monthly CRL not refreshed), a CA
# without a CRL of its own beside another CA's CRL (SECURITY.md).
cca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/$1.key" \
  -out "$work/$1.pem" -days 30 -subj "/CN=$1" "${@:2}" 2>/dev/null || fail "openssl req $1"; }
cca ca1
cca ca2
# a CA's leaf (what belongs in client_ca is its CA), and a self-signed
# leaf, which a client presenting that very certificate verifies against
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/leaf.key" -subj /CN=leaf 2>/dev/null |
  openssl x509 -req -CA "$work/ca1.pem" -CAkey "$work/ca1.key" -days 30 -out "$work/leaf.pem" \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\n') 2>/dev/null || fail "openssl x509 -req leaf"
cca self -addext basicConstraints=critical,CA:FALSE
faketime -f -400d openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/old.key" \
  -out "$work/old.pem" -days 30 -subj /CN=old 2>/dev/null || fail "faketime openssl req"
/usr/bin/python3 "$SRC/tests/integration/time-cert.py" crl "$work/ca1.key" "$work/ca1.pem" "$work/crl-now" -60 3600
/usr/bin/python3 "$SRC/tests/integration/time-cert.py" crl "$work/ca1.key" "$work/ca1.pem" "$work/crl-old" -7200 -3600
{ cat "$conf"; printf '[tls]\nclient_ca = %s\n' "$work/cc.pem"; } > "$work/cc.conf"
# client_rows WANT-RC FILES...: check's client_ca lines for a client CA
# file made of FILES, and whether check exited WANT-RC
client_rows() {
  local want=$1 rc=0
  shift
  (cd "$work" && cat "$@") > "$work/cc.pem"
  "$BIN/groupsrv" -c "$work/cc.conf" check > "$work/out" 2>&1 || rc=$?
  grep '^client_ca' "$work/out" > "$work/rows" || true
  if [ "$want" = 1 ]; then [ "$rc" = 1 ] || fail "check exit $rc with client_ca $*: $(cat "$work/rows")"; fi
}
client_rows 1 leaf.pem
grep -q "^client_ca WARNING: $work/cc.pem: CN=leaf: not a CA certificate (no basicConstraints CA:TRUE" "$work/rows" &&
  grep -q "^client_ca PROBLEM: $work/cc.pem: no CA certificate in it can verify a client certificate now" "$work/rows" ||
  fail "check, a leaf as [tls] client_ca: $(cat "$work/rows")"
client_rows 0 self.pem
[ "$(cat "$work/rows")" = "client_ca OK   $work/cc.pem" ] || fail "check, a self-signed client certificate pinned in [tls] client_ca: $(cat "$work/rows")"
client_rows 1 old.pem
grep -q "^client_ca WARNING: $work/cc.pem: CN=old: expired on .*: no client certificate it issued verifies now\$" "$work/rows" &&
  grep -q "^client_ca PROBLEM: " "$work/rows" || fail "check, an expired CA as [tls] client_ca: $(cat "$work/rows")"
client_rows 1 ca1.pem crl-old.pem
grep -q "^client_ca WARNING: $work/cc.pem: CN=ca1: its CRL's nextUpdate .* has passed: the client certificates it issued are refused" "$work/rows" &&
  grep -q "^client_ca PROBLEM: " "$work/rows" || fail "check, a CRL past its nextUpdate: $(cat "$work/rows")"
# a stale CRL beside a current one of the same CA: the current one counts
client_rows 0 ca1.pem crl-old.pem crl-now.pem
[ "$(cat "$work/rows")" = "client_ca OK   $work/cc.pem" ] || fail "check, a current CRL beside a stale one: $(cat "$work/rows")"
# two CAs, a CRL of one: the other's clients are refused, the file still
# serves the first's (a warning, not counted)
client_rows 0 ca1.pem ca2.pem crl-now.pem
grep -q "^client_ca WARNING: $work/cc.pem: CN=ca2: no current CRL of its own in the file: with CRLs in it every CA needs one" "$work/rows" &&
  grep -q "^client_ca OK   $work/cc.pem\$" "$work/rows" && [ "$(wc -l < "$work/rows")" = 2 ] ||
  fail "check, a CA without a CRL beside another's CRL: $(cat "$work/rows")"
client_rows 0 ca1.pem ca2.pem
[ "$(cat "$work/rows")" = "client_ca OK   $work/cc.pem" ] || fail "check, two CAs without CRLs: $(cat "$work/rows")"
# A CA whose chain up to a self-signed root the file lacks or breaks:
# serve builds a client's chain from the file alone (no partial chain,
# every CA a client CA, with CRLs every link checked) and refused every
# client that CA issued, while check said OK: an intermediate CA without
# its root, beneath an expired root, beneath a root without a CRL when the
# file holds the intermediate's, one whose extendedKeyUsage leaves out
# clientAuth, one beneath a root's pathLenConstraint 0; and a CA whose
# keyUsage leaves out cRLSign, beside its CRL. Each case's premise is
# serve's verification as openssl verify makes it for a client of that
# CA (seen the same with serve and curl: 401 untrusted_certificate).
ica() { # ica NAME ISSUER [EXT]: a CA certificate NAME issued by ISSUER
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/$1.key" -subj "/CN=$1" 2>/dev/null |
    openssl x509 -req -CA "$work/$2.pem" -CAkey "$work/$2.key" -days 30 -out "$work/$1.pem" \
      -extfile <(printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n%b' "${3:-}") \
      2>/dev/null || fail "openssl x509 -req $1"
}
client() { # client CA: a client certificate CA issued, c-CA.pem
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/c-$1.key" -subj "/CN=c-$1" 2>/dev/null |
    openssl x509 -req -CA "$work/$1.pem" -CAkey "$work/$1.key" -days 30 -out "$work/c-$1.pem" \
      -extfile <(printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n') 2>/dev/null ||
    fail "openssl x509 -req c-$1"
}
# served CA CHAIN...: whether serve's verification takes a client of CA
# (sending CHAIN) against the client CA file client_rows made last
served() {
  local crl=()
  ! grep -q 'BEGIN X509 CRL' "$work/cc.pem" || crl=(-crl_check_all)
  (cd "$work" && cat "${@:2}") > "$work/sent.pem"
  openssl verify -CAfile "$work/cc.pem" "${crl[@]}" -purpose sslclient -untrusted "$work/sent.pem" "$work/c-$1.pem" >/dev/null 2>&1
}
ica int1 ca1
ica intold old
ica intsrv ca1 'extendedKeyUsage=serverAuth\n'
cca p0 -addext basicConstraints=critical,CA:TRUE,pathlen:0
ica int2 p0
cca nosign -addext keyUsage=critical,keyCertSign
for c in int1 intold intsrv int2 nosign; do client $c; done
/usr/bin/python3 "$SRC/tests/integration/time-cert.py" crl "$work/int1.key" "$work/int1.pem" "$work/crl-int1" -60 3600
/usr/bin/python3 "$SRC/tests/integration/time-cert.py" crl "$work/nosign.key" "$work/nosign.pem" "$work/crl-nosign" -60 3600
client_rows 0 ca1.pem int1.pem
served int1 int1.pem && [ "$(cat "$work/rows")" = "client_ca OK   $work/cc.pem" ] ||
  fail "check, an intermediate CA with its root: $(cat "$work/rows")"
client_rows 1 int1.pem
! served int1 int1.pem ca1.pem || fail "serve's verification takes a partial chain: the test's premise is wrong"
grep -q "^client_ca WARNING: $work/cc.pem: CN=int1: the certificate that issued CN=int1 is not in the file: serve takes no partial chain" "$work/rows" &&
  grep -q "^client_ca PROBLEM: " "$work/rows" || fail "check, an intermediate CA without its root: $(cat "$work/rows")"
client_rows 1 ca1.pem int1.pem crl-int1.pem
! served int1 int1.pem || fail "serve's verification takes a root without a CRL beside its intermediate's: the premise is wrong"
grep -q "^client_ca WARNING: $work/cc.pem: CN=int1: its chain in the file does not verify at CN=int1 (issued by CN=ca1): unable to get certificate CRL" "$work/rows" &&
  grep -q "^client_ca PROBLEM: " "$work/rows" || fail "check, an intermediate's CRL without its root's: $(cat "$work/rows")"
client_rows 1 old.pem intold.pem
! served intold intold.pem || fail "serve's verification takes a chain to an expired root: the premise is wrong"
grep -q "^client_ca WARNING: $work/cc.pem: CN=intold: its chain in the file does not verify at CN=old (issued by CN=old): certificate has expired" "$work/rows" &&
  grep -q "^client_ca PROBLEM: " "$work/rows" || fail "check, an intermediate beneath an expired root: $(cat "$work/rows")"
client_rows 0 ca1.pem intsrv.pem
! served intsrv intsrv.pem || fail "serve's verification takes a CA whose extendedKeyUsage is serverAuth: the premise is wrong"
grep -q "^client_ca WARNING: $work/cc.pem: CN=intsrv: it may not issue client certificates: its extendedKeyUsage" "$work/rows" &&
  grep -q "^client_ca OK   $work/cc.pem\$" "$work/rows" || fail "check, a CA with extendedKeyUsage serverAuth: $(cat "$work/rows")"
client_rows 0 p0.pem int2.pem
! served int2 int2.pem || fail "serve's verification takes a CA beneath pathlen:0: the premise is wrong"
grep -q "^client_ca WARNING: $work/cc.pem: CN=int2: it is beyond the pathLenConstraint 0 of CN=p0 above it" "$work/rows" &&
  grep -q "^client_ca OK   $work/cc.pem\$" "$work/rows" || fail "check, a CA beneath pathlen:0: $(cat "$work/rows")"
client_rows 1 nosign.pem crl-nosign.pem
! served nosign || fail "serve's verification takes a CRL of a CA without cRLSign: the premise is wrong"
grep -q "^client_ca WARNING: $work/cc.pem: CN=nosign: its keyUsage leaves out cRLSign, so its CRL is refused" "$work/rows" &&
  grep -q "^client_ca PROBLEM: " "$work/rows" || fail "check, a CA without cRLSign beside its CRL: $(cat "$work/rows")"
ok "check: a CA of [tls] client_ca whose chain in the file serve cannot verify (no root, an expired root, a root without a CRL, clientAuth left out, pathlen, no cRLSign) is a warning, and a problem when no CA is left"
# [tls] cert's chain: an intermediate left expired in it (serve sends it,
# and clients building through it refuse the server) is a warning; check
# looked at the first certificate only.
cat "$work/leaf.pem" "$work/old.pem" > "$work/chain.pem"
{ cat "$conf"; printf '[tls]\ncert = %s\nkey = %s\n' "$work/chain.pem" "$work/leaf.key"; } > "$work/chain.conf"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
grep -q "^tls cert  OK   $work/chain.pem\$" "$work/out" &&
  grep -q "^tls cert  WARNING: $work/chain.pem: chain certificate 2 (CN=old) expired on .*: serve sends it, and clients that build the chain through it refuse the server" "$work/out" ||
  fail "check, an expired certificate in the [tls] cert chain: $(grep '^tls' "$work/out")"
cat "$work/leaf.pem" "$work/ca1.pem" > "$work/chain.pem"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
[ "$(grep -c '^tls cert' "$work/out")" = 1 ] || fail "check, a valid [tls] cert chain: $(grep '^tls' "$work/out")"
# Its leaf as a TRUSTED CERTIFICATE block (openssl x509 -trustout, a
# trust store's export): serve reads the first block as one and starts;
# check read past it, took the intermediate for the leaf and said the key
# did not match (or, alone in the file, no certificate in it).
openssl x509 -in "$work/leaf.pem" -trustout -addtrust serverAuth -out "$work/trusted.pem" 2>/dev/null ||
  fail "openssl x509 -trustout"
cat "$work/trusted.pem" "$work/ca1.pem" > "$work/chain.pem"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
grep -q "^tls cert  OK   $work/chain.pem\$" "$work/out" && grep -q "^tls key   OK   $work/leaf.key\$" "$work/out" ||
  fail "check, a [tls] cert whose leaf is a TRUSTED CERTIFICATE: $(grep '^tls' "$work/out")"
# A [tls] key file every user of the host may read (0644, as cp or an
# editor under root's umask leaves it) is a warning; group read is the
# packages' layout (operations.md, "Files and owners": root:groupsrv 0640).
mode0=$(stat -c %a "$work/leaf.key")
chmod 0644 "$work/leaf.key"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
grep -q "^tls key   OK   $work/leaf.key\$" "$work/out" &&
  grep -q "^tls key   WARNING: $work/leaf.key: mode 0644: the server's TLS private key is open to every user of this host (chmod o-rwx $work/leaf.key; " "$work/out" ||
  fail "check, a [tls] key file others may read: $(grep '^tls' "$work/out")"
chmod 0640 "$work/leaf.key"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
[ "$(grep -c '^tls key' "$work/out")" = 1 ] || fail "check, a [tls] key file of mode 0640: $(grep '^tls' "$work/out")"
# the others' execute bit alone lets no one read the key: no warning
chmod 0641 "$work/leaf.key"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
[ "$(grep -c '^tls key' "$work/out")" = 1 ] || fail "check, a [tls] key file of mode 0641: $(grep '^tls' "$work/out")"
# others' write alone is a warning too (they may put their own key there)
chmod 0642 "$work/leaf.key"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
grep -q "^tls key   WARNING: $work/leaf.key: mode 0642: " "$work/out" ||
  fail "check, a [tls] key file others may write: $(grep '^tls' "$work/out")"
chmod "$mode0" "$work/leaf.key"
# A chain certificate as a TRUSTED CERTIFICATE block: serve read the chain
# with PEM_read_bio_X509, which skips such a block, so it sent the leaf
# alone (clients then miss the intermediate) while check said OK; serve
# sends it now, and check looks at it as at any chain certificate.
openssl x509 -in "$work/old.pem" -trustout -addtrust serverAuth -out "$work/old-trusted.pem" 2>/dev/null ||
  fail "openssl x509 -trustout"
cat "$work/leaf.pem" "$work/old-trusted.pem" > "$work/chain.pem"
"$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || true
grep -q "^tls cert  WARNING: $work/chain.pem: chain certificate 2 (CN=old) expired on " "$work/out" ||
  fail "check, an expired chain certificate as a TRUSTED CERTIFICATE block: $(grep '^tls' "$work/out")"
# A [tls] cert file serve does not start with, which check said OK to:
# a chain certificate that cannot be read (a line of its base64 lost in a
# paste: serve reads every one, "server certificate: bad base64 decode"),
# a key below the security level ("ee key too small"), an intermediate
# signed with SHA-1 ("ca md too weak"); check reads the file with serve's
# own function now. Another PEM block between them (the key) is skipped
# by both.
tls_row() { # tls_row DESC PATTERN: check's tls cert row for chain.pem
  local rc=0
  "$BIN/groupsrv" -c "$work/chain.conf" check > "$work/out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -Eq "^tls cert  PROBLEM: $work/chain.pem: $2: serve does not start\$" "$work/out" ||
    fail "check, $1: exit $rc: $(grep '^tls' "$work/out")"
}
{ cat "$work/leaf.pem" "$work/leaf.key" "$work/ca1.pem"; printf -- '-----BEGIN CERTIFICATE-----\nMIIB!broken\n-----END CERTIFICATE-----\n'; } > "$work/chain.pem"
tls_row "a broken certificate in the [tls] cert chain" "certificate 3 of the file cannot be read \(.*bad base64 decode\)"
openssl req -x509 -newkey rsa:512 -nodes -keyout "$work/weak.key" -out "$work/chain.pem" -days 3 -subj /CN=weak 2>/dev/null ||
  fail "openssl req rsa:512"
sed "s#^key = .*#key = $work/weak.key#" "$work/chain.conf" > "$work/weak.conf" && mv "$work/weak.conf" "$work/chain.conf"
tls_row "an RSA-512 [tls] cert" "certificate 1 of the file is refused \(.*ee key too small\)"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/sha1.key" -subj /CN=sha1 2>/dev/null |
  openssl x509 -req -sha1 -CA "$work/ca1.pem" -CAkey "$work/ca1.key" -days 3 -out "$work/sha1.pem" \
    -extfile <(printf 'basicConstraints=critical,CA:TRUE\n') 2>/dev/null || fail "openssl x509 -req -sha1"
openssl req -new -key "$work/leaf.key" -subj /CN=leaf 2>/dev/null |
  openssl x509 -req -CA "$work/sha1.pem" -CAkey "$work/sha1.key" -days 3 -out "$work/leaf2.pem" 2>/dev/null ||
  fail "openssl x509 -req leaf2"
cat "$work/leaf2.pem" "$work/sha1.pem" > "$work/chain.pem"
sed "s#^key = .*#key = $work/leaf.key#" "$work/chain.conf" > "$work/weak.conf" && mv "$work/weak.conf" "$work/chain.conf"
tls_row "a SHA-1 signed intermediate in the [tls] cert chain" "certificate 2 of the file is refused \(.*ca md too weak\)"
# A chain certificate whose PEM says it is encrypted: check asked for a
# pass phrase on the terminal (OpenSSL's default) and waited there; it is
# refused now, as serve refuses it. Run on a terminal (script(1)), with
# none to type.
{ cat "$work/leaf.pem"; sed '1a Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n' "$work/ca1.pem"; } > "$work/chain.pem"
rc=0; timeout 20 script -qec "'$BIN/groupsrv' -c '$work/chain.conf' check" /dev/null < /dev/null > "$work/out" 2>&1 || rc=$?
! grep -aq 'pass phrase' "$work/out" &&
  grep -aEq "^tls cert  PROBLEM: $work/chain.pem: certificate 2 of the file cannot be read \(.*bad password read\): serve does not start" "$work/out" ||
  fail "check, a chain certificate marked encrypted, on a terminal: exit $rc: $(grep -a '^tls\|pass' "$work/out")"
# Files larger than serve reads (1 MiB of [tls] cert, 16 MiB of client_ca:
# it does not start), which check read whole: sparse, nothing written.
cp "$work/leaf.pem" "$work/chain.pem" && truncate -s 2M "$work/chain.pem"
tls_row "a [tls] cert file of 2 MiB" "larger than the 1024 KiB serve reads"
cp "$work/ca1.pem" "$work/cc.pem" && truncate -s 17M "$work/cc.pem"
"$BIN/groupsrv" -c "$work/cc.conf" check > "$work/out" 2>&1 || true
grep -q "^client_ca PROBLEM: $work/cc.pem: larger than the 16 MiB serve reads: serve does not start\$" "$work/out" ||
  fail "check, a client CA file of 17 MiB: $(grep '^client_ca' "$work/out")"
ok "check: a client CA file that verifies no client (a leaf, an expired CA, a CRL past nextUpdate) is a problem; a CA in it that cannot is a warning; an expired certificate in the [tls] cert chain is a warning, one that cannot be read or that serve refuses a problem"

# ---- audit verify on a shared database that does not answer ----
cat > "$work/pg.conf" <<CONF
[hsm]
module = /usr/lib/softhsm/libsofthsm2.so
pin_source = $work/pin
[db]
url = postgresql:///groupsrv?host=$work/no-such-socket-dir
[audit]
store = db
CONF
# (one line, ending in libpq's own reason: its indented "Is the server
# running" hint line is left out, so a multi-host message keeps every
# host's reason)
expect 1 "^groupsrv: audit verify: cannot read the audit table: cannot connect to the database: .*no-such-socket-dir.* failed: No such file or directory\$" \
  "audit verify, database unreachable" -- "$BIN/groupsrv" -c "$work/pg.conf" audit verify
expect 2 "store = db has no file to rotate" "audit rotate with [audit] store = db" -- \
  "$BIN/groupsrv" -c "$work/pg.conf" audit rotate
expect 1 "^groupsrv: cannot connect to the database: .* failed: No such file or directory\$" \
  "group list, database unreachable" -- "$BIN/groupsrv" -c "$work/pg.conf" group list

# ---- audit rotate from cron: stdout its one line, stderr nothing ----
# ([server] log_level is serve's: an admin command logs only with -v, and
# cron mails whatever a job prints)
install -m 0600 /dev/null "$work/audit.jsonl"
gs audit rotate >"$work/out" 2>"$work/err" || fail "audit rotate of an empty log: $(cat "$work/err")"
[ ! -s "$work/err" ] || fail "audit rotate wrote to stderr without -v: $(cat "$work/err")"
grep -q '^sealed .* continues the chain$' "$work/out" || fail "audit rotate: $(cat "$work/out")"
# a torn tail (an interrupted write) is cut off, not an error (exit 0), but
# records were lost there: said on stderr, which cron mails
printf '{"time":"2026-12-05T00:00:00Z","act' >> "$work/audit.jsonl"
gs audit rotate >"$work/out" 2>"$work/err" || fail "audit rotate over a torn tail: $(cat "$work/err")"
grep -q '^sealed .* continues the chain$' "$work/out" || fail "audit rotate over a torn tail: $(cat "$work/out")"
[ "$(wc -l < "$work/err")" = 1 ] &&
  grep -q "^groupsrv: audit rotate: $work/audit.jsonl: cut off a torn tail of 35 bytes first (an incomplete last record: an interrupted write, not an edit)\$" "$work/err" ||
  fail "audit rotate over a torn tail does not say so: $(cat "$work/err")"
gs -v audit rotate >/dev/null 2>"$work/err" || fail "audit rotate -v: $(cat "$work/err")"
grep -q 'audit log sealed' "$work/err" || fail "audit rotate -v logged nothing: $(cat "$work/err")"
out=$(gs audit verify) || fail "audit verify after four rotations: $out"
ok "audit rotate prints one line on stdout and nothing on stderr without -v, one line more for a torn tail it cut off; $out"

# ---- a clock set back, seen against the audit log's latest record ----
# (libfaketime ahead of a sanitizer build's ASan runtime: its link-order
# check off, as in server-time.sh)
fk() { env ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 faketime -f "$1" "${@:2}"; }
gs check > "$work/out" 2>&1 || true
! grep -q '^clock' "$work/out" || fail "check with the clock right: $(grep '^clock' "$work/out")"
fk -30s "$BIN/groupsrv" -c "$conf" check > "$work/out" 2>&1 || true
! grep -q '^clock' "$work/out" || fail "check with the clock 30 s back (within the minute allowed): $(grep '^clock' "$work/out")"
fk -1h "$BIN/groupsrv" -c "$conf" check > "$work/out" 2>&1 || true
grep -Eq "^clock     WARNING: the system clock \([0-9T:-]+Z\) is [0-9]+ s behind the audit log's latest record \([0-9T:-]+Z\): it was set back" "$work/out" ||
  fail "check with the clock an hour back: $(grep -E '^(clock|audit)' "$work/out")"
ok "check: a clock an hour behind the audit log's latest record is a warning; 30 s is not"

# ---- docs/operations.md's crontab line for audit rotate, as cron runs it ----
# cron runs a line with /bin/sh and PATH=/usr/bin:/bin (crontab(5)), as
# the line's user (a /etc/cron.d line names it), so what the line calls
# must be found there: the root crontab line the document gave, runuser
# -u groupsrv -- ..., failed 'runuser: not found' (it is in /usr/sbin)
# every month, and the audit log was never archived. The build's
# groupsrv stands in for /usr/bin's, this test's user for the line's.
. "$SRC/tests/lib/docblocks.sh"
cronline=$(doc_block "$SRC/docs/operations.md" 'Logs and the audit log' 1 crontab | grep -v '^#')
[ "$(wc -l <<<"$cronline")" = 1 ] || fail "docs/operations.md's crontab block is not one line: $cronline"
read -r _ _ _ _ _ cronuser croncmd <<<"$cronline"
[ "$cronuser" = groupsrv ] || fail "docs/operations.md's crontab line does not run as groupsrv (a /etc/cron.d line): $cronline"
mkdir "$work/cronbin"
ln -s "$(cd "$BIN" && pwd)/groupsrv" "$work/cronbin/groupsrv"
rc=0
env -i PATH="$work/cronbin:/usr/bin:/bin" GROUPSRV_CONF="$conf" /bin/sh -c "$croncmd" >"$work/out" 2>"$work/err" || rc=$?
[ "$rc" = 0 ] && grep -q '^sealed .* continues the chain$' "$work/out" ||
  fail "docs/operations.md's crontab line under cron's PATH: exit $rc: $(cat "$work/out" "$work/err")"
ok "docs/operations.md's crontab line runs under cron's PATH: $cronline"

# ---- docs/postfix.md's queue runner line, as cron runs it ----
# It was inline text wrapped over two lines: copied from the installed
# postfix.md (raw Markdown) into /etc/cron.d, the break made a second,
# broken line. One /etc/cron.d line, run as cron does (/bin/sh, cron's
# PATH), on an empty spool with the log in a file as the example's: exit
# 0 and nothing printed (cron mails any output, every minute here).
cronline=$(doc_block "$SRC/docs/postfix.md" '6. The queue runner' 1 crontab | grep -v '^#')
[ "$(wc -l <<<"$cronline")" = 1 ] || fail "docs/postfix.md's crontab block is not one line: $cronline"
read -r _ _ _ _ _ cronuser croncmd <<<"$cronline"
[ "$cronuser" = exploder ] || fail "docs/postfix.md's crontab line does not run as exploder (a /etc/cron.d line): $cronline"
mkdir "$work/xspool"
printf '[spool]\npath = %s\n[delivery]\nrelay = smtp://127.0.0.1:9\n[tls]\ncert = %s/x.pem\nkey = %s/x.key\nca = %s/x-ca.pem\n[log]\nfile = %s/exploder.log\n' \
  "$work/xspool" "$work" "$work" "$work" "$work" > "$work/exploder.conf"
croncmd=${croncmd//\/usr\/bin\/exploder/$(cd "$BIN" && pwd)/exploder}
croncmd=${croncmd//\/etc\/groupsrv\/exploder.conf/$work/exploder.conf}
rc=0
env -i PATH=/usr/bin:/bin /bin/sh -c "$croncmd" >"$work/out" 2>"$work/err" || rc=$?
[ "$rc" = 0 ] && [ ! -s "$work/out" ] && [ ! -s "$work/err" ] ||
  fail "docs/postfix.md's crontab line under cron's PATH: exit $rc: $croncmd: $(cat "$work/out" "$work/err")"
ok "docs/postfix.md's crontab line runs quietly under cron's PATH: $cronline"

# ---- a path with a space in a log line stays one quoted field ----
mkdir "$work/audit dir"
sed "s|^path = $work/audit.jsonl\$|path = $work/audit dir/audit.jsonl|" "$conf" > "$work/space.conf"
install -m 0600 /dev/null "$work/audit dir/audit.jsonl"
printf '{"torn' >> "$work/audit dir/audit.jsonl"
"$BIN/groupsrv" -c "$work/space.conf" -v audit rotate >/dev/null 2>"$work/err" || fail "audit rotate -v: $(cat "$work/err")"
grep ' level=' "$work/err" > "$work/err.log" || true
grep -q "cut it off\" path=\"$work/audit dir/audit.jsonl\" bytes=6\$" "$work/err.log" &&
  grep -q "msg=\"audit log sealed\" path=\"$work/audit dir/audit.jsonl\" archive=\"$work/audit dir/audit.jsonl\.[0-9TZ-]*\"\$" "$work/err.log" ||
  fail "audit rotate -v with a space in the path: $(cat "$work/err")"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/err.log" || fail "a path with a space breaks the log line"
ok "a path with a space is one quoted field: $(tail -n 1 "$work/err.log")"

# ---- serve and an audit log it may not use: says why ----
# (the key holder opens the audit log before the token: no token needed)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -keyout "$work/server.key" -out "$work/server.pem" 2>/dev/null
take_port port
printf '[server]\nlisten = 127.0.0.1:%s\n[tls]\ncert = %s\nkey = %s\n' "$port" "$work/server.pem" "$work/server.key" >> "$conf"
rm -f "$work"/audit.jsonl*
touch "$work/elsewhere"
ln -s "$work/elsewhere" "$work/audit.jsonl"
rc=0
timeout 60 "$BIN/groupsrv" -c "$conf" serve >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 1 ] || fail "serve with a symbolic link as its audit log: exit $rc: $(cat "$work/err")"
grep -q "level=error .*msg=\"not started: the audit log cannot be opened\" path=\"$work/audit.jsonl\" .*detail=\"a symbolic link (refused" "$work/err" ||
  fail "serve with a symbolic link as its audit log does not say so: $(cat "$work/err")"
ok "serve refuses a symbolic link as its audit log and says so: $(head -n 1 "$work/err")"
rm "$work/audit.jsonl"
mkdir "$work/audit.jsonl"
rc=0
timeout 60 "$BIN/groupsrv" -c "$conf" serve >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "level=error .*msg=\"not started: the audit log cannot be opened\" path=\"$work/audit.jsonl\" .*detail=\"Is a directory\"$" "$work/err" ||
  fail "serve with a directory as its audit log: exit $rc: $(cat "$work/err")"
ok "serve with a directory as its audit log says so: $(head -n 1 "$work/err")"

# ---- serve with a token URI that is a configuration error (a slot
# attribute): exit 5 like every configuration error, which the unit's
# RestartPreventExitStatus does not restart ----
rmdir "$work/audit.jsonl"
# (an audit log its group may read: taken, with a warning, before the token)
install -m 0640 /dev/null "$work/audit.jsonl"
sed -i "s|^\[hsm\]\$|[hsm]\ntoken = pkcs11:token=groupsrv;slot-id=1|" "$conf"
grep -q "^token = pkcs11:token=groupsrv;slot-id=1" "$conf" || fail "could not set the token URI"
rc=0
timeout 60 "$BIN/groupsrv" -c "$conf" serve >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 5 ] && grep -q "level=error .*msg=\"not started: the token cannot be opened\" err=\".*attributes that do not name a token" "$work/err" ||
  fail "serve with a slot attribute in its token URI: exit $rc, wanted 5: $(cat "$work/err")"
ok "serve with a token URI that is a configuration error exits 5: $(grep 'level=error' "$work/err" | head -n 1)"
grep -q "level=warn .*msg=\"the audit log is open to its group or others (it names who unwrapped what): chmod 0600 unless that is meant\" path=\"$work/audit.jsonl\" mode=0640\$" "$work/err" ||
  fail "serve took an audit log of mode 0640 without a warning: $(cat "$work/err")"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/err" || fail "serve's lines are not key=value records"
gs check >"$work/out" 2>&1 || true
grep -q "^audit log OK   $work/audit.jsonl; mode 0640: its group or others can read who unwrapped what (chmod 0600 unless that is meant)\$" "$work/out" ||
  fail "check does not name the audit log's mode 0640: $(grep audit "$work/out")"
chmod 0600 "$work/audit.jsonl"
gs check >"$work/out" 2>&1 || true
grep -q "^audit log OK   $work/audit.jsonl\$" "$work/out" || fail "check with an audit log of mode 0600: $(grep audit "$work/out")"
ok "an audit log its group may read: serve warns, check says so (not a problem), none for 0600"

# ---- docs/scale-out.md's HAProxy configuration is the one the cluster runs ----
# (it says so: tests/lib/cluster.sh writes it for scripts/cluster and the
# cluster test; the site's names and addresses aside, they must not drift)
(
  CL_SRC=$SRC
  . "$SRC/tests/lib/cluster.sh"
  CL_WORK=/WORK CL_CERTS=/CERTS CL_NAME=(gs-a gs-b gs-c) CL_PORTS=(9001 9002 9003)
  cl_haproxy_cfg 8443 0 1 2
) > "$work/haproxy-tested.cfg"
sed -n '/^## HAProxy/,/^## /p' "$SRC/docs/scale-out.md" | sed -n '/^```haproxy$/,/^```$/p' | sed '1d;$d' |
  sed -e 's|/run/haproxy/groupsrv.sock|/WORK/haproxy.sock|' -e 's|/etc/groupsrv/server-ca.pem|/CERTS/tca.pem|' \
    -e 's|verifyhost gs.example.org|verifyhost localhost|' -e 's|10\.0\.0\.1\([1-3]\):8443|127.0.0.1:900\1|' \
    > "$work/haproxy-doc.cfg"
[ -s "$work/haproxy-doc.cfg" ] || fail "no haproxy block in docs/scale-out.md's HAProxy section"
diff -u "$work/haproxy-doc.cfg" "$work/haproxy-tested.cfg" > "$work/haproxy.diff" ||
  fail "docs/scale-out.md's HAProxy configuration differs from tests/lib/cluster.sh's: $(cat "$work/haproxy.diff")"
ok "docs/scale-out.md's HAProxy configuration is tests/lib/cluster.sh's"
