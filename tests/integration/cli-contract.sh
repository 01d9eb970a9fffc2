#!/usr/bin/env bash
# cli-contract.sh BIN SRC: the command-line contract of groupsrv(1),
# groupmail(1) and exploder(1) as a script sees it, no token or server
# needed: every usage error is one line naming what is wrong, with the
# documented exit status (groupsrv and groupmail 2, exploder 64; deliver's
# line starts with its DSN status 5.3.0, as the MTA puts it in the bounce),
# a typo in a command is a usage error whatever the configuration, both
# option forms (--x v and --x=v) work, and a bad configuration value is
# the documented error naming the file (groupmail 1) or the right line
# (groupsrv 5). Also scripts/provision-softhsm run twice on one DIR.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/ports.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/cli-contract.XXXXXX")
trap 'rm -rf "$work"' EXIT
nfail=0 # every check runs: a failure is counted, the script goes on
fail() { echo "FAIL: $*" >&2; nfail=$((nfail + 1)); }
ok() { echo "ok: $*"; }
export HOME=$work/home XDG_CONFIG_HOME= XDG_DATA_HOME=
unset GROUPSRV_CONF EXPLODER_CONF GROUPMAIL_CONFIG
mkdir -p "$HOME"

# expect RC PATTERN DESC -- command...: exit status RC, nothing on stdout,
# exactly one line on stderr matching PATTERN (grep -E).
expect() {
  local want=$1 pat=$2 desc=$3 rc=0
  shift 4
  "$@" >"$work/out" 2>"$work/err" </dev/null || rc=$?
  [ "$rc" = "$want" ] || { fail "$desc: exit $rc, wanted $want: $(cat "$work/err")"; return 0; }
  [ ! -s "$work/out" ] || { fail "$desc: wrote to stdout: $(cat "$work/out")"; return 0; }
  [ "$(wc -l < "$work/err")" = 1 ] || { fail "$desc: not one line on stderr: $(cat "$work/err")"; return 0; }
  grep -Eq -- "$pat" "$work/err" || { fail "$desc: stderr lacks /$pat/: $(cat "$work/err")"; return 0; }
  ok "$desc (exit $want): $(cat "$work/err")"
}

# ---- groupsrv ----
gconf=$work/groupsrv.conf
# [audit] path in the work directory: the default is the machine's
# /var/log/groupsrv/audit.jsonl, which a command run as root here (ca init
# --use-key reaches its record) made root's, 0600, and the installed
# package's service user then could not write (package_deb_system failed).
printf '[hsm]\nmodule = /usr/lib/softhsm/libsofthsm2.so\npin_source = %s/pin\n[db]\npath = %s/gs.db\n[audit]\npath = %s/audit.jsonl\n' \
  "$work" "$work" "$work" > "$gconf"
gs=$BIN/groupsrv
usage='\(see groupsrv --help\)$'
expect 2 "unknown subcommand lst .*$usage" "groupsrv group lst names the subcommand" -- "$gs" -c "$gconf" group lst
expect 2 "unknown subcommand bogus .*$usage" "groupsrv member bogus NAME names the subcommand" -- \
  "$gs" -c "$gconf" member bogus eng
# A group name's first character is named in the refusal, which said ". _ -" were allowed.
expect 1 "invalid group name \(1-64 of a-z 0-9 \. _ -, starting with a letter or digit\)" \
  "groupsrv group create .eng (a name starting with a dot)" -- \
  "$gs" -c "$gconf" group create .eng --address eng@lists.example.org
expect 2 "ca show: unexpected argument extra $usage" "groupsrv ca show with an argument" -- "$gs" -c "$gconf" ca show extra
expect 3 "database .* does not exist" "groupsrv --config=FILE (the --x=v form)" -- "$gs" --config="$gconf" group list
# tls init had a parser of its own, without the --x=v form
expect 2 "--key: the TLS key on the token must be EC .*$usage" "groupsrv tls init --dns=... --key=rsa:2048" -- \
  "$gs" -c "$gconf" tls init --dns=localhost --out="$work/tls.pem" --key=rsa:2048
expect 2 "tls: unknown subcommand bogus \(expected init\) $usage" "groupsrv tls bogus" -- "$gs" -c "$gconf" tls bogus
# ... and so they are with no configuration at all (a host just installed):
# the command line is checked before the file is read, not "cannot open
# config file" (5); a right command line still needs the file.
none=$work/no-such.conf
expect 2 "group: unknown subcommand lst .*$usage" "groupsrv group lst, no configuration" -- "$gs" -c "$none" group lst
expect 2 "member: expected add, set, remove or list $usage" "groupsrv member, no configuration" -- "$gs" -c "$none" member
expect 2 "ca: unknown subcommand frob .*$usage" "groupsrv ca frob, no configuration" -- "$gs" -c "$none" ca frob
expect 2 "secret: unknown subcommand rotat .*$usage" "groupsrv secret rotat, no configuration" -- "$gs" -c "$none" secret rotat eng
expect 2 "audit: unknown subcommand verfy .*$usage" "groupsrv audit verfy, no configuration" -- "$gs" -c "$none" audit verfy
expect 2 "token: unknown subcommand transport .*$usage" "groupsrv token transport, no configuration" -- "$gs" -c "$none" token transport
expect 2 "tls: unknown subcommand bogus \(expected init\) $usage" "groupsrv tls bogus, no configuration" -- "$gs" -c "$none" tls bogus
expect 2 "check takes no arguments $usage" "groupsrv check extra, no configuration" -- "$gs" -c "$none" check extra
expect 2 "serve takes no arguments \(got --bogus\) $usage" "groupsrv serve --bogus, no configuration" -- "$gs" -c "$none" serve --bogus
expect 5 "no-such\.conf: cannot open config file" "groupsrv group list, no configuration" -- "$gs" -c "$none" group list
expect 1 "no-such\.conf: cannot open config file" "groupsrv check, no configuration" -- "$gs" -c "$none" check
# Every form of groupsrv(1)'s SYNOPSIS passes that early check (the
# command and its subcommand, the rest is the command's to judge): the
# check keeps a list of its own, which must not refuse a subcommand the
# page documents (one added later to the page and the command only).
nforms=0
while read -r words; do
  nforms=$((nforms + 1))
  want=5; [ "$words" = check ] && want=1
  # shellcheck disable=SC2086 # the words are the command line
  expect $want "no-such\.conf: cannot open config file" "groupsrv $words (groupsrv(1) SYNOPSIS), no configuration" -- \
    "$gs" -c "$none" $words
