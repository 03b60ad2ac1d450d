"""Turns bench/run's pgbench logs into the Markdown table of bench/README.md.

Usage: report.py WORKDIR ROUNDS SECONDS CLIENTS DATASET MACHINE
Per-transaction logs (pgbench -l): the third field is the latency in microseconds.
TPS is the transactions of all rounds over the rounds' total time.
"""
import glob
import os
import sys

work, rounds, seconds, clients, dataset, machine = sys.argv[1:7]
rounds, seconds = int(rounds), float(seconds)


def stats(name, n_rounds=rounds):
    lat = []
    # pgbench -l --log-prefix=NAME.ROUND writes NAME.ROUND.PID and NAME.ROUND.PID.THREAD
    for path in glob.glob(os.path.join(work, f"{name}.[0-9]*.[0-9]*")):
        with open(path) as f:
            lat += [int(line.split()[2]) for line in f if line.strip()]
    if not lat:
        return None
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
    return {"tps": len(lat) / (n_rounds * seconds), "p50": pick(0.50), "p99": pick(0.99)}


def ratio(a, b, key="tps"):
    if not a or not b:
        return "–"
    return f"{a[key] / b[key]:.2f}×"


rows = [
    # (label, truxe run, reference run, ceiling run, target)
    ("magic link issue + verify", "truxe_issue_verify", "ref_issue_verify", "upsert_many", "≥ 1.3× ref"),
    ("verify of a garbage token", "truxe_verify_garbage", "ref_verify_garbage", "select1", ""),
    ("inspect_magic_link", "truxe_inspect", "ref_inspect", "pk_select", ""),
    ("validate_session, 1M sessions (each call writes last_used_at)", "truxe_validate", "ref_validate", "pk_select", ""),
    ("validate_session, 10k active sessions, each touched once in the run", "truxe_validate_active", "ref_validate_active", "pk_select_active", ""),
    ("validate_session, 10k active sessions, read path (touched in the run before)", "truxe_validate_read", "ref_validate_active", "pk_select_active", "≥ 0.8× pk-select"),
    # the "vs reference" column is against the row above, in the same rounds
    ("validate_session, 10k active sessions, idle timeout on (vs the read path)", "truxe_validate_policies", "truxe_validate_read", "pk_select_active", "≥ 0.95× validate_session"),
    # no reference implementation: the "vs reference" column is against validate_session (1M)
    ("verify_totp, 10k factors (vs validate_session)", "truxe_verify_totp", "truxe_validate", "pk_select", "≥ 0.8× validate_session"),
    ("get_secret with its audit row, 10k orgs (vs validate_session)", "truxe_get_secret", "truxe_validate", "pk_select", "≥ 0.8× validate_session"),
    ("create_session + refresh_session", "truxe_create_refresh", "ref_create_refresh", "upsert_many", ""),
    ("invitation: invite_by_email + accept_invitation_token (new user)", "truxe_invite_accept", "ref_invite_accept", "floor_invite_accept", "≥ 1.2× ref"),
    ("rate_limit_hit, one hot key", "truxe_rate_hot", "ref_rate_hot", "upsert_hot", "≥ 0.9× upsert"),
    ("rate_limit_hit, 100k keys", "truxe_rate_many", "ref_rate_many", "upsert_many", "≥ 0.9× upsert"),
    ("record_usage", "truxe_usage", "ref_usage", "upsert_many", "≥ 0.9× upsert"),
    ("authenticate, 10k active sessions", "truxe_authenticate_active", None, "truxe_validate_active", "≥ 0.9× validate_session"),
    ("authenticate_api_key, 1k keys (key read from a table in the same statement)", "truxe_authenticate_api_key", None, "truxe_validate_active", "≥ 0.9× validate_session"),
    ("has_permission", "truxe_has_permission", "ref_has_permission", "pk_select", ""),
    ("accessible_org_ids (in a transaction)", "truxe_accessible", "ref_accessible", "pk_select", ""),
    ("parent change, walk of 1 (1 client)", "truxe_parent_1", "ref_parent_1", None, ""),
    ("parent change, walk of 8 (1 client)", "truxe_parent_8", "ref_parent_8", None, ""),
    ("parent change, walk of 32 (1 client)", "truxe_parent_32", "ref_parent_32", None, "≥ 2× ref"),
]


