# bench/lib-exploder.sh: part 2 of issue 9, the exploder. Sourced by
# bench/run after lib-groupsrv.sh (needs BIN, GS_WORK, URL_BASE, CA_CERT,
# EXPLODER_CERT, EXPLODER_KEY, work, LISTS, PGP_N, log, die, pids,
# gs_server_start, gs_requests_served).
#
# exploder_bench OUT
#   For each list size N in LISTS and mode in group-secret, forward: one
#   100 KB message (encrypted with `openssl cms` to the group certificate,
#   as a stock sender would) through `exploder deliver` and
#   `exploder run --once` to tests/lib/smtpd.py on loopback. Writes
#   OUT/exploder.csv: mode,members,spool_s,deliver_s,total_s,delivered,
#   rewrap_calls,message_bytes. Then OUT/sizes.csv: what the sender sends to
#   the group, against `openssl cms -encrypt` to N member certificates.

XP_SMTPD=$top/tests/lib/smtpd.py

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
  echo "mode,members,spool_s,deliver_s,total_s,delivered,rewrap_calls,message_bytes" > "$out/exploder.csv"
  for mode in group-secret forward; do
    for n in "${LISTS[@]}"; do
      local d=$xw/$mode-$n
      mkdir -p "$d"
      listaddr="list$n-${mode}@bench.example"
      openssl cms -encrypt -aes-256-cbc -recip "$work/group-rsa2048.pem" -keyopt rsa_padding_mode:oaep \
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
      "${X[@]}" list create "$listaddr" --group-server "$URL_BASE" --group "$group" --mode "$mode" \
        >/dev/null || die "exploder list create ($mode)"
      seq 1 "$n" | sed 's/.*/member&@members.bench.example/' | "${X[@]}" list add "$listaddr" - >/dev/null ||
        die "exploder list add ($n members)"

      local calls0 t0 t1 t2 rc
      calls0=$(gs_requests_served rewrap)
      t0=$(date +%s.%N)
      "${X[@]}" deliver --list "$listaddr" --sender sender@bench.example < "$d/msg.eml" 2>>"$d/deliver.log" ||
        die "exploder deliver exited $?"
      t1=$(date +%s.%N)
      for i in $(seq 1 30); do
        rc=0
        timeout 1200 "${X[@]}" run --once 2>>"$d/run.log" || rc=$?
        [ "$rc" = 0 ] && break
        [ "$rc" = 75 ] || die "exploder run --once exited $rc: $(tail -3 "$d/run.log")"
        sleep 1
      done
      t2=$(date +%s.%N)
      local delivered calls
      delivered=$(/usr/bin/python3 "$XP_SMTPD" --dir "$d/mail" --list-accepted | sort -u | wc -l)
      calls=$(( $(gs_requests_served rewrap) - calls0 ))
      kill "$spid" 2>/dev/null || true
      wait "$spid" 2>/dev/null || true
      [ "$delivered" = "$n" ] || log "WARNING: $mode list of $n: only $delivered delivered"
      awk -v m="$mode" -v n="$n" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v dl="$delivered" -v c="$calls" \
        -v sz="$(stat -c %s "$d/msg.eml")" \
        'BEGIN {printf "%s,%d,%.3f,%.3f,%.3f,%d,%d,%d\n", m, n, t1 - t0, t2 - t1, t2 - t0, dl, c, sz}' \
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
