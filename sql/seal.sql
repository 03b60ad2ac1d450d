-- Sealed audit log (docs/security.md, "Sealed audit log"). truxe.seal_audit_log() appends
-- to truxe.audit_seals a chain over the audit rows written since the last seal — HMAC-SHA-256
-- under a key derived from the key file (truxe.encryption_key_file) when one is set, plain
-- SHA-256 otherwise (the MAC is computed and checked in Rust, src/seal.rs: the key never
-- reaches SQL);
-- truxe.verify_audit_log(from, to) recomputes it and names the first seal whose rows no
-- longer match. Audit writers never wait for the sealer: the sealer waits for them.
--
-- Which rows a seal covers. Every seal covers the id range (after_id, to_id] of
-- truxe.audit_logs, contiguous with the previous seal's. Ids are handed out in nextval
-- order, not in commit order, so a seal may only end at a horizon below which no
-- transaction can still add a row. seal_audit_log reads the horizon H = the sequence's last
-- value (every id <= H has been handed out), then waits until every transaction that holds
-- a write lock on audit_logs at that moment has ended (truxe.wait_for_audit_writers: a
-- transaction takes that lock before its INSERT draws an id, so any writer still able to add
-- a row with id <= H is among them) — the way CREATE INDEX CONCURRENTLY waits out older
-- transactions: new writers do not queue behind it. After the wait, the rows with id <= H are
-- final.
--
-- Backdated rows. created_at is the inserting transaction's start, so a row with a new id
-- may legitimately be older than the seal before it — but not older than the oldest
-- transaction running when that seal read its horizon. Each seal records that bound
-- (floor_at, taken before the horizon, less one second): a row with an id above the seal's
-- range and a created_at below its floor was not written by a transaction of its time.

CREATE TABLE truxe.audit_seals (
  id             bigserial PRIMARY KEY,
  after_id       bigint NOT NULL,
  to_id          bigint NOT NULL,
  row_count      bigint NOT NULL,
  rows_hash      bytea NOT NULL,
  min_created_at timestamptz,
  max_created_at timestamptz,
  floor_at       timestamptz NOT NULL,
  prev_hash      bytea NOT NULL,
  seal_hash      bytea NOT NULL,
  -- NULL: seal_hash is SHA-256 (a plain seal). Else the id of the key file's line whose
  -- audit sealing key computed seal_hash as an HMAC-SHA-256 (an HMAC seal).
  key_id         text,
  sealed_at      timestamptz NOT NULL DEFAULT now(),
  -- an HMAC seal's key check value (src/crypto.rs): tells another key under the same id
  -- from an altered seal; NULL for a plain seal
  key_check      bytea,
  CONSTRAINT seal_range CHECK (after_id >= 0 AND to_id >= after_id),
  CONSTRAINT seal_row_count CHECK (row_count >= 0),
  CONSTRAINT seal_hash_lengths CHECK (length(rows_hash) = 32 AND length(prev_hash) = 32
                                      AND length(seal_hash) = 32),
  CONSTRAINT seal_key CHECK ((key_id IS NULL) = (key_check IS NULL)
                             AND (key_check IS NULL OR length(key_check) = 8))
);
COMMENT ON TABLE truxe.audit_seals IS
  'HMAC-SHA-256 (under the key file) or SHA-256 chain over truxe.audit_logs: written by truxe.seal_audit_log(), checked by truxe.verify_audit_log()';
SELECT pg_catalog.pg_extension_config_dump('truxe.audit_seals', '');
SELECT pg_catalog.pg_extension_config_dump('truxe.audit_seals_id_seq', '');
-- deny by default; the trusted backend reads the seals (to copy the latest seal_hash out of
-- the database, where a superuser cannot rewrite it); only seal_audit_log writes them
ALTER TABLE truxe.audit_seals ENABLE ROW LEVEL SECURITY;
CREATE POLICY service_read ON truxe.audit_seals FOR SELECT TO service_account USING (true);

-- Append-only, as audit_logs: UPDATE, DELETE and TRUNCATE raise 55000, for every role, also
-- under session_replication_role = replica (ENABLE ALWAYS).
CREATE FUNCTION truxe.audit_seals_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RAISE EXCEPTION 'truxe.audit_seals is append-only: % is not allowed', lower(TG_OP)
    USING ERRCODE = '55000';
