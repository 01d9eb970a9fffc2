#!/usr/bin/env bash
# server-slow-reader.sh BIN SRC: memory per connection stays bounded when a
# client without a certificate pipelines requests and never reads the
# answers (slow-reader.py): the server closes it once it is more than one
# whole request ahead, and keeps serving members.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
out=$(/usr/bin/python3 "$SRC/tests/adversarial/slow-reader.py" "$port" "$certs/tca.pem" "$srv_pid" 128) ||
  fail "a client that never reads its answers: $out"
ok "$out"
kill -0 "$srv_pid" || fail "the server died"
expect_status 200 "" "unwrap afterwards" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
stop_server
