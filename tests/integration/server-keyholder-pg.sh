#!/usr/bin/env bash
# server-keyholder-pg.sh BIN SRC: the key holder with PostgreSQL as its
# store, in a database made with a UTF-8 collation, as docs/scale-out.md's
# CREATE DATABASE makes it on a host whose locale is one (C.UTF-8,
# en_US.UTF-8). There lower(), by which the store finds a member without
# case, folds U+212A KELVIN SIGN to k and U+0130 to i; addresses must
# still compare without ASCII case only (docs/api.md):
#  - driven directly over its link as a compromised network process
#    (tests/tools/khdrive.c): "al\u0130ce@example.org" is no member, not
#    alice with a rate-limit bucket and failure count of her own;
#  - over HTTPS, the network process as it is: a member recorded without a
#    certificate (a REST PUT) authenticates with any client CA's
#    certificate naming her; one whose subject names "k\u0130m@example.org"
#    (another address, which a CA may certify for someone else) is not
#    kim: 403 not_a_member.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/pg.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/server-keyholder-pg.XXXXXX")
srv_pid=
cleanup() {
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; fi
  pg_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
. "$SRC/tests/integration/pg-server-lib.sh"

pg_start || fail "PostgreSQL did not start"
locale -a | grep -qix 'c.utf-\?8' || fail "no C.UTF-8 locale on this host"
pg_psql postgres -c "CREATE DATABASE gs TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8'" >/dev/null ||
  fail "CREATE DATABASE with a UTF-8 collation"
[ "$(pg_psql gs -At -c "SELECT lower(U&'al\0130ce') = 'alice'")" = t ] ||
  fail "control: lower() in this database does not fold U+0130 to i"
pgsrv_setup "$(pg_url gs)" alice mallory
sed -e 's|^\[server\]$|[server]\nunwrap_batch_max = 10\nrate_limit = 1\nrate_burst = 5\nmax_failed_unwraps = 3|' \
  "$work/gs.conf" > "$work/kh.conf"
"$BIN/khdrive" "$work/kh.conf" "$work/ri.der" alice@example.org "$certs/alice@example.org.pem" carol@example.org \
  mallory@example.org "$certs/mallory@example.org.pem" > "$work/khdrive.out" 2>&1 || { cat "$work/khdrive.out"; fail "khdrive"; }
cat "$work/khdrive.out"
grep -q '^ok: the member spelt with U+0130 / U+212A is no member' "$work/khdrive.out" ||
  fail "khdrive did not try the member spelt with U+0130"
ok "the key holder on PostgreSQL: al\\u0130ce@example.org named over IPC is no member"

# ---- over HTTPS: a client CA's certificate for another address that
# lower() folds to a certificate-less member's ----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Other Client CA" \
  -keyout "$certs/oca.key" -out "$certs/oca.pem" 2>/dev/null
# cn_cert NAME CN: a client certificate of that CA with subject CN (UTF-8), no SAN
cn_cert() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -utf8 -subj "/CN=$2" \
    -keyout "$certs/$1.key" -out "$certs/$1.csr" 2>/dev/null
  openssl x509 -req -in "$certs/$1.csr" -CA "$certs/oca.pem" -CAkey "$certs/oca.key" -CAcreateserial -days 2 \
    -out "$certs/$1.pem" 2>/dev/null
}
cn_cert kim kim@example.org
cn_cert kim-odd "$(printf 'k\xc4\xb0m@example.org')"
gs ca show > "$certs/localca.pem"
cat "$certs/localca.pem" "$certs/oca.pem" > "$certs/clients.pem"
sed -i "s|^\[tls\]\$|[tls]\nclient_ca = $certs/clients.pem|" "$work/gs.conf"
pgsrv_start
printf '{"role":"member"}' > "$work/put.json"
expect 201 "" "kim@example.org added by REST without a certificate" -- admin -X PUT -H 'Content-Type: application/json' \
  --data-binary @"$work/put.json" "$base/v1/groups/eng/members/kim@example.org"
as() { local who=$1; shift; curl -sS -m 15 --cacert "$certs/server.pem" --cert "$certs/$who.pem" --key "$certs/$who.key" \
  -D "$work/hdr" -o "$work/body" -w '%{http_code}' "$@" 2>/dev/null || true; }
got=$(as kim --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap")
[ "$got" = 200 ] || fail "control: kim with the other CA's certificate: HTTP $got $(head -c 300 "$work/body")"
ok "kim, recorded without a certificate, unwraps with a client CA's certificate naming her"
got=$(as kim-odd --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap")
[ "$got" = 403 ] && grep -q '"code":"not_a_member"' "$work/body" ||
  fail "a certificate naming k\u0130m@example.org acted as kim: HTTP $got $(head -c 300 "$work/body")"
ok "a certificate for k\u0130m@example.org is not kim's, though lower() folds it to hers: 403 not_a_member"
