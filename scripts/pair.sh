#!/usr/bin/env bash
# Set up and start a local pair: alpha and beta on loopback, SQLite, data in var/.
#   bash scripts/pair.sh          start both nodes (in the background), create demo accounts
#   bash scripts/pair.sh stop     stop both nodes (by the pids recorded in var/)
#   bash scripts/pair.sh status   show both nodes' status
# Needs Python 3.11 (python3) on a Debian 12 machine; installs into .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}

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

case "${1:-start}" in
  stop) stop_node alpha; stop_node beta; exit 0 ;;
  status)
    for n in alpha beta; do .venv/bin/peerctl -c "configs/$n.toml" status || true; echo; done
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/peerd ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
fi
mkdir -p var
for n in alpha beta; do
  stop_node "$n" >/dev/null
  .venv/bin/peerd run -c "configs/$n.toml" >"var/$n.log" 2>&1 &
  echo $! > "var/$n.pid"
done
for n in alpha beta; do
  port=$([ $n = alpha ] && echo 18080 || echo 28080)
  for _ in $(seq 1 100); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/v1/health', timeout=1)" 2>/dev/null; then break; fi
    if ! kill -0 "$(cat var/$n.pid)" 2>/dev/null; then echo "$n failed to start:"; tail -20 "var/$n.log"; exit 1; fi
    sleep 0.2
  done
done
# Demo accounts: alice lives on alpha, bob on beta (password "secret").
echo secret | .venv/bin/peerctl -c configs/alpha.toml account add alice --password-stdin >/dev/null 2>&1 || true
echo secret | .venv/bin/peerctl -c configs/beta.toml account add bob --password-stdin >/dev/null 2>&1 || true
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
