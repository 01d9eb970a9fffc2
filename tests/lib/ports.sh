# tests/lib/ports.sh: loopback ports for the servers a test starts (which
# bind them later, from their configuration). Sourced.
#
#   take_port VAR...   sets each VAR (a name, or an array element such as
#                      CL_PORTS[2]) to a port of 127.0.0.1 that was free a
#                      moment ago and that no earlier take_port of this
#                      shell handed out
#
# Port 0 makes the kernel choose a free port; a picker that binds it, reads
# the number and closes the socket leaves that port free again, and the
# next pick may hand it out once more (the kernel picks at random among
# half the ephemeral range): two servers of one test then get the same
# port, and the second cannot listen. Here the sockets of one call stay
# bound until all of its ports are chosen, and every port handed out is
# remembered in GS_PORTS_TAKEN and skipped later.
GS_PORTS_TAKEN=${GS_PORTS_TAKEN:-}

take_port() { # VAR...
  # (locals named _tp_*: a caller's VAR of the same name would be set here)
  local _tp_out _tp_v _tp_i=0
  local -a _tp_got
  _tp_out=$(/usr/bin/python3 - "$#" $GS_PORTS_TAKEN <<'PY'
import socket, sys
want, taken = int(sys.argv[1]), set(sys.argv[2:])
held, chosen = [], []
while len(chosen) < want:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # fails (EADDRINUSE) when no port is left
    held.append(s)            # bound until the end: not chosen twice here
    port = str(s.getsockname()[1])
    if port not in taken:
        chosen.append(port)
print(" ".join(chosen))
PY
  ) || { echo "take_port: no free port: $_tp_out" >&2; return 1; }
  read -r -a _tp_got <<<"$_tp_out"
  [ "${#_tp_got[@]}" = "$#" ] || { echo "take_port: wanted $# ports, got: $_tp_out" >&2; return 1; }
  for _tp_v in "$@"; do
    printf -v "$_tp_v" %s "${_tp_got[$_tp_i]}"
    _tp_i=$((_tp_i + 1))
  done
  GS_PORTS_TAKEN="$GS_PORTS_TAKEN $_tp_out"
}