done < <(sed -n '/^## SYNOPSIS$/,/^## /p' "$SRC/docs/groupsrv.1.md" |
  sed -n 's/^groupsrv \[-c FILE\]\( \[-v\]\)\? \([a-z]\+\)\( [a-z][a-z-]*\)\?\( .*\)\?$/\2\3/p' | sort -u)
[ "$nforms" -ge 20 ] || fail "groupsrv(1) SYNOPSIS: $nforms command forms read (a pattern is stale)"
# audit had a parser of its own too
install -m 0600 /dev/null "$work/audit.jsonl"
if out=$("$gs" -c "$gconf" audit verify --file="$work/audit.jsonl" 2>&1) && [[ $out == "ok: 0 lines, "* ]]; then
  ok "groupsrv audit verify --file=PATH: $out"
else
  fail "groupsrv audit verify --file=PATH: $out"
fi
expect 2 "audit verify: unexpected argument extra $usage" "groupsrv audit verify with an argument" -- \
  "$gs" -c "$gconf" audit verify --file "$work/audit.jsonl" extra
# a syntax error is reported on its own line, not with the next line's message
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[server\nthreads = 4\n' > "$work/syntax.conf"
expect 5 "syntax\.conf:4: syntax error" "groupsrv: a section line without ']'" -- "$gs" -c "$work/syntax.conf" group list
printf '[hsm]\nmodule = /x.so\npin_source = /p\nnot a setting\nthredas = 4\n' > "$work/syntax.conf"
expect 5 "syntax\.conf:4: syntax error" "groupsrv: a line that is not key = value" -- "$gs" -c "$work/syntax.conf" group list
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[server]\nthredas = 4\nnot a setting\n' > "$work/syntax.conf"
expect 5 "syntax\.conf:5: unknown key 'thredas' in \[server\]" "groupsrv: an unknown key before a syntax error" -- \
  "$gs" -c "$work/syntax.conf" group list
# "[Server] is an unknown section" (groupsrv(1)), also with no key under it
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[Server]\n; nothing here yet\n\n[db]\npath = /x.db\n' > "$work/section.conf"
expect 5 "section\.conf:4: unknown section \[Server\]$" "groupsrv: an unknown section with no key under it" -- \
  "$gs" -c "$work/section.conf" group list
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[Server]\n' > "$work/section.conf"
expect 5 "section\.conf:4: unknown section \[Server\]$" "groupsrv: an unknown section ending the file" -- \
  "$gs" -c "$work/section.conf" group list
# CRLF line ends and a UTF-8 byte order mark are read as plain lines
printf '\xef\xbb\xbf[hsm]\r\nmodule = /x.so ; inline comment\r\n# comment\r\npin_source = /p\r\n[db]\r\npath = %s/crlf.db\r\n' \
  "$work" > "$work/crlf.conf"
expect 3 "database $work/crlf\.db does not exist" "groupsrv: CRLF, BOM and comments" -- "$gs" -c "$work/crlf.conf" group list
# groupsrv(1): quotes are part of a value, an indented line continues the
# key above it, an empty value is an error
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[db]\npath = "%s/q.db"\n' "$work" > "$work/q.conf"
expect 3 "database \"$work/q\.db\" does not exist" "groupsrv: a quoted value keeps its quotes" -- "$gs" -c "$work/q.conf" group list
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[server]\nthreads = 4\n  max_body = 2000\n' > "$work/q.conf"
expect 5 "q\.conf:6: duplicate key 'threads'" "groupsrv: an indented line continues the key above" -- \
  "$gs" -c "$work/q.conf" group list
printf '[hsm]\nmodule = /x.so\npin_source = /p\n[db]\npath =\n' > "$work/q.conf"
expect 5 "q\.conf:5: empty value for 'path' in \[db\]" "groupsrv: an empty value" -- "$gs" -c "$work/q.conf" group list
# a PIN inside a key URI is refused and never shown (the database would
# record a --use-key URI; an error line, a journal would show it)
expect 1 "group create: the --use-key URI carries a PIN \(pin-value; not shown\)" "groupsrv group create --use-key ...pin-value" -- \
  "$gs" -c "$gconf" group create eng --address eng@lists.example.org --use-key 'pkcs11:object=k;type=private?pin-value=918273'
! grep -q 918273 "$work/err" || fail "groupsrv group create showed the PIN of a --use-key URI"
expect 1 "ca init: the --use-key URI carries a PIN" "groupsrv ca init --use-key ...PIN-VALUE" -- \
  "$gs" -c "$gconf" ca init --use-key 'pkcs11:object=k;PIN-VALUE=918273'
[ ! -e "$work/gs.db" ] || fail "groupsrv ca init refused a --use-key URI but created the database"
# a PIN source in a key URI (p11tool, OpenSSL's pkcs11 provider write
# ?pin-source=file:PATH) is refused, not ignored: the token is logged in
# once with [hsm] pin_source, and the database would record the path
expect 1 "^groupsrv: ca init: the --use-key URI names a PIN source \(pin-source\), which groupsrv does not read: .*\[hsm\] pin_source" \
  "groupsrv ca init --use-key ...?pin-source=file:" -- \
  "$gs" -c "$gconf" ca init --use-key "pkcs11:object=k;type=private?pin-source=file:$work/pin"
expect 1 "group create: the --use-key URI names a PIN source \(pin-source\)" "groupsrv group create --use-key ...;PIN-Source=" -- \
  "$gs" -c "$gconf" group create eng --address eng@lists.example.org --use-key "pkcs11:object=k;type=private;PIN-Source=$work/pin"
[ ! -e "$work/gs.db" ] || fail "groupsrv ca init refused a --use-key pin-source but created the database"
printf '[tls]\ncert = /x.pem\nkey = pkcs11:token=groupsrv;object=tls?pin-source=file:%s/pin\n' "$work" |
  cat "$gconf" - > "$work/tlspsrc.conf"
expect 5 "'key' in \[tls\] names a PIN source \(pin-source\), which groupsrv does not read" \
  "groupsrv: [tls] key URI with a pin-source" -- "$gs" -c "$work/tlspsrc.conf" group list
# ... and so is p11-kit's older name for it (pinfile=, read the same)
expect 1 "ca init: the --use-key URI names a PIN source \(pin-source\).*pinfile=" \
  "groupsrv ca init --use-key ...?pinfile=" -- \
  "$gs" -c "$gconf" ca init --use-key "pkcs11:object=k;type=private?pinfile=file:$work/pin"
sed 's/?pin-source=/?pinfile=/' "$work/tlspsrc.conf" > "$work/tlspfile.conf"
expect 5 "'key' in \[tls\] names a PIN source \(pin-source\)" \
  "groupsrv: [tls] key URI with a pinfile" -- "$gs" -c "$work/tlspfile.conf" group list
# ... but a label holding the text is no PIN source (p11-kit reads the
# label "ca:pin-source=x" whole): not refused, the token is opened
expect 4 "opening token .*PIN source unreadable" "groupsrv ca init --use-key with a label holding ':pin-source='" -- \
  "$gs" -c "$gconf" ca init --use-key 'pkcs11:object=ca:pin-source=x;type=private'
[ ! -e "$work/gs.db" ] || fail "a groupsrv ca init that failed created the database"
# a --use-key URI with a byte RFC 7512 wants percent-encoded: refused with
# the encoded URI (p11-kit drops the space and looks for "cakey"; the
# database would record, and every output show, the URI as typed)
expect 1 "ca init: the --use-key URI has bytes a PKCS#11 URI must percent-encode .*: give --use-key 'pkcs11:object=ca%20key;type=private'\$" \
  "groupsrv ca init --use-key with a space" -- "$gs" -c "$gconf" ca init --use-key 'pkcs11:object=ca key;type=private'
[ ! -e "$work/gs.db" ] || fail "groupsrv ca init refused a --use-key URI but created the database"
expect 1 "group create: the --use-key URI .*: give --use-key 'pkcs11:object=Gr%C3%BCn%22%7C;type=private'\$" \
  "groupsrv group create --use-key with UTF-8 and quotes" -- \
  "$gs" -c "$gconf" group create eng --address eng@lists.example.org --use-key 'pkcs11:object=Grün"|;type=private'
# a bare label is no URI: not told to percent-encode it, and refused
# before the database is made
expect 1 "^groupsrv: ca init: --use-key needs a pkcs11: URI of a private key\$" "groupsrv ca init --use-key LABEL" -- \
  "$gs" -c "$gconf" ca init --use-key 'ca key'
expect 1 "^groupsrv: group create: --use-key needs a pkcs11: URI" "groupsrv group create --use-key LABEL" -- \
  "$gs" -c "$gconf" group create eng --address eng@lists.example.org --use-key 'eng key'
[ ! -e "$work/gs.db" ] || fail "groupsrv refused a --use-key label but created the database"
printf '[tls]\ncert = /x.pem\nkey = pkcs11:token=groupsrv;object=tls key;type=private\n' | cat "$gconf" - > "$work/tlssp.conf"
expect 5 "'key' in \[tls\] has a space or control byte, .*: pkcs11:token=groupsrv;object=tls%20key;type=private\$" \
  "groupsrv: [tls] key URI with a space" -- "$gs" -c "$work/tlssp.conf" group list
printf '[tls]\ncert = /x.pem\nkey = pkcs11:token=groupsrv;object=tls;pin-value=918273\n' | cat "$gconf" - > "$work/tlspin.conf"
expect 5 "'key' in \[tls\] carries a PIN \(pin-value; not shown\)" "groupsrv: [tls] key URI with a PIN" -- \
  "$gs" -c "$work/tlspin.conf" group list
! grep -q 918273 "$work/err" || fail "groupsrv showed the PIN of [tls] key"
# serve with a listen address that does not resolve says so (it said
# "cannot listen on ...: Success", errno being nothing after getaddrinfo)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -keyout "$work/srv.key" -out "$work/srv.pem" 2>/dev/null
printf '[server]\nlisten = 256.1.1.1:8443\n[tls]\ncert = %s/srv.pem\nkey = %s/srv.key\n' "$work" "$work" |
  cat "$gconf" - > "$work/serve.conf"
# serve's stderr is its diagnostic log (docs/operations.md "Logs and the
# audit log"): each reason it does not start is a key=value record, as a
# log shipper reads them (tests/lib/logcheck.py), with the documented
# exit status: 5 for the configuration, 4 for the token, 1 otherwise.
# expect_serve RC PATTERN DESC [CONF]: serve exits RC, nothing on stdout,
# every stderr line one record, one of them an error matching PATTERN.
expect_serve() {
  local want=$1 pat=$2 desc=$3 conf=${4:-$work/serve.conf} rc=0
  timeout 60 "$gs" -c "$conf" serve >"$work/out" 2>"$work/err" </dev/null || rc=$?
  [ "$rc" = "$want" ] || { fail "$desc: exit $rc, wanted $want: $(cat "$work/err")"; return 0; }
  [ ! -s "$work/out" ] || { fail "$desc: wrote to stdout: $(cat "$work/out")"; return 0; }
  /usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/err" >&2 || { fail "$desc: not key=value log lines"; return 0; }
  grep -E -- ' level=error .*'"$pat" "$work/err" >/dev/null || { fail "$desc: stderr lacks /$pat/: $(cat "$work/err")"; return 0; }
  ok "$desc (exit $want): $(grep ' level=error ' "$work/err" | head -n 1)"
}
expect_serve 1 'msg="not started: cannot listen" addr="256\.1\.1\.1:8443" err="cannot resolve the address: ' \
  "groupsrv serve on an address that does not resolve"
printf '[server]\nlisten = 127.0.0.1:8443\nbogus = 1\n' | cat "$gconf" - > "$work/serve-bad.conf"
expect_serve 5 'msg="not started" err=".*serve-bad\.conf:[0-9]+: unknown key .bogus. in \[server\]"' \
  "groupsrv serve with an unknown key" "$work/serve-bad.conf"
expect_serve 5 'msg="not started" err=".*no-such\.conf: cannot open config file' "groupsrv serve without its configuration file" \
  "$work/no-such.conf"
expect_serve 5 'msg="not started: \[tls\] cert and key are required"' "groupsrv serve without [tls]" "$gconf"
# a port another process listens on
/usr/bin/python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); time.sleep(120)' > "$work/busy.port" &
busy_pid=$!
for _ in $(seq 1 100); do [ -s "$work/busy.port" ] && break; sleep 0.05; done
busy=$(cat "$work/busy.port")
sed "s/^listen = .*/listen = 127.0.0.1:$busy/" "$work/serve.conf" > "$work/serve-busy.conf"
expect_serve 1 "msg=\"not started: cannot listen\" addr=\"127\.0\.0\.1:$busy\" err=\"Address already in use\"" \
  "groupsrv serve on a port in use" "$work/serve-busy.conf"
