# bench/lib-exploder.sh: part 2 of issue 9, the exploder. Sourced by
# bench/run after lib-groupsrv.sh (needs BIN, GS_WORK, URL_BASE, CA_CERT,
# EXPLODER_CERT, EXPLODER_KEY, work, LISTS, PGP_N, log, die, pids,
# gs_server_start, gs_requests_served).
#
# exploder_bench OUT
#   For each list size N in LISTS and mode in group-secret, forward,
#   member-certs: one 100 KB message (encrypted with `openssl cms` to the
#   group certificate, as a stock sender would) through `exploder deliver`
#   and `exploder run --once` to tests/lib/smtpd.py on loopback. Writes
#   OUT/exploder.csv: mode,members,spool_s,deliver_s,total_s,delivered,
#   rewrap_calls,message_bytes,copy_bytes (the mean size of a stored copy),
#   runner_cpu_s (CPU time of the `exploder run` processes alone, without
#   the SMTP sink's and the group server's).
#   Member-certs runs on a group of its own with exactly N members, each
#   with a certificate on record (mc_group). Then OUT/sizes.csv: what the
#   sender sends to the group, against `openssl cms -encrypt` to N member
#   certificates.

XP_SMTPD=$top/tests/lib/smtpd.py

# CPU seconds (user + system) of this shell's finished children as the
# `times` builtin wrote them to FILE: `times > FILE` must run in this shell
# itself (in $(...) it would count a fresh subshell's children: none).
children_cpu() {
  tail -1 "$1" | awk '{s = 0; for (i = 1; i <= 2; i++) {split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2]}
    printf "%.3f\n", s}'
}

# mc_group N: group bench-mcN (RSA-2048) whose members member1..N@members.bench.example
# each have a certificate on record, added as an administrator would, through
# PUT /v1/groups/G/members/E. The certificates share one RSA-2048 key (the
# token's work per member, importing the public key and wrapping to it, is
# the same whatever the key) and are signed by a throw-away EC CA (fast to
# make; the group server checks a member certificate's email, not its issuer).
mc_group() {
  local n=$1 g=bench-mc$1
  gs group create "$g" --address "$g@bench.example" --key rsa:2048 --methods tls >/dev/null ||
    die "groupsrv group create $g"
  gs group show "$g" --cert > "$GS_WORK/group-mc$n.pem"
  gs member add "$g" dle@bench.example --cert "$EXPLODER_CERT" --role exploder >/dev/null || die "member add dle"
  if [ -f "$GS_CERTS/admin@bench.example.pem" ]; then
    gs member add "$g" admin@bench.example --cert "$GS_CERTS/admin@bench.example.pem" --role admin >/dev/null
  else
    gs member add "$g" admin@bench.example --issue-cert --out "$GS_CERTS" --role admin >/dev/null
  fi || die "member add admin"
  /usr/bin/python3 - "$n" "$g" "$URL_BASE" "$CA_CERT" "$GS_CERTS/admin@bench.example.pem" \
    "$GS_CERTS/admin@bench.example.key" <<'PY' || die "adding $n members to $g"
import datetime, http.client, json, ssl, sys, urllib.parse
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
n, group, url, cafile, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench member CA")])
member_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
now = datetime.datetime.utcnow()
ctx = ssl.create_default_context(cafile=cafile)
ctx.load_cert_chain(cert, key)
u = urllib.parse.urlparse(url)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
for i in range(1, n + 1):
    email = "member%d@members.bench.example" % i
    c = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)]))
         .issuer_name(ca_name).public_key(member_key.public_key()).serial_number(i)
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
         .sign(ca_key, hashes.SHA256()))
    body = json.dumps({"role": "member", "certificate": c.public_bytes(serialization.Encoding.PEM).decode()})
    conn.request("PUT", "/v1/groups/%s/members/%s" % (group, email), body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status not in (200, 201):
        sys.exit("PUT member %d: HTTP %d" % (i, r.status))
PY
}

