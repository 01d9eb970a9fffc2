#!/usr/bin/env bash
# server-strict-http.sh BIN SRC: strict HTTP framing against a real server.
#   - two Content-Length headers (equal or not) are refused (400) and the
#     connection closed: RFC 7230 3.3.3, a request-smuggling precondition
#     behind a proxy that would read the body by the other one;
#   - a body far over the cap gets its 413 every time, not a reset: after
#     the 413 the server sends its FIN and reads and drops what the client
#     still sends (a lingering close) before it closes the socket (curl
#     uploads of 200 KB lost about 1 in 40 answers without it).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"

raw() { # raw REQUEST-FILE: sends it over TLS as alice, prints the answer's head
  /usr/bin/python3 - "$port" "$certs/tca.pem" "$certs/alice@example.org.pem" "$certs/alice@example.org.key" "$1" <<'PY'
import socket, ssl, sys
port, ca, cert, key, req = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="x") as s:
    s.sendall(open(req, "rb").read())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
print(data.decode(errors="replace"))
PY
}
body=$(cat "$work/req-tls.json")
for second in "${#body}" 5; do
  printf 'POST /v1/groups/eng/unwrap HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\nContent-Length: %s\r\n\r\n%s' \
    "${#body}" "$second" "$body" > "$work/dup.req"
  raw "$work/dup.req" > "$work/dup.out"
  head -1 "$work/dup.out" | grep -q '^HTTP/1.1 400' || fail "two Content-Length headers (${#body}, $second): $(head -c 300 "$work/dup.out")"
  grep -q '"code":"bad_request"' "$work/dup.out" || fail "no JSON bad_request: $(head -c 300 "$work/dup.out")"
  grep -qi '^connection: close' "$work/dup.out" || fail "the connection is kept after a smuggling attempt"
  grep -q '"key"' "$work/dup.out" && fail "a key was answered to a request with two Content-Length headers"
done
ok "two Content-Length headers: 400 and the connection closed"

/usr/bin/python3 -c 'print("{\"recipient_info\":\"" + "A"*200000 + "\"}")' > "$work/big.json"
codes=$(for i in $(seq 1 "${EARLY413_N:-80}"); do
  c alice -o /dev/null -w '%{http_code}\n' --data-binary @"$work/big.json" "$url" 2>/dev/null || echo "curl-exit-$?"
done | sort | uniq -c | tr '\n' ' ')
[ "$codes" = "     ${EARLY413_N:-80} 413 " ] || fail "bodies of 200 KB (cap 64 KiB): $codes"
ok "${EARLY413_N:-80} bodies of 200 KB: every one answered 413"
expect_status 200 "" "unwrap afterwards" -- c alice --data-binary @"$work/req-tls.json" "$url"
stop_server