kill "$busy_pid"
wait "$busy_pid" 2>/dev/null || true
# the key holder's reasons: the PIN file missing, no token matching the URI
# (an empty SoftHSM token directory), after the audit log opened
mkdir -p "$work/notokens"
printf 'directories.tokendir = %s/notokens\nobjectstore.backend = file\n' "$work" > "$work/notokens.conf"
take_port free
sed "s/^listen = .*/listen = 127.0.0.1:$free/" "$work/serve.conf" > "$work/serve-kh.conf"
SOFTHSM2_CONF=$work/notokens.conf expect_serve 4 \
  'msg="not started: the token cannot be opened" err=".*PIN source unreadable' "groupsrv serve with its PIN file missing" \
  "$work/serve-kh.conf"
printf 'not-the-pin\n' > "$work/pin"
chmod 0600 "$work/pin"
SOFTHSM2_CONF=$work/notokens.conf expect_serve 4 \
  'msg="not started: the token cannot be opened" err=".*no token present matches' "groupsrv serve with no token present" \
  "$work/serve-kh.conf"
rm -f "$work/pin"

# ---- groupmail ----
gm=$BIN/groupmail
usage='\(see groupmail --help\)$'
expect 2 "^groupmail: no command given $usage" "groupmail without a command" -- "$gm"
expect 2 "^groupmail: unknown command 'bogus' $usage" "groupmail bogus" -- "$gm" bogus
expect 2 "^groupmail: unknown command 'bogus' $usage" "groupmail bogus, before its configuration is read" -- \
  "$gm" -c "$work/no-such.conf" bogus
