# postfix.sh: a private Postfix instance for a test (sourced; the caller
# has fail and ok, runs as root, and has Postfix installed). Used by
# exploder-smtputf8.sh and package-postfix.sh, which set one up alike.
#
# The instance has its own configuration, queue and data directories under
# PFX, listens on one loopback port only, and runs none of its services
# chrooted (the queue directory is not set up as a chroot). pf_init writes
# the part of main.cf and master.cf the two tests share; each appends its
# own (smtputf8_enable, where mail goes, its extra services), then
# pf_start starts it and pf_stop (safe to call twice, or before a start)
# stops it.

# pf_init PFX PORT: the directories, main.cf's common settings and
# master.cf's SMTP listener on 127.0.0.1:PORT with Debian's default
# services that both tests need.
pf_init() {
  PFX=$1
  mkdir -p "$PFX/etc" "$PFX/queue" "$PFX/data"
  chown postfix "$PFX/data"
  pf_started=
  cat >"$PFX/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PFX/queue
data_directory = $PFX/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.example.org
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = $PFX/maillog
maillog_file_prefixes = $PFX
EOF
  {
    echo "127.0.0.1:$2 inet n - n - - smtpd"
    local s
    for s in "pickup unix n - n 60 1 pickup" "cleanup unix n - n - 0 cleanup" "qmgr unix n - n 300 1 qmgr" \
      "rewrite unix - - n - - trivial-rewrite" "bounce unix - - n - 0 bounce" "defer unix - - n - 0 bounce" \
      "trace unix - - n - 0 bounce" "verify unix - - n - 1 verify" "flush unix n - n 1000? 0 flush" \
      "proxymap unix - - n - - proxymap" "error unix - - n - - error" "retry unix - - n - - error" \
      "discard unix - - n - - discard" "anvil unix - - n - 1 anvil" "scache unix - - n - 1 scache" \
      "showq unix n - n - - showq" "postlog unix-dgram n - n - 1 postlogd"; do
      echo "$s"
    done
  } >"$PFX/etc/master.cf"
}

# pf_start LOG: starts the instance (postfix's output in LOG).
pf_start() {
  postfix -c "$PFX/etc" start >"$1" 2>&1 || fail "postfix start: $(cat "$1")"
  pf_started=1
}

pf_stop() {
  [ -n "${pf_started:-}" ] && postfix -c "$PFX/etc" stop >/dev/null 2>&1
  pf_started=
}