END
$$;
CREATE TRIGGER audit_seals_append_only
  BEFORE UPDATE OR DELETE OR TRUNCATE ON truxe.audit_seals
  FOR EACH STATEMENT EXECUTE FUNCTION truxe.audit_seals_append_only();
ALTER TABLE truxe.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only;

-- The audit rows with after_id < id <= to_id: how many, the SHA-256 over their digests in id
-- order, and their oldest and newest created_at. A row's digest is the SHA-256 of its
-- columns as a row literal, the columns named one by one (a column a later version adds
-- does not change the digest of rows sealed before it), with DateStyle and TimeZone pinned
-- so that no session setting changes the text of created_at.
CREATE FUNCTION truxe.audit_rows_digest(after_id bigint, to_id bigint,
                                        OUT row_count bigint, OUT rows_hash bytea,
                                        OUT min_created_at timestamptz, OUT max_created_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET TimeZone = 'UTC' AS $$
  SELECT count(*),
         sha256(coalesce(string_agg(sha256(textsend(ROW(
                  a.id, a.org_id, a.actor_user_id, a.action, a.target_type, a.target_id, a.details,
                  a.ip, a.user_agent, a.request_id, a.created_at)::text)), ''::bytea ORDER BY a.id),
                ''::bytea)),
         min(a.created_at), max(a.created_at)
    FROM truxe.audit_logs a
   WHERE a.id > audit_rows_digest.after_id AND a.id <= audit_rows_digest.to_id;
$$;

-- What a seal's hash covers: the previous seal's hash and this seal's fields (all but id,
-- seal_hash, sealed_at and key_check), key_id included.
CREATE FUNCTION truxe.audit_seal_message(s truxe.audit_seals)
RETURNS bytea LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT s.prev_hash || convert_to(jsonb_build_array(
           s.after_id, s.to_id, s.row_count, encode(s.rows_hash, 'hex'),
           s.min_created_at AT TIME ZONE 'UTC', s.max_created_at AT TIME ZONE 'UTC',
           s.floor_at AT TIME ZONE 'UTC', s.key_id)::text, 'UTF8');
$$;

-- A plain seal's hash: SHA-256 of its message (an HMAC seal's needs the key: src/seal.rs).
CREATE FUNCTION truxe.audit_seal_hash(s truxe.audit_seals)
RETURNS bytea LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT sha256(truxe.audit_seal_message(s));
$$;