expect 2 "^groupmail: unknown option --bogus $usage" "groupmail decrypt --bogus" -- "$gm" decrypt --bogus
expect 2 "^groupmail: unknown option --pin-value $usage" "groupmail: an unknown --x=SECRET is not echoed" -- \
  "$gm" decrypt --pin-value=123456
! grep -q 123456 "$work/err" || fail "groupmail echoed an unknown option's value"
expect 2 "^groupmail: option --timeout needs a value $usage" "groupmail --timeout without a value" -- "$gm" keys list --timeout
expect 2 "^groupmail: option --cbc takes no value $usage" "groupmail --cbc=yes" -- "$gm" encrypt --cbc=yes
# --in naming a directory says so (it said "cannot read DIR" and no reason)
mkdir -p "$work/gmdir"
printf '[hsm]\nmodule = /usr/lib/softhsm/libsofthsm2.so\n' > "$work/gmhsm.conf"
expect 1 "^groupmail: cannot read $work/gmdir: Is a directory\$" "groupmail keys import-group-key --in DIR" -- \
  "$gm" -c "$work/gmhsm.conf" keys import-group-key --in "$work/gmdir" --token pkcs11:token=x --group-ca "$work/gmhsm.conf"
expect 2 "^groupmail: unknown option -x $usage" "groupmail -x" -- "$gm" encrypt -x
expect 2 "^groupmail: keys: expected sync, list" "groupmail keys alone" -- "$gm" keys
# a typo in keys' subcommand as in a command: named, quoted, before the configuration is read
expect 2 "^groupmail: keys: unknown subcommand 'frob' .*$usage" "groupmail keys frob" -- "$gm" keys frob
expect 2 "^groupmail: keys: unknown subcommand 'frob' .*$usage" "groupmail keys frob, before its configuration is read" -- \
  "$gm" -c "$work/no-such.conf" keys frob
expect 2 "^groupmail: keys: unknown subcommand 'a[\\]x0ab[\\]x1b\\[1m' .*$usage" "groupmail keys: control characters escaped" -- \
  "$gm" keys $'a\nb\e[1m'
"$gm" keys --help >"$work/out" 2>&1 && grep -q '^usage: groupmail' "$work/out" && ok "groupmail keys --help: the synopsis" ||
  fail "groupmail keys --help: $(cat "$work/out")"
# help is the synopsis on stdout, exit 0, as groupsrv help and --help after a command are
for a in "help" "help decrypt" "decrypt --help" "-c $work/no-such.conf help"; do
  rc=0
  "$gm" $a >"$work/out" 2>"$work/err" || rc=$?
  if [ "$rc" = 0 ] && grep -q '^usage: groupmail' "$work/out" && [ ! -s "$work/err" ]; then ok "groupmail $a: the synopsis"
  else fail "groupmail $a: exit $rc: $(cat "$work/err")"; fi
done
# an option the command does not take is named, never silently ignored
expect 2 "^groupmail: --smtp does not apply to decrypt $usage" "groupmail decrypt --smtp" -- \
  "$gm" decrypt --smtp smtp://127.0.0.1:25 --in /dev/null
