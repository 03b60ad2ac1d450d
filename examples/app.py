#!/usr/bin/python3
"""A small web application on truxe: magic-link login, sessions in cookies, an org
switcher and a members page under Row Level Security (docs/integration.md explains each
choice; examples/README.md says how to run it).

Standard library HTTP server plus psycopg 3 and psycopg_pool (Debian: python3-psycopg,
python3-psycopg-pool). Two logins, two pools:
  TRUXE_APP_SERVICE_DSN  a login granted service_account: issues links, verifies them,
                         creates, refreshes and revokes sessions (the trusted backend)
  TRUXE_APP_USER_DSN     a login granted authenticated: every page a user sees, as that
                         user, after truxe.authenticate(jti) in the same transaction
Other settings: TRUXE_APP_PORT (8000), TRUXE_APP_SECURE_COOKIES (1; 0 for plain http in
development), TRUXE_APP_DEV_OUTBOX (0; 1 shows sent links at /outbox instead of e-mailing
them; they are also printed on stderr).
"""
import html
import os
import sys
import threading
import uuid
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

SESSION_COOKIE, REFRESH_COOKIE, ORG_COOKIE = "truxe_session", "truxe_refresh", "truxe_org"
# a session (both of its tokens) lives SESSION_TTL; a request in its last ROTATE_BEFORE
# rotates it, so an active user stays signed in and an idle one is signed out
SESSION_TTL, ROTATE_BEFORE, COOKIE_MAX_AGE = "1 hour", "30 minutes", 3600
LOGINS_PER_IP = 20  # per 15 minutes, on top of truxe's 5 links per e-mail

