#!/usr/bin/env bash
# cluster.sh BIN SRC: three `groupsrv serve` instances on one private
# PostgreSQL behind HAProxy (tests/lib/cluster.sh), and what must hold when
# things fail:
#   - the servers' tokens get gs-a's keys by the key ceremony (issue 17:
#     token transport-key, ca/group export with the SO PIN, ca/group import);
#   - a member removed through gs-a's admin API is refused at the very next
#     unwrap at gs-b, gs-c and through HAProxy (time after the removal's
#     answer reported);
#   - a key version made on gs-a's token only is listed by `groupsrv check`
#     on gs-b and answered 503 key_unavailable there, not a failed group;
#     once copied by the ceremony, gs-b serves it without a restart;
#   - kill -9 of an instance under load through HAProxy: only requests in
#     flight on it fail, every client's later requests succeed;
#   - PostgreSQL stopped under load: 503 db_unavailable with Retry-After and
#     never a 200 without an audit row; started again: service resumes
#     without restarting groupsrv;
#   - afterwards every instance's audit chain verifies, and the audit rows of
#     successful unwraps equal the 200 answers (exactly, for the database
#     outage; for the killed instance at most its in-flight requests more).
set -euo pipefail
BIN=$1 SRC=$2
CL_SRC=$SRC
. "$SRC/tests/lib/cluster.sh"

work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/cluster.XXXXXX")
cleanup() { cl_cleanup; }
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/log/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 12 "$f" >&2; }; done
  exit 1
}
ok() { echo "ok: $*"; }
PY=/usr/bin/python3
jq_() { $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2:]: v=v.get(k, 0) if isinstance(v, dict) else v
print(v)' "$@"; }

cl_init "$work" || fail "PostgreSQL did not start"
CL_LOG_LEVEL=warn cl_provision 3 || fail "provisioning"
c=$CL_CERTS
gsa 0 group create eng --address eng@example.org --key rsa:2048 --methods tls,recipient-key,group-secret \
  --replicable >/dev/null || fail "group create"
gsa 0 group show eng --cert > "$c/group.pem"
for m in alice carol loadk loadp; do
  gsa 0 member add eng "$m@example.org" --issue-cert --out "$c" >/dev/null || fail "member add $m"
done
gsa 0 member add eng admin@example.org --role admin --issue-cert --out "$c" >/dev/null
cl_copy_keys eng || fail "the key ceremony from gs-a to gs-b and gs-c"
for i in 1 2; do gsa "$i" check > "$work/check-$i.txt" 2>&1 || fail "check on ${CL_NAME[$i]}: $(cat "$work/check-$i.txt")"; done
grep -q 'gs:group:eng:v1 .*OK (imported copy)' "$work/check-1.txt" || fail "gs-b's key is no copy: $(cat "$work/check-1.txt")"
for a in gs-a/admin:ca-export gs-a/admin:group-export gs-b/admin:transport-key gs-b/admin:ca-import \
  gs-b/admin:group-import gs-c/admin:group-import; do
  [ "$(pg_psql groupsrv -At -c "SELECT count(*) FROM audit WHERE instance = '${a%%:*}'
      AND line::json->>'action' = '${a#*:}' AND line::json->>'outcome' = 'ok'")" -ge 1 ] || fail "no audit row $a"
done
ok "the key ceremony gave gs-b and gs-c the CA's and eng's keys (imported copies), recorded in the audit table"
for i in 0 1 2; do cl_start "$i" || fail "${CL_NAME[$i]} did not start"; done
cl_haproxy_start || fail "HAProxy"
ok "3 instances on one PostgreSQL behind HAProxy ($CL_URL)"

printf 'Subject: t\n\nhello group\n' > "$work/msg.txt"
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg.der" \
  -recip "$c/group.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