# == 0.1.0 in the same run (bench/v010) ==
# a truxe run with a twin on the 0.1.0 server (v010_<name without truxe_>) gets a "vs 0.1.0"
# figure, with 0.1.0's TPS, in a last column (the rows below the table's main loop have
# none), and the target that issue 20 sets: at least 0.95× 0.1.0's TPS
V010_TARGET = "≥ 0.95× 0.1.0"


def round_count(name, r):
    n = 0
    for path in glob.glob(os.path.join(work, f"{name}.{r}.[0-9]*")):
        with open(path) as f:
            n += sum(1 for line in f if line.strip())
    return n


def by_round(run, other, at_least=1.0):
    """In how many rounds `run` did at least `at_least` times the transactions of `other`
    beside it, and the median of the rounds' ratios (a slow moment of the machine moves one
    round, not the median)."""
    pairs = [(round_count(run, r), round_count(other, r)) for r in range(1, rounds + 1)]
    won = sum(1 for t, o in pairs if o and t >= at_least * o)
    per_round = sorted(t / o for t, o in pairs if o)
    mid = len(per_round) // 2
    median = (per_round[mid] + per_round[~mid]) / 2 if per_round else 0.0
    return won, median


def vs_v010(run):
    """The TPS ratio over all rounds, 0.1.0's TPS, and by_round's figures against it."""
    name = "v010_" + run.removeprefix("truxe_")
    v, s = stats(name), stats(run)
    if not (s and v):
        return ""
    won, median = by_round(run, name)
    return f"{ratio(s, v)} ({v['tps']:.0f}; ≥ in {won}/{rounds} rounds; median round {median:.2f}×)"


def vs_ref(run, ref, target):
    """The TPS ratio over all rounds against the reference; for a target of "≥ N× ref",
    with by_round's figures against N."""
    s, rs = stats(run), stats(ref) if ref else None
    text = ratio(s, rs)
    if not (s and rs and target.startswith("≥ ") and target.endswith("× ref")):
        return text
    won, median = by_round(run, ref, float(target[2:-5]))
    return f"{text} (≥ target in {won}/{rounds} rounds; median round {median:.2f}×)"


def with_v010_target(run, target):
    if not stats("v010_" + run.removeprefix("truxe_")):
        return target
    return f"{target}; {V010_TARGET}" if target else V010_TARGET


out = [
    f"Machine: {machine}. Data: {dataset}.",
    f"pgbench -M prepared over the Unix socket, {clients} clients (parent changes: 1), "
    f"{rounds} rounds × {seconds:g} s per command, compared commands back to back within each round, truxe's first in odd rounds and last in even ones.",
    "",
    "| operation | TPS | p50 ms | p99 ms | vs reference (TPS) | vs ceiling (TPS) | target | vs 0.1.0 (its TPS) |",
    "|---|---:|---:|---:|---:|---:|---|---:|",
]
ceilings = [("SELECT 1", "select1"), ("primary-key select", "pk_select"),
            ("primary-key select, 10k hot rows", "pk_select_active"),
            ("one-row upsert, 100k keys", "upsert_many"), ("one-row upsert, one hot key", "upsert_hot")]
for label, run in ceilings:
    s = stats(run)
    if s:
        out.append(f"| *ceiling:* {label} | {s['tps']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | | | |")
# invite + accept's floor (issue 12): the pair's writes alone, no checks, no token
# (bench/sql/floor_invite_accept.sql). Its "vs reference" is the most any implementation
# that makes those writes could reach against the reference
fl = stats("floor_invite_accept")
if fl:
    out.append(
        f"| *ceiling:* invite + accept, the writes alone | {fl['tps']:.0f} | {fl['p50']:.3f} | {fl['p99']:.3f} | "
        f"{ratio(fl, stats('ref_invite_accept'))} | | |"
    )
for label, t, r, c, target in rows:
    s, cs = stats(t), stats(c) if c else None
    if not s:
        continue
    out.append(
        f"| {label} | {s['tps']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | {vs_ref(t, r, target)} | "
        f"{ratio(s, cs) if cs else '–'} ({c or 'n/a'}) | {with_v010_target(t, target)} | {vs_v010(t)} |"
    )
for label, logged, unlogged in [("one hot key", "truxe_rate_hot", "rate_hot_unlogged"),
                                 ("100k keys", "truxe_rate_many", "rate_many_unlogged")]:
    s, un = stats(logged), stats(unlogged)
    if s and un:
        out.append(
            f"| rate_limit_hit, {label}, UNLOGGED table | {un['tps']:.0f} | {un['p50']:.3f} | {un['p99']:.3f} | "
            f"| {un['tps'] / s['tps']:.2f}× the logged table's TPS | |"
        )
