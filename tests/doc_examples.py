#!/usr/bin/python3
"""Runs every SQL example of README.md and docs/*.md, so that none can rot
(scripts/examples runs it on every supported PostgreSQL; docs/integration.md, "Examples
that run").

The rules, for whoever writes an example:
- Every fenced block whose info string is `sql` runs, in file order, in database `app`
  (created fresh for each file, with truxe installed before the first block unless that
  block installs it, and a small fixture: users alice, bob and carol, orgs initech —
  alice owns it — and globex — carol owns it, alice is a member — and a table
  app.payouts). It runs as the superuser, statement by statement in autocommit, as psql
  does. Roles a file creates are dropped after it.
- A block preceded by the line `<!-- not run: <reason> -->` is skipped, and the reason is
  printed. Use it only for what cannot run here (another extension, a server setting).
- A statement whose comment on the line of its `;` starts with a SQLSTATE
  (`-- 42501: not her org`) must fail with exactly that SQLSTATE; any other error, any
  WARNING, or a transaction left open at the end of a block fails the block.
- Placeholders are quoted strings `'<name>'` or `'…name'`, filled before each statement:
  `<name>` that is a column of an earlier result in the same file is that column's latest
  value (`<token>`, `<jti>`, `<user_id>` …, NULL if it was NULL); the others are in
  PLACEHOLDERS below (an unknown one fails the block and says so).

It also checks that the audit-event table of docs/reference.md ("Audit trail") names every
label of truxe.audit_action.

Environment: TRUXE_TEST_SOCKET_DIR and TRUXE_TEST_PORT (the superuser `postgres`
connects over that socket), as scripts/examples sets them.
"""
import os
import re
import sys

import psycopg
from psycopg import sql as pgsql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOCKET, PORT = os.environ["TRUXE_TEST_SOCKET_DIR"], os.environ["TRUXE_TEST_PORT"]
DB = "app"

ALICE = "(SELECT id FROM truxe.users WHERE email = 'alice@example.com')"
# placeholder -> a query whose single value fills it (run as the superuser)
PLACEHOLDERS = {
    "…": "SELECT 'example password, not a real one'",
    "…user uuid": ALICE, "<alice>": ALICE, "<user>": ALICE,
    "…bob uuid": "SELECT id FROM truxe.users WHERE email = 'bob@example.com'",
    "…org uuid": "SELECT id FROM truxe.organizations WHERE slug = 'initech'",
    "<org>": "SELECT id FROM truxe.organizations WHERE slug = 'initech'",
    "…acme uuid": "SELECT id FROM truxe.organizations WHERE slug = 'acme'",
    "<acme>": "SELECT id FROM truxe.organizations WHERE slug = 'acme'",
    "<globex>": "SELECT id FROM truxe.organizations WHERE slug = 'globex'",
    "<another org of the user>": "SELECT id FROM truxe.organizations WHERE slug = 'globex'",
    "<jti from the cookie>": f"SELECT jti FROM truxe.create_session({ALICE}, NULL)",
    "…the jti from the cookie": f"SELECT jti FROM truxe.create_session({ALICE}, NULL)",
    "<session id>": f"SELECT id FROM truxe.sessions WHERE user_id = {ALICE} AND revoked_at IS NULL"
                    " AND expires_at > now() ORDER BY created_at DESC LIMIT 1",
    "<id>": f"SELECT id FROM truxe.sessions WHERE user_id = {ALICE} AND revoked_at IS NULL"
            " AND expires_at > now() ORDER BY created_at DESC LIMIT 1",
}
FIXTURE = f"""
INSERT INTO truxe.users (email, status) VALUES ('alice@example.com', 'active'),
  ('bob@example.com', 'active'), ('carol@example.com', 'active');
INSERT INTO truxe.organizations (slug, name) VALUES ('initech', 'Initech'), ('globex', 'Globex');
INSERT INTO truxe.memberships (org_id, user_id, role, joined_at)
SELECT o.id, u.id, m.role::truxe.membership_role, now()
  FROM (VALUES ('initech', 'alice', 'owner'), ('globex', 'carol', 'owner'),
               ('globex', 'alice', 'member')) m(slug, who, role)
  JOIN truxe.organizations o ON o.slug = m.slug
  JOIN truxe.users u ON u.email = m.who || '@example.com';
SELECT truxe.create_session({ALICE}, NULL);
CREATE SCHEMA app;
CREATE TABLE app.payouts (id bigserial PRIMARY KEY, org_id uuid NOT NULL, amount numeric NOT NULL);
"""
PLACEHOLDER = re.compile(r"'(<[^'<>]+>|…[^']*)'")
EXPECTED = re.compile(r"^--\s*([0-9A-Z]{5})\b")


def blocks(path):
    """(line, skip reason or None, text) of each ```sql block."""
    lines, out, i = open(path, encoding="utf-8").read().split("\n"), [], 0
    while i < len(lines):
        if lines[i].strip() == "```sql":
            start, body = i + 1, []
            prev = lines[i - 1].strip() if i else ""
            m = re.match(r"<!--\s*not run:\s*(.*?)\s*-->$", prev)
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start, m.group(1) if m else None, "\n".join(body)))
        i += 1
    return out