expect 2 "^groupmail: --to does not apply to encrypt $usage" "groupmail encrypt --to" -- "$gm" encrypt --to x@example.org
expect 2 "^groupmail: --via does not apply to keys sync $usage" "groupmail keys sync --via" -- "$gm" keys sync --via tls
expect 2 "^groupmail: --out does not apply to keys list $usage" "groupmail keys list --out" -- "$gm" keys list --out f
expect 2 "^groupmail: --server does not apply to csr $usage" "groupmail csr --server" -- "$gm" csr --server https://x
expect 2 "^groupmail: --recipient-info does not apply to decrypt $usage" "groupmail decrypt --recipient-info" -- \
  "$gm" decrypt --recipient-info ri.der
expect 2 "^groupmail: --cbc applies to send only with --encrypt $usage" "groupmail send --cbc without --encrypt" -- \
  "$gm" send --smtp smtp://127.0.0.1:25 --to x@example.org --cbc
expect 2 "^groupmail: --server applies to send only with --encrypt $usage" "groupmail send --server without --encrypt" -- \
  "$gm" send --smtp smtp://127.0.0.1:25 --to x@example.org --server https://x
# addresses by docs/api.md "Addresses", before anything is read or sent:
# send's --to and --from name addresses that exist (the exploder's rule
# for those, with the strict rule's reason where it has one), csr's --from
# becomes a certificate's identity (the strict rule)
expect 2 "^groupmail: --to: not an email address: x<y@example.org: a character a local part may not hold" \
  "groupmail send --to with <" -- "$gm" send --smtp smtp://127.0.0.1:25 --to 'l@example.org, x<y@example.org'
expect 2 "^groupmail: --from: not an email address: a@mail_x\.example\.org: " "groupmail csr --from, older rule" -- \
  "$gm" csr --key 'pkcs11:token=t;object=k' --from a@mail_x.example.org
expect 2 "^groupmail: --from \(\[smtp\] from\): not an email address: .*SMTPUTF8" "groupmail send --from UTF-8" -- \
  "$gm" send --smtp smtp://127.0.0.1:25 --to l@example.org --from 'jürgen@example.org'
expect 2 "^groupmail: --to: an empty address" "groupmail send --to a," -- "$gm" send --smtp smtp://127.0.0.1:25 --to 'l@example.org,'
expect 2 "^groupmail: --from: not an email address: .*longer than 64" "groupmail csr --from long" -- \
  "$gm" csr --key 'pkcs11:token=t;object=k' --from "$(printf 'l%.0s' $(seq 1 65))@example.org"
# a server URL that is not https:// is a usage error, --certsrv as --server,
# before a key pair is made or anything is sent (--certsrv was exit 1)
expect 2 "^groupmail: cannot use server URL http://127\.0\.0\.1:1" "groupmail certify --server http://" -- \
  "$gm" certify --server http://127.0.0.1:1 --group eng --store "$work/mstore"
expect 2 "^groupmail: cannot use certificate server URL http://127\.0\.0\.1:1: it must be https://" \
  "groupmail certify --certsrv http://" -- \
  "$gm" certify --server https://127.0.0.1:1 --group eng --store "$work/mstore" --certsrv http://127.0.0.1:1
# ... also where a cache would answer without the server: a still-valid
# membership certificate cached for the group there (certify exited 0),
# a group certificate given as a file (encrypt did)
mkdir -p "$work/mstore/membership"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=m -keyout "$work/mstore/membership/eng@127.0.0.1_1.key" \
  -out "$work/mstore/membership/eng@127.0.0.1_1.pem" 2>/dev/null
"$gm" certify --server https://127.0.0.1:1 --group eng --store "$work/mstore" > /dev/null ||
  fail "groupmail certify: the cached membership certificate was not taken"
expect 2 "^groupmail: cannot use server URL http://127\.0\.0\.1:1: it must be https://" \
  "groupmail certify --server http:// with a cached certificate" -- \
  "$gm" certify --server http://127.0.0.1:1 --group eng --store "$work/mstore"
expect 2 "^groupmail: cannot use server URL http://127\.0\.0\.1:1: it must be https://" \
  "groupmail encrypt --server http:// --group-cert FILE" -- \
  "$gm" encrypt --server http://127.0.0.1:1 --group eng --store "$work/mstore" \
  --group-cert "$work/mstore/membership/eng@127.0.0.1_1.pem" --in /dev/null --out "$work/enc.out"
printf '[server]\ncertificate_server = ftp://127.0.0.1:1\n' > "$work/certsrv.conf"
expect 2 "^groupmail: cannot use certificate server URL ftp://" "groupmail certify, [server] certificate_server ftp://" -- \
  "$gm" -c "$work/certsrv.conf" certify --server https://127.0.0.1:1 --group eng --store "$work/mstore"
expect 2 "^groupmail: --group-cert applies to send only with --encrypt $usage" "groupmail send --group-cert without --encrypt" -- \
  "$gm" send --smtp smtp://127.0.0.1:25 --to x@example.org --group-cert g.pem
expect 2 "^groupmail: --key: the pkcs11: URI carries a PIN \(pin-value; not shown\)" "groupmail --key ...pin-value" -- \
  "$gm" csr --hsm-module /usr/lib/softhsm/libsofthsm2.so --from a@example.org \
  --key 'pkcs11:token=t;object=k;type=private?pin-value=918273'
! grep -q 918273 "$work/err" || fail "groupmail showed the PIN of a --key URI"
expect 2 "^groupmail: --group-key: the pkcs11: URI has a space .*: pkcs11:token=t;object=eng%20key;type=private\$" \
  "groupmail --group-key with a space" -- "$gm" decrypt --via local-key --group-key 'pkcs11:token=t;object=eng key;type=private'
# a bad value in the configuration file: exit 1 naming the file, not a flag
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/g.key" -out "$work/g.pem" -subj /CN=eng \
  -addext subjectAltName=email:eng@lists.example.org -days 2 2>/dev/null
