#!/usr/bin/env bash
# make-fixtures.sh KIND OLD_BIN COMMIT OUT: the state an older build wrote,
# for tests/integration/upgrade-fixtures.sh. Not run by ctest (it needs the
# old build): run it by hand with the binaries of an older commit, e.g.
#   git worktree add --detach /tmp/old COMMIT
#   cmake -S /tmp/old -B /tmp/old/build -DCMAKE_BUILD_TYPE=Release
#   cmake --build /tmp/old/build --target groupsrv exploder
#   tests/upgrade/make-fixtures.sh groupsrv /tmp/old/build/bin COMMIT tests/upgrade/groupsrv-schemaN
# KIND groupsrv: a throw-away SoftHSM token, `ca init`, groups eng (three
#   key versions, v1 retired; four secret key versions) and ops, members of
#   each role, one removed; writes OUT.sql (`sqlite3 .dump` and the
#   user_version) and OUT.audit.jsonl (the audit log those commands wrote).
# KIND exploder: a forward list with two members and one message queued
#   (the relay down), writes OUT/exploder.sql and OUT/msg/ (the spool's files).
# The first line of each output names COMMIT. The token is thrown away: the
# fixtures hold what the databases and files hold, never a key.
set -euo pipefail
kind=$1 bin=$2 commit=$3 out=$4
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/tests/lib/ports.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
if [ "$kind" = groupsrv ]; then
  "$src/scripts/provision-softhsm" "$t/tok" groupsrv >/dev/null
  export SOFTHSM2_CONF=$t/tok/softhsm2.conf
  cat > "$t/gs.conf" <<CONF
[hsm]
module = ${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
token = pkcs11:token=groupsrv
pin_source = $t/tok/user-pin
[db]
path = $t/groupsrv.db
[audit]
path = $t/audit.jsonl
CONF
  gs() { "$bin/groupsrv" -c "$t/gs.conf" "$@" >/dev/null; }
  gs ca init --key rsa:2048
  gs group create eng --address eng@example.org --key rsa:2048 --methods tls,recipient-key,group-secret,membership-cert
  gs group create ops --address ops@example.org --key ec:p256 --methods tls
  mkdir "$t/certs"
  for m in alice bob carol; do gs member add eng "$m@example.org" --issue-cert --out "$t/certs"; done
  gs member add eng dle@example.org --issue-cert --out "$t/certs" --role exploder
  gs member add eng admin@example.org --issue-cert --out "$t/certs" --role admin
  gs member add ops alice@example.org --cert "$t/certs/alice@example.org.pem"
  # serve, for the audit log: two unwraps and one refused (carol, removed)
  gs member remove eng carol@example.org
  "$bin/groupsrv" -c "$t/gs.conf" ca show > "$t/ca.pem"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$t/srv.key" -out "$t/srv.pem" 2>/dev/null
  take_port port
  printf '[server]\nlisten = 127.0.0.1:%s\n[tls]\ncert = %s\nkey = %s\nclient_ca = %s\n' "$port" "$t/srv.pem" \
    "$t/srv.key" "$t/ca.pem" >> "$t/gs.conf"
  "$bin/groupsrv" -c "$t/gs.conf" serve 2>"$t/serve.log" &
  pid=$!
  for _ in $(seq 100); do curl -s --cacert "$t/srv.pem" -o /dev/null "https://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  "$bin/groupsrv" -c "$t/gs.conf" group show eng --pubkey > "$t/eng.pub"
  head -c 32 /dev/urandom | openssl pkeyutl -encrypt -pubin -inkey "$t/eng.pub" -pkeyopt rsa_padding_mode:oaep > "$t/ek"
  for m in alice bob carol; do
    curl -s --cacert "$t/srv.pem" --cert "$t/certs/$m@example.org.pem" --key "$t/certs/$m@example.org.key" \
      -H "Content-Type: application/json" -o /dev/null -w "%{http_code} " \
      --data "{\"encrypted_key\":\"$(base64 -w0 "$t/ek")\",\"algorithm\":\"RSA-OAEP\"}" \
      "https://127.0.0.1:$port/v1/groups/eng/unwrap" || true
  done
  echo
  kill -TERM "$pid"
  wait "$pid" || true
  gs group rotate eng
  gs secret rotate eng
  gs group rotate eng
  gs group retire eng --before 2
  v=$(sqlite3 "$t/groupsrv.db" 'PRAGMA user_version')
  { echo "-- groupsrv database schema $v, written by groupsrv at commit $commit (tests/upgrade/make-fixtures.sh)"
    sqlite3 "$t/groupsrv.db" .dump
    echo "PRAGMA user_version = $v;"; } > "$out.sql"
  cp "$t/audit.jsonl" "$out.audit.jsonl"
  # JSON has no comments: the commit goes in a file beside it
  echo "audit log written by groupsrv at commit $commit (tests/upgrade/make-fixtures.sh)" > "$out.audit.jsonl.README"
elif [ "$kind" = exploder ]; then
  printf '[spool]\npath = %s/spool\n[delivery]\nrelay = smtp://127.0.0.1:9\n' "$t" > "$t/x.conf"
  x() { "$bin/exploder" -c "$t/x.conf" "$@"; }
  x list create fwd@lists.example.org --group-server https://127.0.0.1:9 --group eng --mode forward \
    --allow-unencrypted >/dev/null
  x list add fwd@lists.example.org alice@example.org bob@example.org >/dev/null
  printf 'From: carol@example.org\r\nTo: fwd@lists.example.org\r\nSubject: queued before the upgrade\r\nMessage-ID: <q1@example.org>\r\n\r\nthe body queued by the old exploder\r\n' |
    x deliver --list fwd@lists.example.org --sender carol@example.org 2>/dev/null
  x run --once 2>/dev/null || [ $? = 75 ] # the relay is down: the message stays queued
  v=$(sqlite3 "$t/spool/exploder.db" 'PRAGMA user_version')
  rm -rf "$out"
  mkdir -p "$out"
  { echo "-- exploder spool schema $v, written by the exploder at commit $commit (tests/upgrade/make-fixtures.sh)"
    sqlite3 "$t/spool/exploder.db" .dump
    echo "PRAGMA user_version = $v;"; } > "$out/exploder.sql"
  cp -r "$t/spool/msg" "$out/msg"
else
  echo "usage: make-fixtures.sh groupsrv|exploder OLD_BIN COMMIT OUT" >&2
  exit 2
fi