$PY "$SRC/tests/integration/server-cms.py" ri "$work/msg.der" "$work/ri.der"
printf '{"recipient_info":"%s","deliver":"tls"}' "$(base64 -w0 "$work/ri.der")" > "$work/req-tls.json"
printf '{"recipient_info":"%s","deliver":"group-secret"}' "$(base64 -w0 "$work/ri.der")" > "$work/req-gs.json"
unwrap() { # WHO URL BODY [GROUP]: prints the HTTP status, body in $work/body (GROUP: eng)
  curl -s -o "$work/body" -w '%{http_code}' --cacert "$c/tca.pem" --cert "$c/$1@example.org.pem" \
    --key "$c/$1@example.org.key" -H 'Content-Type: application/json' --data-binary @"$3" \
    "$2/v1/groups/${4:-eng}/unwrap" || true
}
for i in 0 1 2; do
  [ "$(unwrap carol "https://localhost:${CL_PORTS[$i]}" "$work/req-tls.json")" = 200 ] || fail "carol at ${CL_NAME[$i]}"
done
ok "carol unwraps at gs-a, gs-b and gs-c"

# ---- removal through gs-a, refused at gs-b, gs-c and through HAProxy ----------
$PY "$SRC/tests/lib/cluster-load.py" removal --admin-url "https://localhost:${CL_PORTS[0]}" \
  --admin-cert "$c/admin@example.org.pem" --admin-key "$c/admin@example.org.key" --cacert "$c/tca.pem" \
  --member carol@example.org --member-cert "$c/carol@example.org.pem" --member-key "$c/carol@example.org.key" \
  --body "$work/req-tls.json" --group eng --at "https://localhost:${CL_PORTS[1]}" \
  --at "https://localhost:${CL_PORTS[2]}" --at "$CL_URL" > "$work/removal.json" || fail "removal through gs-a"
$PY - "$work/removal.json" <<'EOF' || fail "removal: $(cat "$work/removal.json")"
import json, sys
r = json.load(open(sys.argv[1]))
for url, v in r.items():
    # the very next request is refused: no grace period, no cache
    assert v["statuses"][0] == 403 and v["code"] == "not_a_member", (url, v)
    print("removal visible at %s: first unwrap refused %.1f ms after the removal's answer" % (url, v["ms_after_removal"]))
EOF
ok "carol's first unwrap after the removal is 403 at gs-b, gs-c and through HAProxy"

# ---- a key version only gs-a's token has: key_unavailable at gs-b ------------
# The removal rotated the group secret key (auto_rotate_secret_on_remove) on
# gs-a's token; gs-b and gs-c have clones made before it.
set +e
gsa 1 check > "$work/check-b.txt" 2>&1
set -e
grep -q '^missing   group eng secret version 2 label gs:secret:eng:v2' "$work/check-b.txt" \
  || fail "groupsrv check on gs-b does not list secret v2: $(cat "$work/check-b.txt")"
ok "groupsrv check on gs-b lists the current secret key version 2 missing from its token"
[ "$(unwrap alice "https://localhost:${CL_PORTS[1]}" "$work/req-gs.json")" = 503 ] || fail "group-secret at gs-b: $(cat "$work/body")"
grep -q '"code":"key_unavailable"' "$work/body" || fail "not key_unavailable: $(cat "$work/body")"
[ "$(unwrap alice "https://localhost:${CL_PORTS[1]}" "$work/req-tls.json")" = 200 ] || fail "tls at gs-b after key_unavailable"
[ "$(unwrap alice "https://localhost:${CL_PORTS[0]}" "$work/req-gs.json")" = 200 ] || fail "group-secret at gs-a"
ok "gs-b answers 503 key_unavailable for that version only (deliver=tls still 200); gs-a serves it"
cl_copy_version 1 eng --secret-version 2 || fail "the ceremony for secret version 2 to gs-b"
gsa 1 check > "$work/check-b2.txt" 2>&1 || fail "check on gs-b after the copy: $(cat "$work/check-b2.txt")"
[ "$(unwrap alice "https://localhost:${CL_PORTS[1]}" "$work/req-gs.json")" = 200 ] || fail "group-secret at gs-b after the copy: $(cat "$work/body")"
ok "secret version 2 copied to gs-b by the ceremony: check passes and gs-b serves it, no restart"

# ---- a group key version only gs-a's token has: discovery at gs-b -------------
# Until the ceremony brings version 2, gs-b cannot say which key transports
# it takes: it leaves key_transports out (clients: not said) rather than
# answering OAEP alone, which would make exploders bounce every v1.5 sender.
kts() { # I: the key_transports of eng's discovery answer at instance I, or "absent"
  curl -s --cacert "$c/tca.pem" "https://localhost:${CL_PORTS[$1]}/v1/groups/eng" |
    $PY -c 'import json,sys; print(",".join(json.load(sys.stdin).get("key_transports", ["absent"])))'
}
gsa 0 group rotate eng > /dev/null || fail "group rotate eng on gs-a"
[ "$(kts 0)" = "RSA-OAEP,RSA-PKCS1-v1_5" ] || fail "gs-a after the rotation: key_transports $(kts 0)"
[ "$(kts 1)" = absent ] || fail "gs-b without version 2 on its token: key_transports $(kts 1), want absent"
cl_copy_version 1 eng --version 2 || fail "the ceremony for group key version 2 to gs-b"
cl_copy_version 2 eng --version 2 || fail "the ceremony for group key version 2 to gs-c"
[ "$(kts 1)" = "RSA-OAEP,RSA-PKCS1-v1_5" ] || fail "gs-b after the copy: key_transports $(kts 1)"
ok "a replica without the current group key version leaves key_transports out, and says them once it has it"

# ---- a group whose rejection key only gs-a's token has ----------------------------
# Every RSA group takes PKCS#1 v1.5 by default, through a rejection key.
# Where the ceremony brought the group key but not (yet) that key, gs-b
# serves OAEP and answers v1.5 with 503 key_unavailable (another server
# can answer; a 400 would make exploders bounce the mail for good), and it
# still starts (the kill -9 below restarts it with this group recorded).
gsa 0 group create v15g --address v15g@example.org --key rsa:2048 --methods tls --replicable >/dev/null ||
  fail "group create v15g"
gsa 0 member add v15g alice@example.org --cert "$c/alice@example.org.pem" >/dev/null || fail "member add v15g"
cl_copy_version 1 v15g --version 1 || fail "the ceremony for v15g's key version 1 alone to gs-b"
gsa 0 group show v15g --cert > "$work/v15g.pem"
openssl rand 32 > "$work/cek32"
for pad in oaep pkcs1; do
  openssl pkeyutl -encrypt -certin -inkey "$work/v15g.pem" -pkeyopt "rsa_padding_mode:$pad" \
    -in "$work/cek32" -out "$work/ek.$pad" || fail "pkeyutl $pad"
done
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","content_algorithm":"aes-256-cbc","deliver":"tls"}' \
  "$(base64 -w0 "$work/ek.oaep")" > "$work/req-v15g-oaep.json"
printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5","content_algorithm":"aes-256-cbc","deliver":"tls"}' \
  "$(base64 -w0 "$work/ek.pkcs1")" > "$work/req-v15g-v15.json"
unwrap_v15g() { unwrap alice "https://localhost:${CL_PORTS[$1]}" "$2" v15g; } # I BODY
[ "$(unwrap_v15g 1 "$work/req-v15g-oaep.json")" = 200 ] || fail "OAEP at gs-b without the rejection key: $(cat "$work/body")"
[ "$(unwrap_v15g 1 "$work/req-v15g-v15.json")" = 503 ] && grep -q '"code":"key_unavailable"' "$work/body" ||
  fail "v1.5 at gs-b without the rejection key: $(cat "$work/body")"
[ "$(unwrap_v15g 0 "$work/req-v15g-v15.json")" = 200 ] || fail "v1.5 at gs-a: $(cat "$work/body")"
ok "gs-b without v15g's rejection key: OAEP 200, PKCS#1 v1.5 503 key_unavailable; gs-a serves v1.5"

# ---- kill -9 of an instance under load through HAProxy -------------------------
threads=6
$PY "$SRC/tests/lib/cluster-load.py" load --url "$CL_URL" --cert "$c/loadk@example.org.pem" \
  --key "$c/loadk@example.org.key" --cacert "$c/tca.pem" --body "$work/req-tls.json" --threads $threads \
  --duration 7 --out "$work/load-kill.json" > /dev/null &
load_pid=$!
sleep 2.5
cl_kill 1
wait "$load_pid" || fail "load generator"
cl_wait_up 2 || fail "HAProxy did not take gs-b out"
$PY - "$work/load-kill.json" "$threads" <<'EOF' || fail "kill -9 under load: $(cat "$work/load-kill.json")"
import json, sys
s, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
assert set(s["status"]) == {"200"}, s["status"]          # no error answers at all
assert s["conn_errors"] <= threads, s                    # at most one in-flight request per client
assert all(x == 200 for x in s["last"]), s["last"]       # every client's later requests succeed
print("kill -9 under load: %d answers 200, %d in-flight requests lost" % (s["status"]["200"], s["conn_errors"]))
EOF
ok "kill -9 of gs-b under load: only in-flight requests failed, HAProxy took it out"
cl_start 1 || fail "gs-b restart"
cl_wait_up 3 || fail "HAProxy did not take gs-b back"
ok "gs-b restarted and back in HAProxy"

# ---- PostgreSQL stopped under load, then back -------------------------------------
$PY "$SRC/tests/lib/cluster-load.py" load --url "$CL_URL" --cert "$c/loadp@example.org.pem" \
  --key "$c/loadp@example.org.key" --cacert "$c/tca.pem" --body "$work/req-tls.json" --threads $threads \
  --duration 12 --out "$work/load-pg.json" > /dev/null &
load_pid=$!
sleep 2
pg_stop || fail "pg_ctl stop"
# One request straight to gs-a while the database is down: the load
# through HAProxy may see none of the outage (its health checks take every
# server out first and it queues the requests until they are back, which
# on a loaded machine can be the whole outage), this one always does.
probe=$(curl -s -D "$work/probe.hdr" -o "$work/probe.body" -w '%{http_code}' --cacert "$c/tca.pem" \
  --cert "$c/loadp@example.org.pem" --key "$c/loadp@example.org.key" -H 'Content-Type: application/json' \
  --data-binary @"$work/req-tls.json" "https://localhost:${CL_PORTS[0]}/v1/groups/eng/unwrap" || true)
sleep 3
pg_restart || fail "pg_ctl start"
wait "$load_pid" || fail "load generator"
[ "$probe" = 503 ] && grep -q '"db_unavailable"' "$work/probe.body" && grep -qi '^Retry-After: [1-9]' "$work/probe.hdr" ||
  fail "an unwrap at gs-a while PostgreSQL was stopped: $probe $(cat "$work/probe.body") $(cat "$work/probe.hdr")"
$PY - "$work/load-pg.json" "$threads" <<'EOF' || fail "PostgreSQL outage under load: $(cat "$work/load-pg.json")"
import json, sys
s, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
assert set(s["codes"]) <= {"db_unavailable"}, s         # any refusal in the outage says why
assert set(s["status"]) <= {"200", "503"}, s["status"]
assert s["retry_after_missing"] == 0, s                    # every 503 says when to come back
assert all(x == 200 for x in s["last"]), s["last"]         # resumed without restarting groupsrv
print("database outage under load: %s answers, codes %s, %d connections refused while every server was down"
      % (s["status"], s["codes"], s["conn_errors"]))
EOF
for i in 0 1 2; do kill -0 "${CL_PID[$i]}" || fail "${CL_NAME[$i]} exited during the outage"; done
ok "PostgreSQL stopped under load: 503 db_unavailable (at gs-a: $(grep -o '"message": *"[^"]*"' "$work/probe.body" | head -c 120)); back: service resumed, no groupsrv restarted"

# ---- audit: chains whole, one row per successful unwrap ---------------------------
gsa 0 audit verify > "$work/verify.txt" 2>&1 || fail "audit verify: $(cat "$work/verify.txt")"
[ "$(grep -c '^instance gs-[abc]: ok:' "$work/verify.txt")" = 3 ] || fail "not 3 chains: $(cat "$work/verify.txt")"
# the ceremony's records, in chains of their own (an admin command never
# writes into a running server's chain)
grep -q '^instance gs-a/admin: ok:' "$work/verify.txt" && grep -q '^instance gs-b/admin: ok:' "$work/verify.txt" ||
  fail "no ceremony chains: $(cat "$work/verify.txt")"
ok "audit verify: every instance's chain is whole ($(tail -n 1 "$work/verify.txt"))"
rows() { # IDENTITY: audit rows of successful unwraps by IDENTITY
  pg_psql groupsrv -At -c "SELECT count(*) FROM audit WHERE line::json->>'action' = 'unwrap'
    AND line::json->>'outcome' = 'ok' AND line::json->>'identity' = '$1'"
}
okp=$(jq_ "$work/load-pg.json" status 200)
rp=$(rows loadp@example.org)
[ "$rp" = "$okp" ] || fail "database outage: $rp audit rows of successful unwraps, $okp answers 200"
ok "database outage: $rp audit rows of successful unwraps = $okp answers 200"
okk=$(jq_ "$work/load-kill.json" status 200)
lost=$(jq_ "$work/load-kill.json" conn_errors)
rk=$(rows loadk@example.org)
[ "$rk" -ge "$okk" ] && [ "$rk" -le $((okk + lost)) ] \
  || fail "kill -9: $rk audit rows of successful unwraps, $okk answers 200, $lost lost in flight"
ok "kill -9: $rk audit rows of successful unwraps for $okk answers 200 (+$((rk - okk)) recorded, answer lost in flight)"
# Corrupting one record is caught (the test can fail).
pg_psql groupsrv -c "UPDATE audit SET line = replace(line, '\"identity\":\"', '\"identity\":\"x')
  WHERE instance = 'gs-c' AND seq = 2" >/dev/null
pg_psql groupsrv -c "DELETE FROM audit WHERE instance = 'gs-a' AND seq = 3" >/dev/null
set +e
gsa 0 audit verify > "$work/verify-bad.txt" 2>&1
rc=$?
set -e
[ "$rc" = 3 ] || fail "audit verify after tampering exited $rc: $(cat "$work/verify-bad.txt")"
grep -q 'instance gs-a: gap: records 3..3 missing' "$work/verify-bad.txt" || fail "gap not reported: $(cat "$work/verify-bad.txt")"
grep -q 'instance gs-c: record 3: audit log hash chain broken' "$work/verify-bad.txt" \
  || fail "edited record not caught: $(cat "$work/verify-bad.txt")"
ok "audit verify reports a deleted record as a gap and an edited one as a broken chain"