echo hello > "$work/msg"
for kv in "encrypt cipher cgm" "encrypt oaep sha3" "encrypt format xml" "decrypt via bogus"; do
  set -- $kv
  printf '[%s]\n%s = %s\n' "$1" "$2" "$3" > "$work/gm.conf"
  expect 1 "^groupmail: $work/gm\.conf: bad value '$3' for \[$1\] $2$" "groupmail: [$1] $2 = $3 in the file" -- \
    "$gm" -c "$work/gm.conf" encrypt --group-cert "$work/g.pem" --in "$work/msg" --out "$work/enc"
done
printf '[server]\nurl = https://a.example\nurl = https://b.example\n' > "$work/gm.conf"
expect 1 "^groupmail: $work/gm\.conf: repeated key \[server\] url$" "groupmail: a key given twice in the file" -- \
  "$gm" -c "$work/gm.conf" encrypt --group-cert "$work/g.pem" --in "$work/msg" --out "$work/enc"
printf '[smtp]\nstarttls = yes\nstarttls = no\n' > "$work/gm.conf"
expect 1 "^groupmail: $work/gm\.conf: repeated key \[smtp\] starttls$" "groupmail: [smtp] starttls given twice" -- \
  "$gm" -c "$work/gm.conf" encrypt --group-cert "$work/g.pem" --in "$work/msg" --out "$work/enc"
printf '[Server]\n[encrypt]\ncipher = cbc\n' > "$work/gm.conf"
expect 1 "^groupmail: $work/gm\.conf: unknown section \[Server\]$" "groupmail: an unknown section with no key under it" -- \
  "$gm" -c "$work/gm.conf" encrypt --group-cert "$work/g.pem" --in "$work/msg" --out "$work/enc"
printf '[identity]\ntls_cert =\n' > "$work/gm.conf"
expect 1 "^groupmail: $work/gm\.conf: empty value for \[identity\] tls_cert$" "groupmail: an empty value in the file" -- \
  "$gm" -c "$work/gm.conf" encrypt --group-cert "$work/g.pem" --in "$work/msg" --out "$work/enc"
printf '[encrypt]\ncipher = cbc\nformat = pem\noaep = sha1\n[decrypt]\nvia = own-key\n' > "$work/gm.conf"
if ! "$gm" -c "$work/gm.conf" encrypt --group-cert "$work/g.pem" --in "$work/msg" --out "$work/enc"; then
  fail "groupmail with good [encrypt] and [decrypt] values"
elif ! grep -q -- '-----BEGIN CMS-----' "$work/enc"; then
  fail "[encrypt] format = pem did not make PEM"
elif ! openssl cms -cmsout -print -inform PEM -in "$work/enc" | grep -q aes-256-cbc; then
  fail "[encrypt] cipher = cbc not used"
else
  ok "groupmail takes good [encrypt] and [decrypt] values (cipher = cbc, format = pem)"
fi

# ---- exploder ----
xp=$BIN/exploder
usage='\(see exploder --help\)$'
xconf=$work/exploder.conf
printf '[spool]\npath = %s/spool\n[delivery]\nrelay = maildir:%s/md\n' "$work" "$work" > "$xconf"
expect 64 "^exploder: no command given $usage" "exploder without a command" -- "$xp" -c "$xconf"
expect 64 "^exploder: unknown command bogus $usage" "exploder bogus, before its configuration is read" -- \
  "$xp" -c "$work/no-such.conf" bogus
expect 64 "^exploder: unknown option -x $usage" "exploder -x" -- "$xp" -x run
expect 64 "^exploder: run: unknown option --bogus $usage" "exploder run --bogus" -- "$xp" -c "$xconf" run --bogus
expect 64 "^exploder: run: unexpected argument extra $usage" "exploder run --once extra" -- "$xp" -c "$xconf" run --once extra
expect 64 "^5\.3\.0 exploder: deliver: unknown option --bogus $usage" "exploder deliver --bogus: 5.3.0, one line" -- \
  "$xp" -c "$xconf" deliver --bogus
expect 64 "^5\.3\.0 exploder: deliver: option --list needs a value $usage" "exploder deliver --list" -- \
  "$xp" -c "$xconf" deliver --list
expect 64 "^5\.3\.0 exploder: deliver: --list ADDR is required $usage" "exploder deliver without --list" -- \
  "$xp" -c "$xconf" deliver
expect 64 "^5\.3\.0 exploder: deliver: unexpected argument extra $usage" "exploder deliver with an argument" -- \
  "$xp" -c "$xconf" deliver --list=eng@lists.example.org extra
expect 64 "^exploder: list: expected create, add, remove, set or show, not bogus $usage" "exploder list bogus" -- \
  "$xp" -c "$xconf" list bogus
expect 64 "^exploder: list show: expected a list ADDR $usage" "exploder list show" -- "$xp" -c "$xconf" list show
expect 64 "^exploder: list create: unknown --mode bogus" "exploder list create --mode bogus" -- \
  "$xp" -c "$xconf" list create eng@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode bogus
"$xp" -c "$xconf" list create eng@lists.example.org --group-server=https://127.0.0.1:1 --group=eng --mode=forward \
  --group-cert="$work/g.pem" >/dev/null 2>"$work/err" ||
  fail "exploder list create with --x=v options: $(cat "$work/err")"
expect 64 "^exploder: list set: unknown option --bogus $usage" "exploder list set --bogus" -- \
  "$xp" -c "$xconf" list set eng@lists.example.org --bogus
expect 64 "^exploder: list show: expected one list ADDR $usage" "exploder list show ADDR extra" -- \
  "$xp" -c "$xconf" list show eng@lists.example.org extra
# an option where an address goes is a usage error, not a list or member not found
expect 64 "^exploder: list show: expected the list ADDR first, not --bogus $usage" "exploder list show --bogus" -- \
  "$xp" -c "$xconf" list show --bogus
# the same before the configuration is read: a usage error is 64 whatever the file
expect 64 "^exploder: list show: expected the list ADDR first, not --bogus $usage" \
  "exploder list show --bogus, no readable configuration" -- "$xp" -c "$work/no-such.conf" list show --bogus