# SQLSTATE -> HTTP status (docs/integration.md, "Errors"). 22P02 and 22023 on a value
# that came from a cookie are a bad credential, not a bad request: see `bearer` below.
STATUS = {"22023": 400, "22P02": 400, "42501": 403, "P0002": 404, "23505": 409,
          "23514": 409, "23503": 404, "TX429": 429, "40001": 503, "25006": 503}


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class Bearer:
    """`with Bearer():` around a call that takes a cookie's value: a malformed token
    (22P02: not a uuid; 22023) is a 401, never a 500."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if isinstance(exc, psycopg.Error) and exc.sqlstate in ("22P02", "22023"):
            raise HttpError(401, "sign in again") from exc
        return False


def pool(dsn_var):
    # autocommit connections: each request opens its own transaction explicitly
    # (conn.transaction()), so nothing is left open between requests
    return ConnectionPool(os.environ[dsn_var], min_size=1, max_size=4, open=True,
                          kwargs={"autocommit": True}, name=dsn_var)


SERVICE, USER = None, None
OUTBOX, OUTBOX_LOCK = [], threading.Lock()
DEV_OUTBOX = os.environ.get("TRUXE_APP_DEV_OUTBOX") == "1"
SECURE = os.environ.get("TRUXE_APP_SECURE_COOKIES", "1") != "0"


def request_context(cur, req):
    """The request's IP, user agent and id for truxe's audit rows. SET LOCAL cannot take
    a bind parameter: set_config(name, value, is_local => true) can."""
    cur.execute("SELECT set_config('app.ip', %s, true), set_config('app.user_agent', %s, true),"
                " set_config('app.request_id', %s, true)", (req.ip, req.user_agent, req.request_id))


def page(title, body):
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def form(action, fields, button, visible=""):
    inputs = "".join(f'<input type=hidden name="{k}" value="{html.escape(v)}">' for k, v in fields)
    return f'<form method=post action="{action}">{inputs}{visible}<button>{html.escape(button)}</button></form>'


class Handler(BaseHTTPRequestHandler):
    server_version = "truxe-example"

    # --- plumbing ------------------------------------------------------------------
    def setup_request(self):
        url = urlsplit(self.path)
        self.route, self.query = url.path, parse_qs(url.query)
        self.cookies = {k: m.value for k, m in SimpleCookie(self.headers.get("Cookie", "")).items()}
        self.ip = self.client_address[0]
        self.user_agent = self.headers.get("User-Agent", "")[:512]
        self.request_id = str(uuid.uuid4())
        self.set_cookies = []
        self.form = {}
        if self.command == "POST":
            n = int(self.headers.get("Content-Length") or 0)
            if n > 64 * 1024:
                raise HttpError(413, "request too large")
            self.form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode("utf-8", "replace")).items()}

    def cookie(self, name, value, max_age=None):
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
        if SECURE:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self.set_cookies.append("; ".join(parts))

    def clear_session_cookies(self):
        for name in (SESSION_COOKIE, REFRESH_COOKIE, ORG_COOKIE):
            self.cookie(name, "", 0)

    def send(self, status, body="", location=None):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if location:
            self.send_header("Location", location)
        for c in self.set_cookies:
            self.send_header("Set-Cookie", c)
        self.end_headers()
        self.wfile.write(data)

    def dispatch(self, routes):
        try:
            self.setup_request()
            handler = routes.get(self.route)
            if handler is None:
                raise HttpError(404, "no such page")
            handler(self)
        except HttpError as e:
            if e.status == 401:
                self.clear_session_cookies()
            self.send(e.status, page(f"{e.status}", f"<p>{html.escape(e.message)}</p><p><a href=/>home</a></p>"))
        except psycopg.Error as e:
            status = STATUS.get(e.sqlstate or "", 500)
            # a message truxe raises is meant for the caller; a 500 shows nothing
            text = e.diag.message_primary if status != 500 else "internal error"
            if status == 500:
                print(f"error {e.sqlstate}: {e}", file=sys.stderr)
            self.send(status, page(f"{status}", f"<p>{html.escape(text or '')}</p>"))

    def do_GET(self):
        self.dispatch({"/": Handler.home, "/auth": Handler.auth_confirm, "/join": Handler.join_confirm,
                       "/members": Handler.members, "/outbox": Handler.outbox})

    def do_POST(self):
        self.dispatch({"/login": Handler.login, "/auth": Handler.auth_verify,
                       "/auth/refresh": Handler.refresh, "/join": Handler.join_accept,
                       "/logout": Handler.logout,
                       "/org": Handler.switch_org, "/members/invite": Handler.invite})

    def log_message(self, fmt, *args):  # no query strings (tokens) in the log
        sys.stderr.write(f"{self.address_string()} {self.command} {urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}\n")

    # --- the identity of a request ---------------------------------------------------
    def refresh_tokens(self):
        """Rotates the refresh cookie (service_account). No row: expired, revoked, past
        the family's lifetime, or a token already rotated — a reuse, after which truxe
        has revoked the whole family (session.reuse_detected). Returns the new jti."""
        token = self.cookies.get(REFRESH_COOKIE)
        if not token:
            raise HttpError(401, "sign in")
        with SERVICE.connection() as conn, conn.transaction(), conn.cursor() as cur, Bearer():
            request_context(cur, self)
            cur.execute("SELECT jti, refresh_jti FROM truxe.refresh_session(%s, %s)", (token, SESSION_TTL))
            row = cur.fetchone()
        if row is None:
            raise HttpError(401, "your session ended; sign in again")
        self.cookie(SESSION_COOKIE, row[0], COOKIE_MAX_AGE)
        self.cookie(REFRESH_COOKIE, row[1], COOKIE_MAX_AGE)
        self.cookies[SESSION_COOKIE] = str(row[0])
        return str(row[0])

    def authenticate(self, cur, wanted_org=None):
        """In the request's transaction on the authenticated pool: the session cookie
        becomes truxe's verified identity (RLS acts for that user until COMMIT). A
        session about to expire is rotated first; so is a missing or dead access token
        (a rotated one presented again with its refresh token is a stolen copy: truxe
        revokes the family). Returns (user, email, orgs, current org)."""
        request_context(cur, self)
        jti, row = self.cookies.get(SESSION_COOKIE), None
        if jti:
            cur.execute("SELECT user_id, expires_at < now() + %s::interval FROM truxe.authenticate(%s)",
                        (ROTATE_BEFORE, jti))
            row = cur.fetchone()
        if row is None or row[1]:
            jti = self.refresh_tokens()
            cur.execute("SELECT user_id FROM truxe.authenticate(%s)", (jti,))
            row = cur.fetchone()
            if row is None:
                raise HttpError(401, "sign in again")
        # the orgs the user may act in (with no acting org: all of theirs), then act in
        # the one the org cookie names (an org no longer theirs: the first one). Asked
        # for an org explicitly (the switcher), switch_org decides: 42501 -> 403.
        cur.execute("SELECT truxe.switch_org(NULL)")
        cur.execute("SELECT id::text, name FROM truxe.organizations"
                    " WHERE id = ANY (truxe.accessible_org_ids()) ORDER BY name")
        orgs = cur.fetchall()
        org = self.cookies.get(ORG_COOKIE)
        if org not in dict(orgs):
            org = orgs[0][0] if orgs else None
        if wanted_org is not None:
            org = wanted_org
        if org:
            cur.execute("SELECT truxe.switch_org(%s)", (org,))
        cur.execute("SELECT email FROM truxe.users WHERE id = %s", (row[0],))
        return row[0], cur.fetchone()[0], orgs, org

    # --- pages -----------------------------------------------------------------------
    def home(self):
        if not (self.cookies.get(SESSION_COOKIE) or self.cookies.get(REFRESH_COOKIE)):
            outbox = "<p>(development: links appear in the <a href=/outbox>outbox</a>)</p>" if DEV_OUTBOX else ""
            email = "<input name=email type=email placeholder=you@example.com> "
            return self.send(200, page("Sign in", form("/login", [], "Send me a link", email) + outbox))
        with USER.connection() as conn, conn.transaction(), conn.cursor() as cur:
            user, email, orgs, org = self.authenticate(cur)
        options = "".join(f'<option value="{o}"{" selected" if o == org else ""}>{html.escape(n)}</option>'
                          for o, n in orgs)
        self.send(200, page(f"Signed in as {email}",
                            f'<form method=post action=/org><select name=org_id>{options}</select>'
                            f'<button>Switch</button></form><p><a href=/members>Members</a></p>'
                            + form("/logout", [], "Sign out")))

    def login(self):
        """POST /login {email}: a rate limit per IP, then a link (truxe allows 5 per
        e-mail in 15 minutes: TX429 -> 429). The answer is the same for any address."""
        email = self.form.get("email", "")
        with SERVICE.connection() as conn, conn.cursor() as cur:
            with conn.transaction():  # committed on its own: the hit counts whatever follows
                cur.execute("SELECT allowed FROM truxe.rate_limit_hit(%s, %s, '15 minutes')",
                            ("login:" + self.ip, LOGINS_PER_IP))
                allowed = cur.fetchone()[0]
            if not allowed:
                raise HttpError(429, "too many sign-in attempts from here; try later")
            with conn.transaction():
                request_context(cur, self)
                cur.execute("SELECT token FROM truxe.issue_magic_link(%s, ttl => '15 minutes',"
                            " ip => %s::inet, user_agent => %s)", (email, self.ip, self.user_agent))
                token = cur.fetchone()[0]
        host = self.headers.get("Host", "localhost")
        self.send_mail(email, f"http://{host}/auth?token={quote(token)}")
        self.send(200, page("Check your e-mail", "<p>We sent you a sign-in link.</p>"))

    def send_mail(self, to, link):
        # a real app e-mails the link; this one prints it and, in development, keeps it
        print(f"mail to {to}: {link}", file=sys.stderr, flush=True)
        if DEV_OUTBOX:
            with OUTBOX_LOCK:
                OUTBOX.append((to, link))

    def outbox(self):
        if not DEV_OUTBOX:
            raise HttpError(404, "no such page")
        with OUTBOX_LOCK:
            items = "".join(f'<li>{html.escape(to)}: <a href="{html.escape(link)}">{html.escape(link)}</a></li>'
                            for to, link in reversed(OUTBOX))
        self.send(200, page("Outbox (development)", f"<ul>{items}</ul>"))

    def auth_confirm(self):
        """GET /auth?token=…: a confirm page. Mail scanners open links; inspecting does
        not use the link up."""
        token = self.query.get("token", [""])[0]
        with SERVICE.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT status, email FROM truxe.inspect_magic_link(%s)", (token,))
            status, email = cur.fetchone()
        if status != "valid":
            raise HttpError(401, f"this link is {status}")
        self.send(200, page(f"Sign in as {email}?", form("/auth", [("token", token)], "Sign in")))

    def auth_verify(self):
        """POST /auth {token}: verify (uses the link up), start a session, set cookies."""
        token = self.form.get("token", "")
        with SERVICE.connection() as conn, conn.transaction(), conn.cursor() as cur:
            request_context(cur, self)
            cur.execute("SELECT status, user_id, org_id FROM truxe.verify_magic_link(%s, %s::inet, %s)",
                        (token, self.ip, self.user_agent))
            status, user, org = cur.fetchone()
            if status == "verified":
                self.start_session(cur, user, org)
        # outside the transaction: a wrong secret's attempt must be committed, and was
        if status != "verified":
            raise HttpError({"locked": 423, "rejected": 403}.get(status, 401), f"this link is {status}")
        self.send(303, location="/")

    def start_session(self, cur, user, org):
        """A new session for `user` acting in `org`, its tokens in HttpOnly cookies."""
        cur.execute("SELECT jti, refresh_jti FROM truxe.create_session(%s, %s, %s, %s, %s::inet, %s)",
                    (user, org, SESSION_TTL, Jsonb({"platform": "web"}), self.ip, self.user_agent))
        jti, refresh = cur.fetchone()
        self.cookie(SESSION_COOKIE, jti, COOKIE_MAX_AGE)
        self.cookie(REFRESH_COOKIE, refresh, COOKIE_MAX_AGE)

    def join_confirm(self):
        """GET /join?token=…: the invitation's confirm page (inspect_invitation does not
        use it up; a wrong secret counts an attempt, as for links)."""
        token = self.query.get("token", [""])[0]
        with SERVICE.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT status, org_name, email FROM truxe.inspect_invitation(%s)", (token,))
            status, org_name, email = cur.fetchone()
        if status != "valid":
            raise HttpError(401, f"this invitation is {status}")
        self.send(200, page(f"Join {org_name} as {email}?", form("/join", [("token", token)], "Join")))

    def join_accept(self):
        """POST /join {token}: the link reached the invited address, which proves it:
        accept (the user is created when new), then sign them in acting in that org."""
        token = self.form.get("token", "")
        with SERVICE.connection() as conn, conn.transaction(), conn.cursor() as cur:
            request_context(cur, self)
            cur.execute("SELECT status, org_id, user_id FROM truxe.accept_invitation_token(%s)", (token,))
            status, org, user = cur.fetchone()
            if status in ("accepted", "already_member"):
                self.start_session(cur, user, org)
        if status not in ("accepted", "already_member"):
            raise HttpError({"locked": 423, "rejected": 403}.get(status, 401), f"this invitation is {status}")
        self.cookie(ORG_COOKIE, str(org))
        self.send(303, location="/members")

    def refresh(self):
        """POST /auth/refresh: rotate explicitly (a script or SPA would do this before
        the access token expires; pages also refresh on demand, in authenticate)."""
        self.refresh_tokens()
        self.send(303, location=self.form.get("next") or "/")

    def logout(self):
        jti = self.cookies.get(SESSION_COOKIE)
        if jti:
            try:
                with SERVICE.connection() as conn, conn.transaction(), conn.cursor() as cur, Bearer():
                    request_context(cur, self)
                    cur.execute("SELECT truxe.revoke_session(%s)", (jti,))
            except HttpError:
                pass  # a garbage cookie: nothing to revoke, clear it all the same
        self.clear_session_cookies()
        self.send(303, location="/")

    def switch_org(self):
        org = self.form.get("org_id", "")  # not a uuid: 22P02 -> 400
        with USER.connection() as conn, conn.transaction(), conn.cursor() as cur:
            self.authenticate(cur, wanted_org=org)  # not the user's org: 42501 -> 403
        self.cookie(ORG_COOKIE, org)
        self.send(303, location="/members")

    def members(self):
        with USER.connection() as conn, conn.transaction(), conn.cursor() as cur:
            _, email, orgs, org = self.authenticate(cur)
            if org is None:
                return self.send(200, page("Members", "<p>You belong to no organisation yet.</p>"))
            # no tenant filter of our own: RLS shows the acting org's rows (and, to its
            # owners and admins, the orgs below it); the WHERE keeps the org itself
            cur.execute("SELECT coalesce(u.email::text, '(invited)'), m.role::text"
                        "  FROM truxe.memberships m LEFT JOIN truxe.users u ON u.id = m.user_id"
                        " WHERE m.org_id = truxe.current_org_id() ORDER BY 1")
            rows = cur.fetchall()
        name = dict(orgs).get(org, org)
        items = "".join(f"<li>{html.escape(e)} ({html.escape(r)})</li>" for e, r in rows)
        invite = form("/members/invite", [], "Invite", "<input name=email type=email> ")
        self.send(200, page(f"Members of {name}", f"<ul>{items}</ul>{invite}<p><a href=/>home</a></p>"))

    def invite(self):
        """POST /members/invite {email}: owners and admins only (42501 -> 403); truxe
        sends at most 100 invitations an hour per org (TX429 -> 429). The link leads to
        /join (inspect_invitation, then accept_invitation_token and a session)."""
        with USER.connection() as conn, conn.transaction(), conn.cursor() as cur:
            _, _, _, org = self.authenticate(cur)
            cur.execute("SELECT token FROM truxe.invite_by_email(%s, %s)", (org, self.form.get("email", "")))
            token = cur.fetchone()[0]
        host = self.headers.get("Host", "localhost")
        self.send_mail(self.form.get("email", ""), f"http://{host}/join?token={quote(token)}")
        self.send(303, location="/members")


def main():
    global SERVICE, USER
    SERVICE, USER = pool("TRUXE_APP_SERVICE_DSN"), pool("TRUXE_APP_USER_DSN")
    port = int(os.environ.get("TRUXE_APP_PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"truxe example app on http://127.0.0.1:{server.server_port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        SERVICE.close()
        USER.close()


if __name__ == "__main__":
    main()
