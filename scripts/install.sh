#!/usr/bin/env bash
# Install or upgrade one peerd node on this host from this checkout (as root):
#   sudo bash scripts/install.sh --name alpha [--sync-password SECRET]
# Re-run it from a newer checkout to upgrade: the venv is replaced, the config
# is kept. docs/install.md says what it does and why; in short:
#   - builds the wheel (only "peerd" goes into site-packages) and installs it
#     with its dependencies into a venv at /opt/peerd (peerd, peerctl linked
#     into /usr/local/bin);
#   - creates the system user and group "peerd";
#   - /etc/peerd (root:peerd 0750) with peerd.toml (root:peerd 0640) written
#     from configs/peerd.example.toml with fresh secrets, unless it exists;
#     /etc/peerd/tls for certificates; /var/lib/peerd (peerd:peerd 0750);
#   - the systemd unit (configs/peerd.service) and the docs in /usr/share/doc/peerd.
# It does not start the node: edit the config first (the partner, listen
# addresses), then `systemctl enable --now peerd`.
#
# Every path can be moved (the tests install into a temp dir):
#   --prefix DIR (/opt/peerd)  --config-dir DIR (/etc/peerd)  --state-dir DIR (/var/lib/peerd)
#   --unit-dir DIR (/etc/systemd/system)  --doc-dir DIR (/usr/share/doc/peerd)
#   --bin-dir DIR (/usr/local/bin)  --user NAME (peerd)  --wheel FILE (default: build one)
#   --hostname FQDN (hostname -f)  PYTHON=/usr/bin/python3 (3.11 or newer)
set -euo pipefail
SRC=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)

PREFIX=/opt/peerd
CONFIG_DIR=/etc/peerd
STATE_DIR=/var/lib/peerd
UNIT_DIR=/etc/systemd/system
DOC_DIR=/usr/share/doc/peerd
BIN_DIR=/usr/local/bin
SERVICE_USER=peerd
NAME=
FQDN=
WHEEL=
SYNC_PASSWORD=
PYTHON=${PYTHON:-/usr/bin/python3}

die() { echo "install.sh: $*" >&2; exit 2; }
say() { printf '== %s\n' "$*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --hostname) FQDN=$2; shift 2 ;;
    --sync-password) SYNC_PASSWORD=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --config-dir) CONFIG_DIR=$2; shift 2 ;;
    --state-dir) STATE_DIR=$2; shift 2 ;;
    --unit-dir) UNIT_DIR=$2; shift 2 ;;
    --doc-dir) DOC_DIR=$2; shift 2 ;;
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --user) SERVICE_USER=$2; shift 2 ;;
    --wheel) WHEEL=$(readlink -f "$2"); shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: it creates a user and writes under $PREFIX, $CONFIG_DIR and $STATE_DIR"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$PYTHON is not Python 3.11 or newer (set PYTHON=)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
  || die "$PYTHON cannot make a venv: apt-get install python3-venv"
NAME=${NAME:-$(hostname -s | tr 'A-Z_' 'a-z-')}
FQDN=${FQDN:-$(hostname -f 2>/dev/null || hostname)}
CONFIG="$CONFIG_DIR/peerd.toml"

say "venv $PREFIX"
if [ ! -x "$PREFIX/bin/python" ]; then
  "$PYTHON" -m venv "$PREFIX"
fi

if [ -z "$WHEEL" ]; then
  say "wheel from $SRC"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  "$PREFIX/bin/python" -m pip wheel -q --no-deps -w "$build" "$SRC"
  WHEEL=$(ls "$build"/peerd-*.whl)
fi

say "install $(basename "$WHEEL")"
# The dependencies, then the package itself replaced even when its version
# did not change (an upgrade from a newer checkout of the same release).
"$PREFIX/bin/python" -m pip install -q "$WHEEL"
"$PREFIX/bin/python" -m pip install -q --no-deps --force-reinstall "$WHEEL"

say "user and group $SERVICE_USER"
getent group "$SERVICE_USER" >/dev/null || groupadd --system "$SERVICE_USER"
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  useradd --system --gid "$SERVICE_USER" --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "peerd mail node" "$SERVICE_USER"
fi

say "directories"
# The config and the certificates: the daemon reads them, never writes them.
install -d -o root -g "$SERVICE_USER" -m 0750 "$CONFIG_DIR" "$CONFIG_DIR/tls"
# The spool and the SQLite database: the daemon's alone.
install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR"

if [ -e "$CONFIG" ]; then
  say "config $CONFIG exists: kept"
else
  say "config $CONFIG (node $NAME, fresh secrets)"
  args=(--name "$NAME" --hostname "$FQDN" --data-dir "$STATE_DIR")
  [ -n "$SYNC_PASSWORD" ] && args+=(--sync-password "$SYNC_PASSWORD")
  "$PREFIX/bin/python" "$SRC/scripts/make_config.py" "${args[@]}" "$CONFIG"
fi
chown root:"$SERVICE_USER" "$CONFIG"
chmod 0640 "$CONFIG"
# As the service user: the config must be readable by it, not only by root.
runuser -u "$SERVICE_USER" -- "$PREFIX/bin/peerd" check-config -c "$CONFIG"

say "systemd unit $UNIT_DIR/peerd.service"
mkdir -p "$UNIT_DIR"
unit=$(sed \
  -e "s|/opt/peerd/|$PREFIX/|g" \
  -e "s|/etc/peerd/|$CONFIG_DIR/|g" \
  -e "s|/var/lib/peerd|$STATE_DIR|g" \
  -e "s|/usr/share/doc/peerd/|$DOC_DIR/|g" \
  -e "s|^User=peerd$|User=$SERVICE_USER|" \
  -e "s|^Group=peerd$|Group=$SERVICE_USER|" \
  "$SRC/configs/peerd.service")
if [ "$STATE_DIR" != /var/lib/peerd ]; then
  # StateDirectory= names a directory under /var/lib; elsewhere we made it above.
  unit=$(printf '%s\n' "$unit" | grep -v '^StateDirectory')
fi
printf '%s\n' "$unit" > "$UNIT_DIR/peerd.service"
chmod 0644 "$UNIT_DIR/peerd.service"

say "docs $DOC_DIR"
install -d -m 0755 "$DOC_DIR"
install -m 0644 "$SRC/README.md" "$SRC"/docs/*.md "$SRC/configs/peerd.example.toml" "$DOC_DIR/"

say "commands in $BIN_DIR"
install -d -m 0755 "$BIN_DIR"
ln -sfn "$PREFIX/bin/peerd" "$BIN_DIR/peerd"
ln -sfn "$PREFIX/bin/peerctl" "$BIN_DIR/peerctl"

if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
  systemctl daemon-reload
fi

cat <<TXT

$("$PREFIX/bin/peerd" --version) installed.
Next: edit $CONFIG ([partner], [sync] sync_host, [listen]; the same
sync_password on both nodes), then
  systemctl enable --now peerd       (a running node: systemctl restart peerd)
  peerctl -c $CONFIG status
TXT