def statements(text):
    """Splits SQL into (statement, comment on the line of its `;`), honouring quotes,
    dollar quotes and comments."""
    out, cur, i, n = [], [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            cur.append(text[i:j])
            i = j
        elif c in "'\"":
            j = i + 1
            while j < n:
                if text[j] == c and text[j + 1:j + 2] == c:
                    j += 2
                elif text[j] == c:
                    break
                else:
                    j += 1
            cur.append(text[i:j + 1])
            i = j + 1
        elif c == "$" and (m := re.match(r"\$[A-Za-z_]*\$", text[i:])):
            tag = m.group(0)
            j = text.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            cur.append(text[i:j])
            i = j
        elif c == ";":
            eol = text.find("\n", i)
            eol = n if eol < 0 else eol
            rest = text[i + 1:eol].strip()
            # the rest of the line: a comment belongs to this statement; more SQL does not
            comment = rest if rest.startswith("--") else ""
            stmt = "".join(cur).strip()
            if re.sub(r"--[^\n]*", "", stmt).strip():
                out.append((stmt, comment))
            cur = []
            i = eol if comment else i + 1
        else:
            cur.append(c)
            i += 1
    if re.sub(r"--[^\n]*", "", "".join(cur)).strip():
        out.append(("".join(cur).strip(), ""))
    return out


class Failure(Exception):
    pass


def literal(conn, value):
    if value is None:
        return "NULL"
    return pgsql.Literal(str(value)).as_string(conn)


def fill(stmt, values, conn, lookup):
    def one(m):
        name = m.group(1)
        key = name[1:-1] if name.startswith("<") else None
        if key in values:
            return literal(conn, values[key])
        if name not in PLACEHOLDERS:
            raise Failure(f"unknown placeholder '{name}': add it to PLACEHOLDERS in tests/doc_examples.py")
        row = lookup.execute(PLACEHOLDERS[name]).fetchone()
        if row is None and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            row = conn.execute(PLACEHOLDERS[name]).fetchone()  # created in this transaction
        if row is None:
            raise Failure(f"placeholder '{name}' names nothing yet ({PLACEHOLDERS[name]})")
        return literal(conn, row[0])
    return PLACEHOLDER.sub(one, stmt)


def run_block(conn, lookup, text, values):
    warnings = []

    def on_notice(d):
        if d.severity == "WARNING":
            warnings.append(d.message_primary)
    conn.add_notice_handler(on_notice)
    count = 0
    try:
        for stmt, comment in statements(text):
            count += 1
            expected = EXPECTED.match(comment)
            filled = fill(stmt, values, conn, lookup)
            try:
                cur = conn.execute(filled)
                if expected:
                    raise Failure(f"expected SQLSTATE {expected.group(1)}, it succeeded: {stmt}")
                if cur.description and cur.rowcount != 0:
                    row = cur.fetchone()
                    if row is not None:
                        values.update({d.name: v for d, v in zip(cur.description, row)})
            except psycopg.Error as e:
                if expected and e.sqlstate == expected.group(1):
                    continue
                raise Failure(f"{e.sqlstate}: {e.diag.message_primary}\n    in: {filled}") from None
            if warnings:
                raise Failure(f"WARNING {warnings[0]}\n    in: {filled}")
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise Failure("the block leaves a transaction open (BEGIN without COMMIT)")
        return count
    finally:
        conn.remove_notice_handler(on_notice)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")


def superuser(dbname):
    return psycopg.connect(host=SOCKET, port=PORT, user="postgres", dbname=dbname, autocommit=True)


def run_file(path):
    rel = os.path.relpath(path, ROOT)
    found = blocks(path)
    if not found:
        return 0, 0, 0
    failed = ran = skipped = 0
    with superuser("postgres") as admin:
        roles_before = {r[0] for r in admin.execute("SELECT rolname FROM pg_roles")}
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
        try:
            with superuser(DB) as conn, superuser(DB) as lookup:
                installed, values = False, {}
                for line, skip, text in found:
                    where = f"{rel}:{line}"
                    if skip is not None:
                        print(f"SKIP  {where}: not run: {skip}", flush=True)
                        skipped += 1
                        continue
                    if not installed:
                        if not re.search(r"CREATE EXTENSION truxe\b", text, re.I):
                            conn.execute("CREATE EXTENSION truxe CASCADE")
                            conn.execute(FIXTURE)
                            installed = True
                    try:
                        n = run_block(conn, lookup, text, values)
                        print(f"ok    {where} ({n} statements)", flush=True)
                        ran += 1
                    except Failure as e:
                        print(f"FAIL  {where}: {e}", flush=True)
                        failed += 1
                    if not installed:  # this block installed truxe
                        conn.execute(FIXTURE)
                        installed = True
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            for role in {r[0] for r in admin.execute("SELECT rolname FROM pg_roles")} - roles_before:
                admin.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))
    return ran, skipped, failed


def audit_table_is_complete():
    """Every action truxe writes (the labels of truxe.audit_action) is in the table of
    docs/reference.md, "Audit trail"."""
    text = open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8").read()
    section = text[text.index("## Audit trail"):text.index("\n## ", text.index("## Audit trail") + 1)]
    with superuser("postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
        try:
            with superuser(DB) as conn:
                conn.execute("CREATE EXTENSION truxe CASCADE")
                labels = [r[0] for r in conn.execute("SELECT unnest(enum_range(NULL::truxe.audit_action))::text")]
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    missing = [label for label in labels if f"`{label}`" not in section]
    print(("ok    " if not missing else "FAIL  ")
          + f"docs/reference.md, Audit trail, names all {len(labels)} actions truxe writes"
          + (f"; missing: {', '.join(missing)}" if missing else ""), flush=True)
    return not missing


def main():
    files = [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    totals = [0, 0, 0]
    for path in files:
        for k, v in enumerate(run_file(path)):
            totals[k] += v
    ran, skipped, failed = totals
    print(f"SQL examples: {ran} blocks ran, {skipped} not run (listed above), {failed} failed")
    complete = audit_table_is_complete()
    sys.exit(1 if failed or not ran or not complete else 0)


if __name__ == "__main__":
    main()
