#!/usr/bin/python3
"""The example application's test (scripts/examples runs it on every supported
PostgreSQL): a database set up as docs/integration.md says, the app started as a separate
process with its two password logins over TCP, and a real HTTP client on loopback —
cookies, redirects, status codes — through login, session, org switcher, members under
RLS, an invitation accepted by a new user, refresh, refresh-token reuse, logout, garbage
cookies and rate limits.

Environment (scripts/examples sets it): TRUXE_TEST_SOCKET_DIR and TRUXE_TEST_PORT, a
server with truxe installed whose superuser `postgres` connects over that Unix socket and
whose 127.0.0.1 port takes password logins.
"""
import http.cookiejar
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg

SOCKET, PORT = os.environ["TRUXE_TEST_SOCKET_DIR"], os.environ["TRUXE_TEST_PORT"]
DB = "truxe_example_app"
HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def superuser(dbname):
    return psycopg.connect(host=SOCKET, port=PORT, user="postgres", dbname=dbname, autocommit=True)


def set_up_database():
    """What docs/integration.md asks of a production database, then three tenants."""
    passwords = {"app_service": secrets.token_hex(16), "app_user": secrets.token_hex(16)}
    with superuser("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}")
        c.execute(f"CREATE DATABASE {DB}")
        for role in passwords:
            c.execute(f"DROP ROLE IF EXISTS {role}")
    with superuser(DB) as c:
        c.execute("CREATE EXTENSION truxe CASCADE")
        c.execute(f"CREATE ROLE app_service LOGIN PASSWORD '{passwords['app_service']}'")
        c.execute(f"CREATE ROLE app_user LOGIN PASSWORD '{passwords['app_user']}'")
        c.execute("GRANT service_account TO app_service")
        c.execute("GRANT authenticated TO app_user")
        # one database's logins only: roles are cluster-wide
        c.execute(f"REVOKE CONNECT ON DATABASE {DB} FROM PUBLIC")
        c.execute(f"GRANT CONNECT ON DATABASE {DB} TO app_service, app_user")
        # superuser settings, per database: only truxe.authenticate names an end user; no
        # grace for a reused refresh token (the test presents one at once)
        c.execute(f"ALTER DATABASE {DB} SET truxe.identity_mode = verified")
        c.execute(f"ALTER DATABASE {DB} SET truxe.refresh_reuse_grace = 0")
        c.execute("""
          INSERT INTO truxe.users (email, status) VALUES ('alice@acme.example', 'active'),
            ('bob@acme.example', 'active'), ('carol@globex.example', 'active'),
            ('dave@initech.example', 'active');
          INSERT INTO truxe.organizations (slug, name) VALUES ('acme', 'Acme'),
            ('globex', 'Globex'), ('initech', 'Initech');
          INSERT INTO truxe.memberships (org_id, user_id, role, joined_at)
          SELECT o.id, u.id, m.role::truxe.membership_role, now()
            FROM (VALUES ('acme', 'alice@acme.example', 'owner'),
                         ('acme', 'bob@acme.example', 'member'),
                         ('globex', 'carol@globex.example', 'owner'),
                         ('globex', 'alice@acme.example', 'member'),
                         ('initech', 'dave@initech.example', 'owner')) m(slug, email, role)
            JOIN truxe.organizations o ON o.slug = m.slug
            JOIN truxe.users u ON u.email = m.email;""")
        orgs = dict(c.execute("SELECT slug::text, id::text FROM truxe.organizations").fetchall())
    with superuser(DB) as c:  # a new connection: the database's settings apply
        report = {r[0]: r[2] for r in c.execute("SELECT * FROM truxe.security_report()") if not r[1]}
    check(not report, f"security_report() all ok after the set-up ({report})")
    return passwords, orgs


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # redirects are followed (and checked) by Client.request


