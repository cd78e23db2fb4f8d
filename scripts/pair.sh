#!/usr/bin/env bash
# Set up and start a local pair: alpha and beta on loopback, SQLite, data in var/.
#   bash scripts/pair.sh                 start both nodes (in the background), create demo accounts
#   bash scripts/pair.sh start [NODE]    the same, or only NODE (alpha or beta)
#   bash scripts/pair.sh stop [NODE]     stop both nodes, or only NODE (by the pids recorded in var/)
#   bash scripts/pair.sh status          show both nodes' status
# If a node does not come up, the nodes this run started are stopped again and
# its log's end is shown; a demo account that cannot be created is shown too.
# Needs Python 3.11 (python3) on a Debian 12 machine; installs into .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

usage() { echo "usage: $0 [start|stop|status] [alpha|beta]" >&2; exit 2; }

stop_node() {
  local pidfile="var/$1.pid"
  if [ -f "$pidfile" ]; then
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
    echo "$1 stopped"
  fi
}

# The control API's address, read from the node's config.
api_of() {
  "$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["listen"]["http"])' \
    "configs/$1.toml"
}

command=${1:-start}
case "${2:-}" in
  "") nodes="alpha beta" ;;
  alpha|beta) nodes=$2 ;;
  *) usage ;;
esac

case "$command" in
  stop) for n in $nodes; do stop_node "$n"; done; exit 0 ;;
  status)
    .venv/bin/peerctl -c configs/alpha.toml status || true
    exit 0 ;;
  start) ;;
  *) usage ;;
esac

if [ ! -x .venv/bin/peerd ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
fi
mkdir -p var
started=""
give_up() {  # $1 failed: show why, stop what this run started, exit 1
  echo "$1 failed to start (var/$1.log):" >&2
  tail -20 "var/$1.log" >&2
  for s in $started; do stop_node "$s" >&2; done
  exit 1
}
for n in $nodes; do
  stop_node "$n" >/dev/null
  .venv/bin/peerd run -c "configs/$n.toml" >"var/$n.log" 2>&1 &
  echo $! > "var/$n.pid"
  started="$started $n"
done
for n in $nodes; do
  api=$(api_of "$n")
  up=""
  for _ in $(seq 1 150); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('http://$api/v1/health', timeout=1)" 2>/dev/null; then
      up=yes; break
    fi
    kill -0 "$(cat "var/$n.pid")" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$up" ] || give_up "$n"
done

# Demo accounts: alice lives on alpha, bob on beta (password "secret").
failed=""
for n in $nodes; do
  user=$([ "$n" = alpha ] && echo alice || echo bob)
  if ! out=$(echo secret | .venv/bin/peerctl -c "configs/$n.toml" account add "$user" --password-stdin 2>&1); then
    case "$out" in
      *"already exists"*|*"exists"*) ;;  # made by an earlier run
      *) echo "could not create the demo account $user on $n: $out" >&2; failed=yes ;;
    esac
  fi
done
if [ "$nodes" != "alpha beta" ]; then
  echo "$nodes is running (log in var/$nodes.log; stop it with: bash scripts/pair.sh stop $nodes)."
  [ -z "$failed" ] || exit 1
  exit 0
fi
cat <<TXT
The pair is running (logs in var/alpha.log and var/beta.log; stop with: bash scripts/pair.sh stop).

  node   LMTP             IMAP             POP3             control API
  alpha  127.0.0.1:10024  127.0.0.1:10143  127.0.0.1:10110  http://127.0.0.1:18080
  beta   127.0.0.1:20024  127.0.0.1:20143  127.0.0.1:20110  http://127.0.0.1:28080

Accounts: alice (owned by alpha), bob (owned by beta); password "secret".
Deliver a message to each over LMTP:
  .venv/bin/python -c "import smtplib; l=smtplib.LMTP('127.0.0.1', 10024); l.sendmail('me@example.test', ['alice@example.test'], b'Subject: hello alice\r\n\r\nhi\r\n'); l.quit()"
  .venv/bin/python -c "import smtplib; l=smtplib.LMTP('127.0.0.1', 20024); l.sendmail('me@example.test', ['bob@example.test'], b'Subject: hello bob\r\n\r\nhi\r\n'); l.quit()"
Each message is on both nodes within a second (rolling replication):
  .venv/bin/peerctl -c configs/alpha.toml mailbox show alice INBOX
  .venv/bin/peerctl -c configs/beta.toml mailbox show alice INBOX
Read it with any IMAP client (plain IMAP on loopback, user alice, password secret), e.g.:
  .venv/bin/python -c "import imaplib; c=imaplib.IMAP4('127.0.0.1', 10143); c.login('alice','secret'); c.select(); print(c.fetch('1:*', '(ENVELOPE)'))"
  mutt -f imap://alice@127.0.0.1:10143/INBOX      (or mbsync/offlineimap/Thunderbird at 127.0.0.1:10143)
A login for bob at alpha gets a referral to beta (127.0.0.1:20143), his owner.
Replication and ownership: .venv/bin/peerctl -c configs/alpha.toml status; see docs/failover.md.
TXT
[ -z "$failed" ] || exit 1