-- Seals every audit row written since the last seal, in seals of at most max_rows rows, and
-- returns how many rows it sealed (each seal written by truxe.append_audit_seal: HMAC under
-- the key file's current key when one is set; 55000 without one once the chain has an HMAC
-- seal, or with an unusable key file). With nothing new it still appends an empty seal: its
-- floor_at moves the bound for backdated rows forward. After each seal but the last it
-- sleeps `rest` times as long as that seal took (0: never; 4: the sealer uses about a fifth
-- of a core), so that a large backlog does not take a core from the writers. One sealer at a time (a lock on
-- audit_seals, which audit writers never take); it waits for the audit writers in flight
-- (lock_timeout bounds the wait) but never blocks one. Runs at READ COMMITTED only (55000:
-- after the wait it must see what those writers committed). Schedule it like
-- cleanup_expired_data. service_account only, on the Citus coordinator (55000 on a worker).
-- max_rows < 1, rest outside 0..100: 22023.
CREATE FUNCTION truxe.seal_audit_log(max_rows integer DEFAULT 100000, rest double precision DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  last truxe.audit_seals;
  horizon bigint;
  last_floor timestamptz;
  seal_floor timestamptz;
  new_floor timestamptz;
  lo bigint;
  hi bigint;
  total bigint := 0;
  started timestamptz;
  on_worker boolean;
BEGIN
  IF max_rows IS NULL OR max_rows < 1 THEN
    RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = '22023';
  END IF;
  IF rest IS NULL OR NOT (rest >= 0 AND rest <= 100) THEN
    RAISE EXCEPTION 'rest must be between 0 and 100' USING ERRCODE = '22023';
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'seal_audit_log runs at READ COMMITTED only: it must see the rows committed while it waits'
      USING ERRCODE = '55000';
  END IF;
  IF (SELECT q.seqcache FROM pg_sequence q WHERE q.seqrelid = 'truxe.audit_logs_id_seq'::regclass) <> 1 THEN
    RAISE EXCEPTION 'truxe.audit_logs_id_seq must have CACHE 1: cached ids would be drawn after the horizon'
      USING ERRCODE = '55000';
  END IF;
  -- on Citus the seals are one chain on every node (a reference table), sealed in the
  -- order of the coordinator's lock and ids: a worker's own sequence of audit ids is not
  -- the horizon, and its lock serialises nothing (docs/scaling.md)
  IF pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL THEN
    EXECUTE 'SELECT g.groupid <> 0 FROM pg_catalog.pg_dist_local_group g' INTO on_worker;
    IF on_worker THEN
      RAISE EXCEPTION 'seal_audit_log runs on the Citus coordinator, not on a worker'
        USING ERRCODE = '55000';
    END IF;
  END IF;
  LOCK TABLE truxe.audit_seals IN SHARE ROW EXCLUSIVE MODE;
  SELECT * INTO last FROM truxe.audit_seals x ORDER BY x.id DESC LIMIT 1;
  -- 1. the floor: no transaction that draws an id after step 2 started before it
  PERFORM pg_stat_clear_snapshot();
  SELECT least(now(), min(a.xact_start)) - interval '1 second' INTO new_floor
    FROM pg_stat_activity a WHERE a.datname = current_database();
  -- 2. the horizon: every id up to it has been handed out
  SELECT CASE WHEN q.is_called THEN q.last_value ELSE q.last_value - 1 END INTO horizon
    FROM truxe.audit_logs_id_seq q;
  -- 3. the writers that may still hold such an id end
  PERFORM truxe.wait_for_audit_writers();
  lo := coalesce(last.to_id, 0);
  last_floor := last.floor_at;
  horizon := greatest(horizon, lo);
  LOOP
    started := clock_timestamp();
    hi := coalesce((SELECT a.id FROM truxe.audit_logs a WHERE a.id > lo AND a.id <= horizon
                     ORDER BY a.id OFFSET max_rows - 1 LIMIT 1), horizon);
    seal_floor := CASE WHEN hi = horizon THEN greatest(new_floor, last_floor)
                       ELSE coalesce(last_floor, '-infinity') END;
    total := total + truxe.append_audit_seal(lo, hi, seal_floor);
    last_floor := seal_floor;
    lo := hi;
    EXIT WHEN hi >= horizon;
    IF rest > 0 THEN
      PERFORM pg_sleep(rest * extract(epoch FROM clock_timestamp() - started)::double precision);
    END IF;
  END LOOP;
  RETURN total;
END
$$;

-- Checks the seals covering audit rows created between "from" and "to" (and the rows
-- written since the latest seal): the chain links, each seal's own hash (an HMAC seal's under
-- its key, truxe.audit_seal_verifies), each seal's rows (count and hash), that no row is
-- older than the floor that applies to it, that no plain seal follows an HMAC seal, and that
-- the latest seal is an HMAC seal when a key file is set. One row: ok, how many seals were
-- checked, and for the first failure the seal and why (deleted, inserted or changed rows, a
-- backdated row, an altered seal, a broken or downgraded chain); on success how many were
-- HMAC seals. What a recomputed chain cannot show, and how to anchor it: docs/security.md.
-- service_account only. "from" > "to" or a NULL bound: 22023. An HMAC seal in the period and
-- no key file, a key file without that seal's key or with another key under its id: 55000.
CREATE FUNCTION truxe.verify_audit_log("from" timestamptz DEFAULT '-infinity',
                                       "to" timestamptz DEFAULT 'infinity')