exploder_bench() {
  local out=$1 xw=$work/exploder
  mkdir -p "$xw"
  # The server may have been stopped by part 1 (or never started).
  if [ -z "${SERVER_PID:-}" ] || ! kill -0 "$SERVER_PID" 2>/dev/null; then
    gs_server_start
  fi
  local group=bench-rsa2048
  [ -f "$work/group-rsa2048.pem" ] || die "part 2 needs the rsa2048 group"

  # The message: 100 KB (102400 bytes) of text, encrypted to the group.
  /usr/bin/python3 -c '
import base64, os, sys
body = base64.encodebytes(os.urandom(76000)).decode()[:102400 - 60]
sys.stdout.write("Content-Type: text/plain; charset=us-ascii\n\n" + body)
' > "$xw/plain.txt"
  local listaddr
  echo "mode,members,spool_s,deliver_s,total_s,delivered,rewrap_calls,message_bytes,copy_bytes,runner_cpu_s" \
    > "$out/exploder.csv"
  for mode in group-secret forward member-certs; do
    for n in "${LISTS[@]}"; do
      local d=$xw/$mode-$n gname=$group gcert=$work/group-rsa2048.pem
      mkdir -p "$d"
      listaddr="list$n-${mode}@bench.example"
      if [ "$mode" = member-certs ]; then
        log "exploder member-certs N=$n: adding $n members with certificates to the group server"
        mc_group "$n"
        gname=bench-mc$n
        gcert=$GS_WORK/group-mc$n.pem
      fi
      openssl cms -encrypt -aes-256-cbc -recip "$gcert" -keyopt rsa_padding_mode:oaep \
        -from sender@bench.example -to "$listaddr" -subject "bench $n" \
        -in "$xw/plain.txt" -out "$d/msg.eml" 2>/dev/null || die "openssl cms -encrypt"
      # A fresh SMTP sink per point.
      /usr/bin/python3 "$XP_SMTPD" --dir "$d/mail" --port 0 --port-file "$d/smtpd.port" \
        2>>"$d/smtpd.log" &
      local spid=$!
      pids+=("$spid")
      local i
      for i in $(seq 1 100); do [ -s "$d/smtpd.port" ] && break; sleep 0.1; done
      [ -s "$d/smtpd.port" ] || die "smtpd.py did not start: $(tail -3 "$d/smtpd.log")"
      cat > "$d/exploder.conf" <<CONF
[spool]
path = $d/spool
[delivery]
relay = smtp://127.0.0.1:$(cat "$d/smtpd.port")
batch_size = 100
retry_min = 1
retry_max = 2
poll_interval = 1
relay_timeout = 120
starttls = no
[tls]
cert = $EXPLODER_CERT
key = $EXPLODER_KEY
ca = $CA_CERT
CONF
      local X=("$BIN/exploder" -c "$d/exploder.conf")
      "${X[@]}" list create "$listaddr" --group-server "$URL_BASE" --group "$gname" --mode "$mode" \
        >/dev/null || die "exploder list create ($mode)"
      seq 1 "$n" | sed 's/.*/member&@members.bench.example/' | "${X[@]}" list add "$listaddr" - >/dev/null ||
        die "exploder list add ($n members)"

      local calls0 t0 t1 t2 rc
      calls0=$(gs_requests_served rewrap)
      t0=$(date +%s.%N)
      "${X[@]}" deliver --list "$listaddr" --sender sender@bench.example < "$d/msg.eml" 2>>"$d/deliver.log" ||
        die "exploder deliver exited $?"
      t1=$(date +%s.%N)
      local cpu0 cpu1
      times > "$d/times0"
      cpu0=$(children_cpu "$d/times0")
      for i in $(seq 1 30); do
        rc=0
        timeout 1200 "${X[@]}" run --once 2>>"$d/run.log" || rc=$?
        [ "$rc" = 0 ] && break
        [ "$rc" = 75 ] || die "exploder run --once exited $rc: $(tail -3 "$d/run.log")"
        sleep 1
      done
      t2=$(date +%s.%N)
      times > "$d/times1"
      cpu1=$(children_cpu "$d/times1")
      local delivered calls copy_bytes
      delivered=$(/usr/bin/python3 "$XP_SMTPD" --dir "$d/mail" --list-accepted | sort -u | wc -l)
      calls=$(( $(gs_requests_served rewrap) - calls0 ))
      # the mean size of what one mailbox stores (CRLF turned into LF by smtpd.py)
      copy_bytes=$(/usr/bin/python3 "$XP_SMTPD" --dir "$d/mail" --list-messages | xargs stat -c %s |
        awk '{s += $1; c++} END {printf "%d", c ? s / c : 0}')
      kill "$spid" 2>/dev/null || true
      wait "$spid" 2>/dev/null || true
      [ "$delivered" = "$n" ] || log "WARNING: $mode list of $n: only $delivered delivered"
      awk -v m="$mode" -v n="$n" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v dl="$delivered" -v c="$calls" \
        -v sz="$(stat -c %s "$d/msg.eml")" -v cb="$copy_bytes" -v cpu="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {print b - a}')" \
        'BEGIN {printf "%s,%d,%.3f,%.3f,%.3f,%d,%d,%d,%d,%.3f\n", m, n, t1 - t0, t2 - t1, t2 - t0, dl, c, sz, cb, cpu}' \
        >> "$out/exploder.csv"
      log "exploder $mode N=$n: $(tail -1 "$out/exploder.csv")"
      rm -rf "$d/mail" "$d/spool"
    done
  done

  # Size: one message to the group versus the same message to N member
  # certificates (what PGP-style encryption to every member sends).
  log "sizes: openssl cms -encrypt to N certificates"
  local maxn=0 n
  for n in "${PGP_N[@]}"; do [ "$n" -gt "$maxn" ] && maxn=$n; done
  mkdir -p "$xw/certs"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$xw/certs/m.key" 2>/dev/null
  # One RSA-2048 key, N certificates (distinct names and serials): the size
  # of a KeyTransRecipientInfo depends on the key size and the issuer name,
  # not on the key itself, and N key generations would take minutes.
  for i in $(seq 1 "$maxn"); do
    openssl req -new -x509 -key "$xw/certs/m.key" -subj "/CN=member$i@members.bench.example" \
      -set_serial "$i" -days 2 -out "$xw/certs/m$i.pem" 2>/dev/null || die "member cert $i"
  done
  openssl cms -encrypt -aes-256-cbc -recip "$work/group-rsa2048.pem" -keyopt rsa_padding_mode:oaep \
    -in "$xw/plain.txt" -out "$xw/to-group.eml" 2>/dev/null || die "cms to group"
  local gsz
  gsz=$(stat -c %s "$xw/to-group.eml")
  echo "n,group_bytes,per_member_bytes" > "$out/sizes.csv"
  for n in "${PGP_N[@]}"; do
    local args=()
    for i in $(seq 1 "$n"); do args+=(-recip "$xw/certs/m$i.pem" -keyopt rsa_padding_mode:oaep); done
    openssl cms -encrypt -aes-256-cbc "${args[@]}" -in "$xw/plain.txt" -out "$xw/to-$n.eml" 2>/dev/null ||
      die "cms to $n recipients"
    echo "$n,$gsz,$(stat -c %s "$xw/to-$n.eml")" >> "$out/sizes.csv"
  done
}