a, u = stats("rls_authenticated"), stats("rls_superuser")
if a and u:
    out.append(
        f"| tenant membership list as `authenticated` (RLS) | {a['tps']:.0f} | {a['p50']:.3f} | {a['p99']:.3f} | "
        f"| latency p50 {a['p50'] / u['p50']:.2f}× the superuser's explicit `WHERE` ({u['p50']:.3f} ms) | ≤ 1.15× |"
    )


def statement_ms(name, needle):
    """Mean latency (ms) of the statement containing `needle`, over the rounds' pgbench -r
    reports (NAME.ROUND.out)."""
    ms = []
    for path in glob.glob(os.path.join(work, f"{name}.[0-9]*.out")):
        with open(path) as f:
            for line in f:
                parts = line.split(None, 2)
                if len(parts) == 3 and needle in parts[2]:
                    try:
                        ms.append(float(parts[0]))
                    except ValueError:
                        pass
    return sum(ms) / len(ms) if ms else None


v = statement_ms("rls_verified", "FROM truxe.memberships")
st = statement_ms("rls_setting", "FROM truxe.memberships")
if v and st:
    out.append(
        f"| tenant membership list under a verified identity (`authenticate`), 1 client | | {v:.3f} (mean) | | "
        f"| latency {v / st:.2f}× the same list under `app.current_user_id` ({st:.3f} ms) | ≤ 1.05× |"
    )
m = stats("metrics", 1)  # once, before the rounds (bench/run)
if m:
    out.append(
        f"| `truxe.metrics()`, 1 client | {m['tps']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | "
        f"| p50 {m['p50']:.1f} ms | < 100 ms |"
    )
q, cl = stats("oltp_quiet", 1), stats("oltp_cleanup", 1)
if q and cl:
    out.append(
        f"| OLTP (validate_session) p99 during cleanup_expired_data | {cl['tps']:.0f} | {cl['p50']:.3f} | {cl['p99']:.3f} | "
        f"| p99 {cl['p99'] / q['p99']:.2f}× the quiet run's ({q['p99']:.3f} ms) | ≤ 2× |"
    )
a, u = stats("app_rls_authenticated"), stats("app_rls_superuser")
if a and u:
    out.append(
        f"| application table (`protect_table`) list as `authenticated` (RLS) | {a['tps']:.0f} | {a['p50']:.3f} | {a['p99']:.3f} | "
        f"| latency p50 {a['p50'] / u['p50']:.2f}× the superuser's same query ({u['p50']:.3f} ms) | ≤ 1.15× |"
    )


def window_tps(name, start, end):
    """Transactions of run `name` (round 1) completed between start and end (epoch
    seconds, clipped to the run), per second."""
    done = []
    for path in glob.glob(os.path.join(work, f"{name}.1.[0-9]*")):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 6:
                    done.append(int(p[4]) + int(p[5]) / 1e6)
    if not done:
        return None
    lo, hi = max(start, min(done)), min(end, max(done))
    n = sum(1 for t in done if lo <= t <= hi)
    return n / (hi - lo) if hi > lo else None


seal_out = os.path.join(work, "seal.out")
# the writers alone before and after the sealer, each as long as the run beside it
quiet = [window_tps(n, 0, float("inf")) for n in ("audit_write_before", "audit_write_after")]
quiet = [q for q in quiet if q]
if quiet and os.path.exists(seal_out):
    q = sum(quiet) / len(quiet)
    start, end, sealed = open(seal_out).read().split()
    start, end = float(start), float(end)
    during = window_tps("audit_write_sealing", start, end)
    verify = None
    if os.path.exists(os.path.join(work, "verify.out")):
        v0, v1 = map(float, open(os.path.join(work, "verify.out")).read().split())
        verify = v1 - v0
    out.append(
        f"| `seal_audit_log` of {int(sealed)} rows (max_rows 10000, rest 9) | | | | "
        f"| {end - start:.1f} s; audit writes meanwhile {during or 0:.0f}/s = "
        f"{(during or 0) / q:.2f}× the writers alone before and after ({' and '.join(f'{x:.0f}' for x in quiet)}/s)"
        + (f"; `verify_audit_log` of the same rows (no pauses): {verify:.1f} s" if verify else "")
        + " | ≥ 0.9× |"
    )
print("\n".join(out))