RETURNS TABLE(ok boolean, seals_checked bigint, seal_id bigint, reason text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  s truxe.audit_seals;
  prev truxe.audit_seals;
  latest truxe.audit_seals;
  d record;
  bad record;
  first_seal bigint;
  last_seal bigint;
  n bigint := 0;
  hmac_seals bigint := 0;
  current_key text;
BEGIN
  IF verify_audit_log."from" IS NULL OR verify_audit_log."to" IS NULL
     OR verify_audit_log."from" > verify_audit_log."to" THEN
    RAISE EXCEPTION 'verify_audit_log needs "from" <= "to"' USING ERRCODE = '22023';
  END IF;
  SELECT min(x.id) INTO first_seal FROM truxe.audit_seals x
   WHERE coalesce(x.max_created_at, x.sealed_at) >= verify_audit_log."from";
  SELECT max(x.id) INTO last_seal FROM truxe.audit_seals x
   WHERE coalesce(x.min_created_at, x.sealed_at) <= verify_audit_log."to";
  SELECT * INTO prev FROM truxe.audit_seals x WHERE x.id < first_seal ORDER BY x.id DESC LIMIT 1;
  FOR s IN SELECT * FROM truxe.audit_seals x WHERE x.id BETWEEN first_seal AND last_seal ORDER BY x.id LOOP
    n := n + 1;
    IF s.prev_hash IS DISTINCT FROM coalesce(prev.seal_hash, decode(repeat('00', 32), 'hex'))
       OR s.after_id IS DISTINCT FROM coalesce(prev.to_id, 0) THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'the chain is broken: seal %s does not follow %s (a seal was removed or rewritten)',
        s.id, coalesce('seal ' || prev.id, 'the start of the chain'));
      RETURN;
    END IF;
    IF s.key_id IS NULL AND prev.key_id IS NOT NULL THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'the chain was downgraded: seal %s is a plain SHA-256 seal after seal %s, an HMAC seal under key %s (seal_audit_log never does that: the seals from %s on were recomputed without the key)',
        s.id, prev.id, prev.key_id, s.id);
      RETURN;
    END IF;
    IF NOT truxe.audit_seal_verifies(s.id, s.key_id, s.key_check, truxe.audit_seal_message(s),
                                     s.seal_hash) THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'seal %s was altered: its %s does not match its fields', s.id,
        CASE WHEN s.key_id IS NULL THEN 'hash' ELSE 'HMAC under key ' || s.key_id END);
      RETURN;
    END IF;
    IF s.key_id IS NOT NULL THEN
      hmac_seals := hmac_seals + 1;
    END IF;
    d := truxe.audit_rows_digest(s.after_id, s.to_id);
    IF d.row_count <> s.row_count THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'rows were %s: seal %s (audit ids %s to %s) sealed %s rows, %s are there now',
        CASE WHEN d.row_count < s.row_count THEN 'deleted' ELSE 'inserted' END,
        s.id, s.after_id + 1, s.to_id, s.row_count, d.row_count);
      RETURN;
    END IF;
    IF d.rows_hash IS DISTINCT FROM s.rows_hash THEN
      RETURN QUERY SELECT false, n, s.id, format(
        'rows were changed: the rows of seal %s (audit ids %s to %s) no longer hash to the sealed value',
        s.id, s.after_id + 1, s.to_id);
      RETURN;
    END IF;
    IF d.min_created_at < prev.floor_at THEN
      SELECT a.id, a.created_at INTO bad FROM truxe.audit_logs a
       WHERE a.id > s.after_id AND a.id <= s.to_id AND a.created_at < prev.floor_at
       ORDER BY a.id LIMIT 1;
      RETURN QUERY SELECT false, n, s.id, format(
        'a backdated row was sealed: audit row %s of seal %s has created_at %s, before the floor %s of seal %s',
        bad.id, s.id, bad.created_at, prev.floor_at, prev.id);
      RETURN;
    END IF;
    prev := s;
  END LOOP;
  SELECT * INTO latest FROM truxe.audit_seals x ORDER BY x.id DESC LIMIT 1;
  IF latest.id IS NULL THEN
    RETURN QUERY SELECT true, n, NULL::bigint, 'no seal yet: run truxe.seal_audit_log()'::text;
    RETURN;
  END IF;
  SELECT a.id, a.created_at INTO bad FROM truxe.audit_logs a
   WHERE a.id > latest.to_id AND a.created_at < latest.floor_at
     AND a.created_at >= verify_audit_log."from" AND a.created_at <= verify_audit_log."to"
   ORDER BY a.id LIMIT 1;
  IF FOUND THEN
    RETURN QUERY SELECT false, n, latest.id, format(
      'a backdated row was written after seal %s: audit row %s has created_at %s, before that seal''s floor %s',
      latest.id, bad.id, bad.created_at, latest.floor_at);
    RETURN;
  END IF;
  current_key := truxe.audit_seal_key_id();
  IF latest.key_id IS NULL AND current_key IS NOT NULL THEN
    RETURN QUERY SELECT false, n, latest.id, format(
      'the latest seal %s is a plain SHA-256 seal although the key file is set (key %s): the chain may have been recomputed without the key; if the key file was set only since that seal, run truxe.seal_audit_log() and verify again',
      latest.id, current_key);
    RETURN;
  END IF;
  RETURN QUERY SELECT true, n, NULL::bigint, format('%s seals verified (%s HMAC, %s plain SHA-256)',
                                                    n, hmac_seals, n - hmac_seals);
END
$$;
