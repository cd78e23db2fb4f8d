#!/usr/bin/env bash
# Set up and run the whole test suite (the README's second command; CI runs it
# through .ci/run). Installs what the tests use from Debian and PyPI, then runs
# ruff, mypy --strict, alembic check and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  for attempt in $(seq 1 30); do
    if $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
      return 0
    fi
    echo "apt-get failed (attempt $attempt); the dpkg lock may be held, retrying" >&2
    sleep 10
  done
  return 1
}

apt_install postgresql nginx-light libnginx-mod-mail postfix isync offlineimap fetchmail openssl

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy peerd ownership engine migrations
echo "== alembic check"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PEERD_DATABASE_URL="sqlite:///$tmp/check.db" .venv/bin/alembic -c migrations/alembic.ini upgrade head
PEERD_DATABASE_URL="sqlite:///$tmp/check.db" .venv/bin/alembic -c migrations/alembic.ini check
echo "== pytest"
exec .venv/bin/pytest -q "$@"