# help, and --help or -h after any command, is the synopsis on stdout, exit
# 0, before the configuration is read (as groupsrv's); as an option's
# value it is that value (an MTA's envelope sender)
for a in "help" "help run" "run --help" "run -h" "deliver --help" "list --help" "list show --help" \
  "list create eng@lists.example.org --group eng --help"; do
  rc=0
  "$xp" -c "$work/no-such.conf" $a >"$work/out" 2>"$work/err" </dev/null || rc=$?
  if [ "$rc" = 0 ] && grep -q '^usage: exploder' "$work/out" && [ ! -s "$work/err" ]; then ok "exploder $a: the synopsis"
  else fail "exploder $a: exit $rc: $(cat "$work/err")"; fi
done
expect 75 "^4\.3\.5 exploder: cannot read $work/no-such\.conf: " "exploder deliver --sender -h: a sender, not --help" -- \
  "$xp" -c "$work/no-such.conf" deliver --list eng@lists.example.org --sender -h
# so it is by deliver's short options and a long option's prefix, as
# getopt_long reads them (exit 0 is "delivered" to the MTA: the post lost)
expect 75 "^4\.3\.5 exploder: cannot read $work/no-such\.conf: " "exploder deliver -s -h: a sender, not --help" -- \
  "$xp" -c "$work/no-such.conf" deliver -l eng@lists.example.org -s -h
expect 75 "^4\.3\.5 exploder: cannot read $work/no-such\.conf: " "exploder deliver --sen -h: a sender, not --help" -- \
  "$xp" -c "$work/no-such.conf" deliver --list eng@lists.example.org --sen -h
expect 64 "^exploder: run: unknown option --bogus $usage" "exploder run --bogus, no readable configuration" -- \
  "$xp" -c "$work/no-such.conf" run --bogus
expect 78 "^exploder: cannot read $work/no-such\.conf: " "exploder list show ADDR, no readable configuration" -- \
  "$xp" -c "$work/no-such.conf" list show eng@lists.example.org
expect 64 "^exploder: list add: unknown option --bogus $usage" "exploder list add ADDR --bogus (the list exists)" -- \
  "$xp" -c "$xconf" list add eng@lists.example.org --bogus
expect 64 "^exploder: list remove: unknown option -x $usage" "exploder list remove ADDR MEMBER -x" -- \
  "$xp" -c "$xconf" list remove eng@lists.example.org a@example.org -x
# what was typed, quoted: one line, no escape sequence reaching the terminal
expect 1 "^exploder: list a[\\]x1b\\[1m[\\]x0a@example.org: not found$" "exploder list show: a list ADDR quoted" -- \
  "$xp" -c "$xconf" list show $'a\e[1m\n@example.org'
if # configuration errors name the line and the key; deliver's carry 4.3.5 (75)
xp_bad() { # SECTION KEY VALUE WHY
  printf '[spool]\npath = %s/spool\n[%s]\n%s = %s\n' "$work" "$1" "$2" "$3" > "$work/bad.conf"
  expect 78 "^exploder: $work/bad\.conf:4: $4$" "exploder: [$1] $2 = $3" -- "$xp" -c "$work/bad.conf" list show a@example.org
  expect 75 "^4\.3\.5 exploder: $work/bad\.conf:4: $4$" "exploder deliver: [$1] $2 = $3" -- \
    "$xp" -c "$work/bad.conf" deliver --list a@example.org
}
xp_bad spool rpath /x "unknown key 'rpath' in \[spool\]"
xp_bad delivery relay mail.example.org "bad value for 'relay' in \[delivery\]"
xp_bad delivery relay "" "empty value for 'relay' in \[delivery\]"
printf '[spool]\npath = %s/spool\n[Delivery]\n[log]\nlevel = info\n' "$work" > "$work/bad.conf"
expect 78 "^exploder: $work/bad\.conf:3: unknown section \[Delivery\]$" "exploder: an unknown section with no key under it" -- \
  "$xp" -c "$work/bad.conf" list show a@example.org
# a key given again overrides (exploder(1); the tests' configurations rely on it)
printf '[spool]\npath = %s/first\n[spool]\npath = %s/second\n' "$work" "$work" > "$work/over.conf"
"$xp" -c "$work/over.conf" list show a@example.org >/dev/null 2>&1 || true
if [ -d "$work/second" ] && [ ! -e "$work/first" ]; then ok "exploder: a key given again replaces the first"
else fail "exploder: a key given again did not replace the first"; fi
"$xp" --help 2>/dev/null | grep -q '^  list show ADDR$'; then
  ok "exploder --help prints every command on stdout"
else
  fail "exploder --help does not show list show on stdout"
fi
# ---- scripts/provision-softhsm on a DIR that holds a token already ----
# (it replaced both PIN files, then failed: the token's keys were lost)
"$SRC/scripts/provision-softhsm" "$work/tok" groupsrv >/dev/null
cp "$work/tok/user-pin" "$work/user-pin.before"
expect 1 "^provision-softhsm: $work/tok already holds a token" "provision-softhsm on a DIR with a token" -- \
  "$SRC/scripts/provision-softhsm" "$work/tok" groupsrv
if ! cmp -s "$work/tok/user-pin" "$work/user-pin.before"; then
  fail "provision-softhsm replaced the user PIN of the token already in the DIR"
elif ! GS_PIN=$(cat "$work/tok/user-pin") SOFTHSM2_CONF=$work/tok/softhsm2.conf pkcs11-tool \
    --module "${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" --token-label groupsrv --login --pin env:GS_PIN \
    --list-objects >/dev/null 2>&1; then
  fail "after a second provision-softhsm the token no longer logs in with DIR/user-pin"
else
  ok "the first token still logs in with DIR/user-pin"