class Client:
    """A browser stand-in: a cookie jar, redirects followed one by one."""

    def __init__(self, base, jar=None):
        self.base = base
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect())

    def request(self, method, path, form=None, follow=True):
        """Returns (status, body, headers, redirects: the statuses followed)."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        url, redirects = self.base + path, []
        while True:
            req = urllib.request.Request(url, data=data, method=method,
                                         headers={"User-Agent": "truxe-example-test"})
            try:
                resp = self.opener.open(req, timeout=30)
            except urllib.error.HTTPError as e:
                resp = e
            status, body, headers = resp.status, resp.read().decode(), resp.headers
            if follow and status in (301, 302, 303) and headers.get("Location"):
                redirects.append(status)
                url, method, data = urllib.parse.urljoin(url, headers["Location"]), "GET", None
                continue
            return status, body, headers, redirects

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, form=None, **kw):
        return self.request("POST", path, form or {}, **kw)

    def cookie(self, name):
        return next((c.value for c in self.jar if c.name == name), None)

    def copy(self):
        jar = http.cookiejar.CookieJar()
        for c in self.jar:
            jar.set_cookie(c)
        return Client(self.base, jar)


def link_for(client, email, path="/auth"):
    """The newest link the app 'sent' to `email`, from the development outbox."""
    status, body, _, _ = client.get("/outbox")
    links = re.findall(re.escape(email) + r': <a href="http://[^/]+(' + re.escape(path) + r'\?token=[^"]+)"', body)
    return links[0].replace("&amp;", "&") if status == 200 and links else None


def sign_in(client, email):
    status, _, _, _ = client.post("/login", {"email": email})
    check(status == 200, f"POST /login {email}: 200 ({status})")
    link = link_for(client, email)
    check(link is not None, f"the outbox holds {email}'s link")
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
    status, body, _, _ = client.get(link)
    check(status == 200 and email in body, f"GET /auth: the confirm page names {email} ({status})")
    status, body, _, _ = client.get(link)
    check(status == 200, "GET /auth again: inspecting does not use the link up")
    status, body, headers, redirects = client.post("/auth", {"token": token}, follow=False)
    cookies = headers.get_all("Set-Cookie") or []
    check(status == 303 and headers["Location"] == "/", f"POST /auth: 303 to / ({status})")
    check(len(cookies) == 2 and all("HttpOnly" in c and "SameSite=Lax" in c for c in cookies),
          f"session and refresh cookies are HttpOnly, SameSite=Lax: {[c.split('=')[0] for c in cookies]}")
    status, body, _, _ = client.get("/")
    check(status == 200 and f"Signed in as {email}" in body, f"GET / as {email}: 200 ({status})")
    return token


def main():
    passwords, orgs = set_up_database()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        app_port = s.getsockname()[1]
    dsn = "host=127.0.0.1 port={} dbname={} user={} password={}"
    env = dict(os.environ,
               TRUXE_APP_SERVICE_DSN=dsn.format(PORT, DB, "app_service", passwords["app_service"]),
               TRUXE_APP_USER_DSN=dsn.format(PORT, DB, "app_user", passwords["app_user"]),
               TRUXE_APP_PORT=str(app_port), TRUXE_APP_SECURE_COOKIES="0", TRUXE_APP_DEV_OUTBOX="1")
    log_path = os.path.join(os.environ.get("TRUXE_TEST_WORK", "/tmp"), "app.log")
    log = open(log_path, "w")
    app = subprocess.Popen([sys.executable, os.path.join(HERE, "app.py")], env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{app_port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if app.poll() is not None:
                    break
                time.sleep(0.1)
        run(base, orgs)
    finally:
        app.terminate()
        app.wait(timeout=10)
        log.close()
    with open(log_path) as f:
        app_log = f.read()
    check(" 500" not in app_log and "Traceback" not in app_log, "the app answered no 500 and raised nothing")
    if failures:
        print(f"app log ({log_path}):\n{app_log[-4000:]}")
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("example app: every check passed")


def run(base, orgs):
    anonymous = Client(base)
    status, body, _, _ = anonymous.get("/")
    check(status == 200 and "Send me a link" in body, f"GET / signed out: the sign-in form ({status})")
    status, _, _, _ = anonymous.get("/members")
    check(status == 401, f"GET /members without cookies: 401 ({status})")

    alice = Client(base)
    token = sign_in(alice, "alice@acme.example")
    status, _, _, _ = Client(base).post("/auth", {"token": token})
    check(status == 401, f"POST /auth with a used link: 401 ({status})")

    # members under RLS: the acting org is the first of hers (Acme), then the switcher
    status, body, _, _ = alice.get("/members")
    check(status == 200 and "bob@acme.example" in body and "carol@" not in body,
          f"GET /members: Acme's members only ({status})")
    status, body, _, redirects = alice.post("/org", {"org_id": orgs["globex"]})
    check(redirects == [303] and status == 200 and "carol@globex.example" in body and "bob@" not in body,
          f"POST /org Globex: 303, then Globex's members only ({redirects}, {status})")
    status, _, _, _ = alice.post("/org", {"org_id": orgs["initech"]})
    check(status == 403, f"POST /org to an org not hers: 403 ({status})")
    status, _, _, _ = alice.post("/org", {"org_id": "not-a-uuid"})
    check(status == 400, f"POST /org with a malformed org id: 400 ({status})")
    status, _, _, _ = alice.post("/members/invite", {"email": "erin@globex.example"})
    check(status == 403, f"invite as a member of Globex: 403 ({status})")
    alice.post("/org", {"org_id": orgs["acme"]})
    status, body, _, redirects = alice.post("/members/invite", {"email": "erin@acme.example"})
    check(status == 200 and redirects == [303], f"invite as the owner of Acme: 303, 200 ({redirects}, {status})")
    invitation = link_for(alice, "erin@acme.example", "/join")
    check(invitation is not None, "the invitation went to the outbox")

    # the invitee (no account yet) follows the link: a confirm page, then joined and
    # signed in, acting in Acme; the link is used up
    erin = Client(base)
    status, body, _, _ = erin.get(invitation or "/join")
    check(status == 200 and "Join Acme as erin@acme.example?" in body, f"GET /join: the confirm page ({status})")
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(invitation or "").query).get("token", [""])[0]
    status, body, _, redirects = erin.post("/join", {"token": token})
    check(redirects == [303] and status == 200 and "Members of Acme" in body and "erin@acme.example (member)" in body,
          f"POST /join: 303, then Acme's members with erin as a member ({redirects}, {status})")
    status, body, _, _ = erin.get("/")
    check(status == 200 and "Signed in as erin@acme.example" in body, f"GET / as erin: signed in ({status})")
    status, _, _, _ = Client(base).post("/join", {"token": token})
    check(status == 401, f"POST /join with a used invitation: 401 ({status})")
    status, _, _, _ = Client(base).get("/join?token=garbage")
    check(status == 401, f"GET /join with a garbage token: 401 ({status})")

    # refresh, then the old refresh token presented again (a thief's copy): reuse
    thief = alice.copy()
    old_refresh = alice.cookie("truxe_refresh")
    status, body, _, redirects = alice.post("/auth/refresh")
    check(redirects == [303] and status == 200 and alice.cookie("truxe_refresh") != old_refresh,
          f"POST /auth/refresh: 303, new cookies ({redirects}, {status})")
    status, _, _, _ = alice.get("/members")
    check(status == 200, f"GET /members with the rotated cookies: 200 ({status})")
    status, _, _, _ = thief.get("/members")
    check(status == 401, f"the old cookies (a rotated refresh token) again: 401 ({status})")
    status, _, _, _ = alice.get("/members")
    check(status == 401, f"after the reuse the whole family is revoked: 401 ({status})")
    with superuser(DB) as c:
        n = c.execute("SELECT count(*) FROM truxe.audit_logs WHERE action = 'session.reuse_detected'").fetchone()[0]
    check(n == 1, f"one session.reuse_detected audit row ({n})")

    # a session in its last half hour is rotated by the next request (sliding session);
    # an expired one is not (truxe: both tokens end with the session)
    bob = Client(base)
    sign_in(bob, "bob@acme.example")
    bobs = "user_id = (SELECT id FROM truxe.users WHERE email = 'bob@acme.example') AND revoked_at IS NULL"
    with superuser(DB) as c:
        c.execute(f"UPDATE truxe.sessions SET expires_at = now() + interval '5 minutes' WHERE {bobs}")
    old_session = bob.cookie("truxe_session")
    status, body, _, _ = bob.get("/members")
    check(status == 200 and bob.cookie("truxe_session") not in (None, old_session),
          f"GET /members near the session's end: rotated, 200 ({status})")
    late = bob.copy()
    with superuser(DB) as c:
        c.execute(f"UPDATE truxe.sessions SET created_at = now() - interval '2 hours',"
                  f" expires_at = now() - interval '1 minute' WHERE {bobs}")
    status, _, _, _ = late.get("/members")
    check(status == 401, f"GET /members after the session expired: 401 ({status})")
    with superuser(DB) as c:
        c.execute(f"UPDATE truxe.sessions SET expires_at = now() + interval '1 hour' WHERE {bobs}")

    # logout ends the session server-side, not only in the browser
    before = bob.copy()
    status, _, _, redirects = bob.post("/logout")
    check(redirects == [303] and status == 200 and bob.cookie("truxe_session") in (None, ""),
          f"POST /logout: 303, cookies cleared ({redirects}, {status})")
    status, _, _, _ = before.get("/members")
    check(status == 401, f"the cookies from before the logout: 401 ({status})")

    # garbage cookies are a 401, never a 500
    for session, refresh in [("garbage", "not-a-uuid"), ("", "x" * 300), ("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-00000000000g")]:
        for method, path in (("GET", "/members"), ("POST", "/auth/refresh"), ("GET", "/")):
            junk = Client(base)
            for name, value in (("truxe_session", session), ("truxe_refresh", refresh)):
                if value:
                    junk.jar.set_cookie(http.cookiejar.Cookie(0, name, value, None, False, "127.0.0.1", False, False,
                                                              "/", True, False, None, False, None, None, {}))
            status, _, _, _ = junk.request(method, path, {} if method == "POST" else None)
            check(status == 401, f"{method} {path} with cookies {session!r}/{refresh[:20]!r}: 401 ({status})")
    status, _, _, _ = Client(base).post("/auth", {"token": "garbage"})
    check(status == 401, f"POST /auth with a garbage token: 401 ({status})")

    # rate limits: truxe's 5 links per e-mail in 15 minutes (TX429) -> 429
    codes = [Client(base).post("/login", {"email": "dave@initech.example"})[0] for _ in range(6)]
    check(codes == [200] * 5 + [429], f"six links for one e-mail: five 200, then 429 ({codes})")
    status, _, _, _ = Client(base).post("/login", {"email": "not an e-mail"})
    check(status == 400, f"POST /login with a malformed e-mail: 400 ({status})")


if __name__ == "__main__":
    main()
