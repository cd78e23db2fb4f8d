#!/usr/bin/env bash
# Set up and run the whole test suite (the README's second command; CI runs it
# through .ci/run as root on a clean Debian 12 with no stdin). Installs what the
# tests use from Debian (only what is missing) and PyPI, then runs ruff,
# mypy --strict, alembic check and pytest. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -x -k failover
# Runnable from any directory. Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# Each phase says its name, its number and the time since the start, so a CI
# log shows where a run is and where its time went.
PHASES=$(grep -c '^step ' "${BASH_SOURCE[0]}")
phase=0
started=$SECONDS
step() {
  phase=$((phase + 1))
  printf '\n== [%d/%d] %s (at %ds)\n' "$phase" "$PHASES" "$*" "$((SECONDS - started))"
}

# --- Debian packages ----------------------------------------------------------

# The real servers and clients the tests drive. Server packages do not start a
# service here (no systemd in these machines); the tests start private ones.
APT_PACKAGES=(
  postgresql
  nginx-light libnginx-mod-mail
  postfix
  dovecot-imapd  # tests/test_import_imap.py: the old server import-imap reads
  isync offlineimap fetchmail sieve-connect
  openssl
  prometheus  # promtool: tests/test_contrib.py checks contrib/prometheus's rules
  fail2ban    # fail2ban-regex: tests/test_maillog.py checks contrib/fail2ban's filter
  roundcube-core roundcube-sqlite3 php-cli  # tests/test_webmail.py: Roundcube under php -S
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Another apt/dpkg (unattended-upgrades, a provisioning job) may hold the lock:
# apt waits for it up to DPkg::Lock::Timeout, and we retry on top of that,
# because `apt-get update` fails at once on a held lists lock.
apt_retry() {
  local attempt
  for attempt in $(seq 1 20); do
    if as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=60 -y -q "$@" </dev/null; then
      return 0
    fi
    echo "apt-get $1 failed (attempt $attempt of 20); is the dpkg lock held? retrying in 15s" >&2
    sleep 15
  done
  echo "apt-get $* kept failing; giving up" >&2
  return 1
}

apt_install_missing() {
  local missing=() pkg
  for pkg in "$@"; do
    # "install ok installed": dpkg -s alone also succeeds for removed-but-configured packages.
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "Debian packages: all present"
    return 0
  fi
  echo "Debian packages to install: ${missing[*]}"
  # Postfix asks how to configure itself; the tests write their own main.cf.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  # Roundcube's package would set up a database of its own; the test writes its own.
  echo "roundcube-core roundcube/dbconfig-install boolean false" | as_root debconf-set-selections
  apt_retry update
  apt_retry install --no-install-recommends "${missing[@]}"
}

step "apt (Debian packages)"
apt_install_missing "${APT_PACKAGES[@]}"

# --- Python -------------------------------------------------------------------

step "virtualenv and pip install -e '.[test]'"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "$PY is $("$PY" -V 2>&1); peerd needs Python 3.11 or newer (set PYTHON=)" >&2; exit 1; }
  "$PY" -m venv .venv
fi
.venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo ".venv has $(.venv/bin/python -V 2>&1); remove .venv and rerun with Python 3.11" >&2; exit 1; }
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# Byte-compile the project once: the tests start hundreds of daemons, LMTP
# workers and peerctl processes, and where PYTHONDONTWRITEBYTECODE is set each
# of them would compile ~200 modules from source again (about 1.7 s of CPU a
# process on the 2-core CI machine). Python still checks each .pyc against its
# source, so a stale one is never used.
.venv/bin/python -m compileall -q -j 0 peerd engine ownership migrations tests bench
# pytest rewrites the asserts of each test module it imports and caches the
# result beside the module's .pyc, except where PYTHONDONTWRITEBYTECODE is set
# (as in CI): there every xdist worker rewrote all ~230 modules again, 5 s of
# CPU each. One collection with the cache on fills it; it runs beside the
# static checks (mypy uses one core), and the pytest step waits for it.
PYTHONDONTWRITEBYTECODE='' .venv/bin/pytest -q --collect-only -n 0 >/dev/null 2>&1 &
rewrite_cache=$!

# --- static checks ------------------------------------------------------------

step "ruff check and ruff format --check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

step "mypy --strict (the code, the tests and the benchmarks)"
.venv/bin/mypy --strict peerd ownership engine migrations tests bench

step "alembic check (models and migrations agree)"
if [ -f migrations/alembic.ini ]; then
  # `alembic check` compares the models with a database at head: migrate a
  # throwaway SQLite database first, then check it.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  PEERD_DATABASE_URL="sqlite:///$tmp/check.db" .venv/bin/alembic -c migrations/alembic.ini upgrade head
  PEERD_DATABASE_URL="sqlite:///$tmp/check.db" .venv/bin/alembic -c migrations/alembic.ini check
  rm -rf "$tmp"
  trap - EXIT
else
  echo "migrations/alembic.ini does not exist yet: skipping alembic check"
fi

# --- tests --------------------------------------------------------------------

step "pytest $*"
wait "$rewrite_cache" || true  # a collection error shows in this step
exec .venv/bin/pytest "$@"
