# tests/lib/has-line.sh: searching a command's output under set -o pipefail.
# Sourced.
#
#   CMD | has_line GREP-ARGS...   true when a line of CMD's output matches
#                                 (grep -q GREP-ARGS); all of it is read
#
# Not `CMD | grep -q`: grep -q exits at its first match, and a CMD still
# writing (more than one write's worth: tail of a growing server.log, grep
# of an audit log, pkcs11-tool --list-objects of a full token, each past
# 4 KB) then dies of SIGPIPE, status 141, which pipefail makes the
# pipeline's: a check whose line is there fails, and a negated one
# (`&& fail`) passes with the line there. How often depends on timing and
# load: here grep | grep -q failed 4 times in 50 on 6 KB, every time on
# 100 KB. (openssl ignores SIGPIPE: its output is safe to grep -q.) The
# rest of the output is read after grep's answer, so the writer ends as it
# would alone, and a writer's own failure still fails the pipeline.
has_line() {
  local rc=0
  grep -q "$@" || rc=$?
  cat > /dev/null
  return "$rc"
}
