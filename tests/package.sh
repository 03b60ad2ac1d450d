#!/usr/bin/env bash
# The package test: installs a PostgreSQL 15 tarball of scripts/package into a server that
# never saw the build tree — a copy of the PostgreSQL 15 installation in a throwaway root
# (PostgreSQL finds its lib and share directories relative to its binaries), from which
# every truxe file is removed first — then, through psql over the server's socket:
# CREATE EXTENSION truxe CASCADE and a login flow (magic link, session, validation, RLS),
# and the upgrade path the tarball carries (0.1.0, then ALTER EXTENSION UPDATE).
# Usage: tests/package.sh TARBALL      (scripts/test runs it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
tarball=${1:?usage: tests/package.sh TARBALL}
[ -f "$tarball" ] || die "no tarball at $tarball"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
bindir=$("$PG15_CONFIG" --bindir)          # /usr/lib/postgresql/15/bin
libroot=$(dirname "$bindir")               # /usr/lib/postgresql/15
share=$("$PG15_CONFIG" --sharedir)         # /usr/share/postgresql/15

root=$(mktemp -d /tmp/truxe-package-test.XXXXXX)
chmod 755 "$root"
cleanup() {
  [ -f "$root/data/postmaster.pid" ] && as_pg_owner "$root$bindir/pg_ctl" -D "$root/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$root"
}
trap cleanup EXIT

# the server: a copy of PostgreSQL 15 without any truxe file
mkdir -p "$root$(dirname "$libroot")" "$root$(dirname "$share")"
cp -a "$libroot" "$root$libroot"
cp -a "$share" "$root$share"
rm -f "$root$libroot"/lib/truxe.so "$root$share"/extension/truxe*
[ -z "$(ls "$root$share"/extension | grep '^truxe' || true)" ] || die "truxe files left in the copy"

# the package
tar -xzf "$tarball" -C "$root"
[ -f "$root$libroot/lib/truxe.so" ] || die "the tarball has no $libroot/lib/truxe.so"

chown -R postgres: "$root"
as_pg_owner "$root$bindir/initdb" -D "$root/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
as_pg_owner "$root$bindir/pg_ctl" -D "$root/data" -l "$root/server.log" -w \
  -o "-c listen_addresses='' -k $root -p 5432" start >/dev/null \
  || { cat "$root/server.log" >&2; die "the packaged server did not start"; }

q() { # q DB SQL: one value, as the superuser, through psql on the server's socket
  "$root$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$root" -p 5432 -U postgres -d "$1" -c "$2"
}
expect() { # expect WHAT GOT WANT
  if [ "$2" = "$3" ]; then echo "ok: $1"; else echo "FAIL: $1: got '$2', want '$3'" >&2; exit 1; fi
}

# where the server looks: inside the copy, not the build tree's installation
expect "the server's extension dir is the copy's" \
  "$(q postgres "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'")" "$root$share"
q postgres "CREATE DATABASE app" >/dev/null
q app "CREATE EXTENSION truxe CASCADE" >/dev/null
expect "installed version" "$(q app "SELECT extversion FROM pg_extension WHERE extname = 'truxe'")" \
  "$(sed -n 's/^version = "\(.*\)"$/\1/p' "$TRUXE_ROOT/Cargo.toml" | head -n 1)"
q app "CREATE ROLE backend LOGIN; GRANT service_account TO backend;
       CREATE ROLE web LOGIN; GRANT authenticated TO web;" >/dev/null
as() { # as ROLE SQL
  "$root$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$root" -p 5432 -U "$1" -d app -c "$2"
}
token=$(as backend "SELECT token FROM truxe.issue_magic_link('ada@example.com')")
expect "token format" "$(printf '%s' "$token" | grep -cE '^[0-9a-f]{32}\.[A-Za-z0-9_-]{43}$')" 1
user=$(as backend "SELECT user_id FROM truxe.verify_magic_link('$token') WHERE status = 'verified'")
[ -n "$user" ] || die "the magic link did not verify"
jti=$(as backend "SELECT jti FROM truxe.create_session('$user')")
expect "the session validates" "$(as backend "SELECT user_id FROM truxe.validate_session('$jti')")" "$user"
expect "RLS: the user sees their own row" \
  "$(as web "BEGIN; SELECT truxe.set_context('$user'); SELECT count(*) FROM truxe.users; COMMIT;" | tail -n 1)" 1
expect "RLS: no context, no rows" "$(as web "SELECT count(*) FROM truxe.users")" 0

# the upgrade path ships in the tarball too
q postgres "CREATE DATABASE old" >/dev/null
q old "CREATE EXTENSION truxe VERSION '0.1.0' CASCADE" >/dev/null
q old "ALTER EXTENSION truxe UPDATE" >/dev/null
expect "0.1.0 updates to the packaged version" \
  "$(q old "SELECT extversion FROM pg_extension WHERE extname = 'truxe'")" \
  "$(q app "SELECT extversion FROM pg_extension WHERE extname = 'truxe'")"
echo "package test: 1 passed, 0 failed"
