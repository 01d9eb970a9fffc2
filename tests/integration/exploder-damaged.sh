#!/usr/bin/env bash
# Damaged spool files: a message file cut short (a crash or a full disk
# mid-write, a restored backup) or changed on disk is never sent and never
# stops the runner. Each file's size and SHA-256 are recorded with the row
# naming it; a file that no longer matches (the received .in before it is
# prepared, the prepared .out before it is sent) is moved to
# SPOOL/damaged/ with one log line, its recipients fail and the sender
# gets a bounce saying so; the other messages go out as usual.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup damaged

xp_cert group eng@lists.example.org
xp_conf "smtp://127.0.0.1:1" "starttls = no"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L m1@example.net m2@example.net >/dev/null
for s in cut changed sound; do
  xp_encrypt "$W/group.pem" "$W/$s.eml" "$s"
  xp deliver --list $L --sender "$s@example.org" <"$W/$s.eml" || fail "deliver $s refused"
done
file_of() { sqlite3 "$W/spool/exploder.db" "SELECT $2 FROM messages WHERE sender='$1@example.org'"; }

# 1. the received file of "cut" loses its second half before the runner prepares it
in_cut=$W/spool/msg/$(file_of cut file)
truncate -s $(($(stat -c %s "$in_cut") / 2)) "$in_cut"
# the relay is down: the others are prepared, nothing is sent
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "run with the relay down: want 75, got $rc: $(tail -3 "$W/run.log")"
grep -q "spool file damaged, set aside and not sent\" id=[0-9]* file=\"$(basename "$in_cut")\" .*reason=\"[0-9]* bytes where [0-9]* were written\"" \
  "$W/run.log" || fail "no log line for the cut file: $(grep -i damaged "$W/run.log")"
[ -f "$W/spool/damaged/$(basename "$in_cut")" ] || fail "the cut file was not set aside: $(ls -R "$W/spool")"

# 2. the prepared file of "changed" gets one byte changed, its size kept
out_changed=$W/spool/msg/$(file_of changed out_file)
[ -f "$out_changed" ] || fail "\"changed\" was not prepared"
printf 'X' | dd of="$out_changed" bs=1 seek=200 conv=notrunc status=none

xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no"
xp_drain
grep -q "spool file damaged, set aside and not sent\" id=[0-9]* file=\"$(basename "$out_changed")\" .*SHA-256 differs" \
  "$W/run.log" || fail "no log line for the changed file: $(grep -i damaged "$W/run.log")"
[ -f "$W/spool/damaged/$(basename "$out_changed")" ] || fail "the changed file was not set aside"
# Every file of the spool is in exploder(1)'s Files (damaged/ was not)
. "$GS_SRC/tests/lib/man-files.sh"
unnamed=$(man_files_unnamed "$GS_SRC" exploder.1 "$W/spool")
[ -z "$unnamed" ] || fail "files in the spool exploder(1) Files does not name: $unnamed ($(ls -a "$W/spool"))"

# only "sound" reached the members, whole; "cut" and "changed" got bounces
for f in "$W"/smtp/new/*; do
  grep -q '^Subject: Undelivered mail' "$f" && continue
  grep -q '^Subject: sound' "$f" || fail "a damaged message was sent: $(head -20 "$f")"
  openssl cms -cmsout -in "$f" -noout 2>/dev/null || fail "the sent message is not whole CMS: $f"
done
[ "$(grep -c ' eng-owner@lists.example.org ' "$W/smtp/envelope.log")" = 2 ] ||
  fail "want one message (sound) to 2 members: $(cat "$W/smtp/envelope.log")"
for s in cut changed; do
  grep -q "^[^ ]* <> $s@example.org\$" "$W/smtp/envelope.log" || fail "no bounce to $s@example.org"
done
grep -l '^Subject: Undelivered mail' "$W"/smtp/new/* | xargs grep -h '^Reason:' | sort -u >"$W/reasons"
[ "$(cat "$W/reasons")" = "Reason: the list server's stored copy of it was damaged before it could be sent; send it again." ] ||
  fail "bounce reason: $(cat "$W/reasons")"
xp_spool_empty
[ "$(sqlite3 "$W/spool/exploder.db" 'SELECT count(*) FROM files')" = 0 ] || fail "file records left behind"
echo "exploder damaged spool files: ok"