fi
# Its token= line is a URI [hsm] token takes: the label percent-encoded
"$SRC/scripts/provision-softhsm" "$work/tok2" "Grün card" > "$work/prov.out"
grep -qx 'token=pkcs11:token=Gr%C3%BCn%20card' "$work/prov.out" ||
  fail "provision-softhsm printed a token URI with the label not encoded: $(grep '^token=' "$work/prov.out")"
ok "provision-softhsm prints the token URI with its label percent-encoded"
# Its softhsm2.conf is pkcs11-config/softhsm2.conf.template with the token
# directory filled in, which the template says and operations.md's sed
# does (the script had its own copy of the settings, and the template a
# placeholder in a comment that the sed filled in as well); a DIR with
# "&" and a space in it is named as it is
tok3="$work/tok & 3"
"$SRC/scripts/provision-softhsm" "$tok3" groupsrv > /dev/null
[ "$(grep -c '@TOKENDIR@' "$SRC/pkcs11-config/softhsm2.conf.template")" = 1 ] ||
  fail "pkcs11-config/softhsm2.conf.template should hold @TOKENDIR@ once, on its directories.tokendir line"
if grep -qFx "directories.tokendir = $tok3/tokens" "$tok3/softhsm2.conf" &&
   cmp -s <(grep -v '^directories.tokendir = ' "$SRC/pkcs11-config/softhsm2.conf.template") \
          <(grep -v '^directories.tokendir = ' "$tok3/softhsm2.conf"); then
  ok "provision-softhsm writes the template filled in, a DIR with '&' in it as it is"
else
  fail "provision-softhsm's softhsm2.conf is not the template with directories.tokendir = $tok3/tokens: $(diff \
    "$SRC/pkcs11-config/softhsm2.conf.template" "$tok3/softhsm2.conf" | head -5 | tr '\n' ' ')"
fi

# groupmail with a token key but no PIN source: not "key not found" alone
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
GS_PIN=$(cat "$work/tok/user-pin") SOFTHSM2_CONF=$work/tok/softhsm2.conf pkcs11-tool --module "$module" \
  --token-label groupsrv --login --pin env:GS_PIN --keypairgen --key-type EC:prime256v1 --label member --id 0c01 \
  --usage-sign >/dev/null 2>&1 || fail "pkcs11-tool could not make an EC key"
SOFTHSM2_CONF=$work/tok/softhsm2.conf expect 1 "no key member on the token \(no PIN source, so not logged in: " \
  "groupmail csr with a token key and no PIN source" -- \
  "$gm" csr --hsm-module "$module" --key 'pkcs11:token=groupsrv;object=member;type=private' --from a@example.org
if SOFTHSM2_CONF=$work/tok/softhsm2.conf "$gm" csr --hsm-module "$module" --pin-source "$work/tok/user-pin" \
    --key 'pkcs11:token=groupsrv;object=member;type=private' --from a@example.org 2>"$work/err" | grep -q 'BEGIN CERTIFICATE REQUEST'; then
  ok "groupmail csr with --pin-source signs on the token"
else
  fail "groupmail csr with --pin-source: $(cat "$work/err")"
fi
# ... and with the URI's own pin-source, in its query (RFC 7512) or in its
# path, where p11-kit also reads it (it was ignored there: "no PIN source")
# csr_signs URI-TAIL WHAT: groupmail csr signs with the member key named by
# its URI plus URI-TAIL, reading the PIN from where that names it
csr_signs() {
  if SOFTHSM2_CONF=$work/tok/softhsm2.conf "$gm" csr --hsm-module "$module" \
      --key "pkcs11:token=groupsrv;object=member;type=private$1" --from a@example.org 2>"$work/err" |
      grep -q 'BEGIN CERTIFICATE REQUEST'; then
    ok "groupmail csr with $2 signs on the token"
  else
    fail "groupmail csr with $2: $(cat "$work/err")"
  fi
}
for u in "?pin-source=file:$work/tok/user-pin" ";pin-source=file:$work/tok/user-pin"; do
  csr_signs "$u" "${u%%=*}= in the key URI"
done
# ... given twice, the last is read, as p11-kit reads it (the first was:
# another program given the URI read another file, and a wrong PIN
# counts towards the token's lockout)
# pinfile=, p11-kit's older name for it, is the same attribute there
for u in ";pin-source=file:$work/no-such-pin?pin-source=file:$work/tok/user-pin" \
  "?pin-source=file:$work/no-such-pin&pin-source=file:$work/tok/user-pin" \
  ";pin-source=file:$work/no-such-pin?pinfile=file:$work/tok/user-pin" ";pinfile=file:$work/tok/user-pin"; do
  csr_signs "$u" "$u in the key URI (the last PIN source read)"
done

# ---- scripts/setup with packages missing, as a user without root or sudo ----
# (a Debian 12 installed with a root password has no sudo): it names what
# to do instead of failing on "sudo: command not found", and runs no apt.
# As root, run as nobody from a directory in /tmp with a copy of the
# script: nobody cannot reach the work directory (0700), nor a checkout
# below root's home (/root is 0700), where CI as root may have it.
fake=$(mktemp -d /tmp/cli-contract-setup.XXXXXX)
trap 'rm -rf "$work" "$fake"' EXIT
printf '#!/bin/sh\nexit 1\n' > "$fake/dpkg-query" # nothing installed
printf '#!/bin/sh\necho apt-get ran >&2\n' > "$fake/apt-get"
ln -s "$(command -v grep)" "$(command -v id)" "$(command -v bash)" "$fake/"
install -m 0644 "$SRC/scripts/setup" "$fake/setup"
chmod 755 "$fake" "$fake/dpkg-query" "$fake/apt-get"
as_user=()
[ "$(id -u)" != 0 ] || as_user=(runuser -u nobody --)
expect 1 "^setup: .* needs root: run scripts/setup as root \\(or install sudo\\)" "scripts/setup, packages missing, no root and no sudo" -- \
  "${as_user[@]}" env -i PATH="$fake" bash "$fake/setup"
rm -rf "$fake"

[ "$nfail" = 0 ] || { echo "cli-contract: $nfail check(s) failed" >&2; exit 1; }
echo "cli-contract: all passed"
