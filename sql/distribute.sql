-- Scale-out on Citus (docs/scaling.md, "Past one primary: Citus"): truxe.distribute() turns
-- the truxe tables of a new database into Citus tables. Single-node installs never call it,
-- so nothing here changes their schema, policies or plans: every change a placement needs
-- (a key without the distribution column dropped) is made by distribute() itself, at
-- distribution time, on empty tables.
--
-- Placement today: the tables addressed by a bearer value or a hashed key and read only by
-- truxe's own functions are distributed by what their lookup uses (magic_link_challenges
-- by id: verify_magic_link is single-shard; rate_limits by key_hash: rate_limit_hit is
-- single-shard and exact under concurrency; sessions by jti_hash: validate_session and
-- authenticate are single-shard); organizations by id and audit_logs, usage_metrics,
-- secrets, invitations, api_keys and memberships by org_id, colocated; mfa_factors and
-- mfa_recovery_codes by user_id, colocated with each other (each org's rows in the shard
-- of its id; their policies, and the sessions' one, read the signed claim of
-- src/claim.rs). organizations and memberships keep a copy on the coordinator, which truxe
-- reads and writes and which writes them (below); api_key_orgs there gives an API key's
-- org by its id, so that authenticate_api_key reads one shard, and mfa_factor_users a TOTP
-- factor's user, so that verify_totp does. users, org_closure and org_tree stay on
-- the coordinator (docs/scaling.md gives the reasons). The foreign keys from distributed
-- tables to organizations and users go; two statement triggers on the coordinator's users
-- and organizations (its copy) do their ON DELETE work instead. The small, rarely written tables
-- audit_seals and role_permissions become reference tables (a copy on every node, the
-- coordinator's included); has_permission and permitted_org_ids read the coordinator's copy
-- of role_permissions directly (see there).

-- Runs once on the coordinator of a new database: superuser only (it changes the
-- extension's tables). Returns every truxe table with its placement ('distributed by
-- <column>', 'reference' or 'coordinator'). 55000 when Citus is not installed, when not on
-- the coordinator, when the coordinator is not in Citus' metadata (citus_set_coordinator_host:
-- it must hold a copy of the reference tables), when already distributed, or when a table
-- already holds rows (other than role_permissions, which holds the default role rights from
-- the start); 42501 for a caller that is not a superuser.
CREATE FUNCTION truxe.distribute()
RETURNS TABLE (table_name text, placement text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t name;
  has_rows boolean;
  is_coordinator boolean;
  propagate text;
  tables_owner name;
  rp_shard bigint;
  reader regprocedure;
  definition text;
BEGIN
  IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    RAISE EXCEPTION 'truxe.distribute() must be run by a superuser' USING ERRCODE = '42501';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
    RAISE EXCEPTION 'truxe.distribute() needs Citus: run CREATE EXTENSION citus first'
      USING ERRCODE = '55000', HINT = 'see docs/scaling.md';
  END IF;
  -- Citus' own catalog, read through EXECUTE: it exists only where Citus is installed
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_local_group WHERE groupid = 0)'
    INTO is_coordinator;
  IF NOT is_coordinator THEN
    RAISE EXCEPTION 'truxe.distribute() runs on the Citus coordinator, not on a worker'
      USING ERRCODE = '55000';
  END IF;
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                           WHERE p.logicalrelid = ''truxe.rate_limits''::regclass)'
    INTO has_rows;
  IF has_rows THEN
    RAISE EXCEPTION 'truxe is already distributed in this database' USING ERRCODE = '55000';
  END IF;
  FOR t IN
    SELECT c.relname FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind = 'r'
       AND c.relname <> 'role_permissions'
     ORDER BY c.relname
  LOOP
    EXECUTE format('SELECT EXISTS (SELECT FROM truxe.%I)', t) INTO has_rows;
    IF has_rows THEN
      RAISE EXCEPTION 'truxe.distribute() converts a new database only: truxe.% holds rows', t
        USING ERRCODE = '55000', HINT = 'docs/scaling.md gives the steps for a database with data';
    END IF;
  END LOOP;
  -- the reference tables need a copy on the coordinator (has_permission reads it there)
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_node n WHERE n.groupid = 0)'
    INTO is_coordinator;
  IF NOT is_coordinator THEN
    RAISE EXCEPTION 'truxe.distribute() needs the coordinator in Citus'' metadata: run citus_set_coordinator_host first'
      USING ERRCODE = '55000', HINT = 'see docs/scaling.md';
  END IF;

  -- the claim functions of audit_logs' Citus policies (below), first: Citus propagates a
  -- function to the workers only before any parallel operation on a distributed table in
  -- the transaction. No SET search_path: they resolve no name (no SPI), and a SET would
  -- cost a setting's save and restore per row of every audit read
  CREATE FUNCTION truxe.claim_user() RETURNS uuid
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_user_wrapper';
  CREATE FUNCTION truxe.claim_administers(org_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_administers_wrapper';
  CREATE FUNCTION truxe.claim_may_act_in(org_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_may_act_in_wrapper';
  CREATE FUNCTION truxe.claim_org() RETURNS uuid
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_org_wrapper';
  CREATE FUNCTION truxe.claim_invited_to(org_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS '$libdir/truxe', 'claim_invited_to_wrapper';
  -- … and the guard of the distributed memberships and organizations (below), which runs
  -- on the shards: a write reaches them only from the coordinator's copy (the trigger's
  -- arguments: the table, its copy), whose trigger turns truxe.copy_write on around it;
  -- anything else (a superuser's or the owner's direct write, which would leave the copy
  -- behind) is 55000
  CREATE FUNCTION truxe.citus_written_through_copy() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $guard$
  BEGIN
    IF pg_catalog.current_setting('truxe.copy_write', true) IS DISTINCT FROM 'on' THEN
      RAISE EXCEPTION 'on Citus, truxe.% is written through truxe.%', TG_ARGV[0], TG_ARGV[1]
        USING ERRCODE = '55000',
              HINT = pg_catalog.format('write truxe.%s (or call truxe''s functions): see docs/scaling.md',
                                       TG_ARGV[1]);
    END IF;
    RETURN NULL;
  END
  $guard$;
  REVOKE ALL ON FUNCTION truxe.citus_written_through_copy() FROM PUBLIC;
  REVOKE ALL ON FUNCTION truxe.claim_user(), truxe.claim_administers(uuid),
    truxe.claim_may_act_in(uuid), truxe.claim_org(), truxe.claim_invited_to(uuid) FROM PUBLIC;
  GRANT EXECUTE ON FUNCTION truxe.claim_user(), truxe.claim_administers(uuid),
    truxe.claim_may_act_in(uuid), truxe.claim_org(), truxe.claim_invited_to(uuid)
    TO authenticated, service_account;

  -- what the foreign keys that the conversion drops below did (sql/schema.sql,
  -- sql/vault.sql, sql/invitations.sql, sql/api_keys.sql, sql/mfa.sql): users and the
  -- copy of organizations are plain tables on the coordinator, where a trigger may write a
  -- distributed table. After a DELETE of organizations, the orgs' rows of the distributed tables whose
  -- key to organizations was ON DELETE CASCADE go (sessions, usage_metrics, secrets,
  -- invitations, api_keys; audit_logs had no key: its rows stay, as on a single node).
  -- After a DELETE of users, their sessions, factors and recovery codes go (CASCADE), and
  -- invitations.invited_by/accepted_by and api_keys.created_by become NULL (SET NULL).
  -- One statement per table for the whole DELETE (a statement trigger with the deleted
  -- rows' transition table), at the end of the statement like the foreign keys' actions;
  -- a DELETE that removes no row changes nothing. The functions run as the owner of the
  -- tables (SECURITY DEFINER, owned below by audit_logs' owner), the role truxe writes
  -- every distributed row as (Citus refuses a transaction that writes a shard as two
  -- roles, 25001); nobody else may execute them. Created before any parallel operation,
  -- like the claim functions
  CREATE FUNCTION truxe.citus_organizations_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cascade$
  DECLARE
    ids uuid[];
  BEGIN
    SELECT pg_catalog.array_agg(g.id) INTO ids FROM gone g;
    IF ids IS NULL THEN
      RETURN NULL;
    END IF;
    DELETE FROM truxe.sessions s WHERE s.org_id = ANY (ids);
    DELETE FROM truxe.usage_metrics u WHERE u.org_id = ANY (ids);
    DELETE FROM truxe.secrets s WHERE s.org_id = ANY (ids);
    DELETE FROM truxe.invitations i WHERE i.org_id = ANY (ids);
    DELETE FROM truxe.api_keys k WHERE k.org_id = ANY (ids);
    RETURN NULL;
  END
  $cascade$;
  CREATE FUNCTION truxe.citus_users_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cascade$
  DECLARE
    ids uuid[];
  BEGIN
    SELECT pg_catalog.array_agg(g.id) INTO ids FROM gone g;
    IF ids IS NULL THEN
      RETURN NULL;
    END IF;
    DELETE FROM truxe.sessions s WHERE s.user_id = ANY (ids);
    DELETE FROM truxe.mfa_factors f WHERE f.user_id = ANY (ids);
    DELETE FROM truxe.mfa_recovery_codes r WHERE r.user_id = ANY (ids);
    UPDATE truxe.invitations i
       SET invited_by = CASE WHEN i.invited_by = ANY (ids) THEN NULL ELSE i.invited_by END,
           accepted_by = CASE WHEN i.accepted_by = ANY (ids) THEN NULL ELSE i.accepted_by END
     WHERE i.invited_by = ANY (ids) OR i.accepted_by = ANY (ids);
    UPDATE truxe.api_keys k SET created_by = NULL WHERE k.created_by = ANY (ids);
    RETURN NULL;
  END
  $cascade$;
  -- … and the keys' refusal (NO ACTION, checked at the end of the statement) of an UPDATE
  -- that changes the id of an org or a user whom distributed rows still name: 23503 with
  -- the dropped key's name, as on a single node (an old id that another row holds again
  -- at the end of the statement is no violation, as there). Row triggers with a WHEN: an
  -- UPDATE that keeps the ids runs no function. One function for both tables: each
  -- trigger names the dropped keys' columns as its arguments
  CREATE FUNCTION truxe.citus_id_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cascade$
  DECLARE
    ref text;
    tbl text;
    named boolean;
  BEGIN
    -- (one row or none, not EXISTS: Citus cannot plan a zero-column subquery over a
    -- distributed table)
    EXECUTE pg_catalog.format('SELECT true FROM truxe.%I WHERE id = $1 LIMIT 1', TG_TABLE_NAME)
      INTO named USING OLD.id;
    IF named THEN
      RETURN NULL;
    END IF;
    -- the trigger's arguments: the dropped keys' columns, 'table.column', in the order
    -- the error names the first that still holds the old id
    FOREACH ref IN ARRAY TG_ARGV LOOP
      tbl := pg_catalog.split_part(ref, '.', 1);
      EXECUTE pg_catalog.format('SELECT true FROM truxe.%I WHERE %I = $1 LIMIT 1',
                                tbl, pg_catalog.split_part(ref, '.', 2))
        INTO named USING OLD.id;
      IF named THEN
        RAISE EXCEPTION 'update or delete on table "%" violates foreign key constraint "%_%_fkey" on table "%"',
          TG_TABLE_NAME, tbl, pg_catalog.split_part(ref, '.', 2), tbl
          USING ERRCODE = '23503',
                DETAIL = pg_catalog.format('Key (id)=(%s) is still referenced from table "%s".',
                                           OLD.id, tbl);
      END IF;
    END LOOP;
    RETURN NULL;
  END
  $cascade$;
  -- every change of a coordinator copy (truxe.memberships_by_user,
  -- truxe.organizations_by_slug: below) made again in its distributed table, in the same
  -- transaction: an org's rows in its shard, as the owner (like every distributed row truxe
  -- writes). The trigger makes the write through a function call: Citus opens a remote
  -- transaction block (committed with the coordinator's, two-phase) for a write made
  -- inside a function, and only then passes on a SET LOCAL; the trigger of a top-level
  -- statement would write the shard in an autocommit of its own. The guard's setting is on
  -- for that write only. A change of the distribution column (org_id, id: Citus does not
  -- move a row between shards) is a delete and an insert
  CREATE FUNCTION truxe.citus_copied() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $copy$
  BEGIN
    PERFORM truxe.citus_copy(TG_TABLE_NAME, TG_OP, pg_catalog.to_jsonb(OLD), pg_catalog.to_jsonb(NEW));
    RETURN NULL;
  END
  $copy$;
  CREATE FUNCTION truxe.citus_copy(copy name, op text, old_row jsonb, new_row jsonb)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $copy$
  DECLARE
    old_m truxe.memberships := pg_catalog.jsonb_populate_record(NULL::truxe.memberships, old_row);
    new_m truxe.memberships := pg_catalog.jsonb_populate_record(NULL::truxe.memberships, new_row);
    old_o truxe.organizations := pg_catalog.jsonb_populate_record(NULL::truxe.organizations, old_row);
    new_o truxe.organizations := pg_catalog.jsonb_populate_record(NULL::truxe.organizations, new_row);
  BEGIN
    DO $on$BEGIN SET LOCAL citus.propagate_set_commands = 'local';
                 SET LOCAL truxe.copy_write = on; END$on$;
    IF copy = 'memberships_by_user' AND op = 'UPDATE' AND new_m.org_id = old_m.org_id THEN
      UPDATE truxe.memberships m
         SET user_id = new_m.user_id, role = new_m.role, permissions = new_m.permissions,
             invited_by = new_m.invited_by, invited_at = new_m.invited_at, joined_at = new_m.joined_at,
             created_at = new_m.created_at, updated_at = new_m.updated_at
       WHERE m.org_id = old_m.org_id AND m.user_id = old_m.user_id;
    ELSIF copy = 'memberships_by_user' THEN
      IF op IN ('UPDATE', 'DELETE') THEN
        DELETE FROM truxe.memberships m WHERE m.org_id = old_m.org_id AND m.user_id = old_m.user_id;
      END IF;
      IF op IN ('INSERT', 'UPDATE') THEN
        INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by,
                                       invited_at, joined_at, created_at, updated_at)
          VALUES (new_m.org_id, new_m.user_id, new_m.role, new_m.permissions, new_m.invited_by,
                  new_m.invited_at, new_m.joined_at, new_m.created_at, new_m.updated_at);
      END IF;
    ELSIF copy = 'organizations_by_slug' AND op = 'UPDATE' AND new_o.id = old_o.id THEN
      UPDATE truxe.organizations o
         SET slug = new_o.slug, name = new_o.name, parent_org_id = new_o.parent_org_id,
             settings = new_o.settings, created_at = new_o.created_at, updated_at = new_o.updated_at
       WHERE o.id = old_o.id;
    ELSIF copy = 'organizations_by_slug' THEN
      IF op IN ('UPDATE', 'DELETE') THEN
        DELETE FROM truxe.organizations o WHERE o.id = old_o.id;
      END IF;
      IF op IN ('INSERT', 'UPDATE') THEN
        INSERT INTO truxe.organizations (id, slug, name, parent_org_id, settings, created_at,
                                         updated_at)
          VALUES (new_o.id, new_o.slug, new_o.name, new_o.parent_org_id, new_o.settings, new_o.created_at,
                  new_o.updated_at);
      END IF;
    ELSE
      RAISE EXCEPTION 'truxe.% is not a coordinator copy', copy USING ERRCODE = 'XX000';
    END IF;
    DO $off$BEGIN SET LOCAL truxe.copy_write = off; END$off$;
  END
  $copy$;
  -- … and, for users (which stays on the coordinator and has no copy), a statement
  -- trigger that makes the transaction a coordinated one before any row changes, for the
  -- same reason: the single-shard writes of its row triggers (an audit row, a user's
  -- factors) then join a remote transaction block, where a top-level statement would give
  -- each an autocommit of its own on its worker. It locks no row: a read FOR UPDATE of an
  -- audit row that does not exist, in the org-less shard that user rows are audited in,
  -- as the owner (the role those rows are written as), inside a function call
  CREATE FUNCTION truxe.citus_coordinated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $coord$
  BEGIN
    PERFORM truxe.citus_coordinate();
    RETURN NULL;
  END
  $coord$;
  CREATE FUNCTION truxe.citus_coordinate() RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $coord$
  BEGIN
    PERFORM 1 FROM truxe.audit_logs a
     WHERE a.org_id = '00000000-0000-0000-0000-000000000000'::uuid AND a.id = 0 FOR UPDATE;
  END
  $coord$;
  REVOKE ALL ON FUNCTION truxe.citus_organizations_deleted(), truxe.citus_users_deleted(),
    truxe.citus_id_changed(), truxe.citus_copied(), truxe.citus_copy(name, text, jsonb, jsonb),
    truxe.citus_coordinated(), truxe.citus_coordinate() FROM PUBLIC;
  SELECT r.rolname INTO tables_owner
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
   WHERE c.oid = 'truxe.audit_logs'::regclass;
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_organizations_deleted() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_users_deleted() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_id_changed() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_copied() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_coordinated() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_coordinate() OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER FUNCTION truxe.citus_copy(name, text, jsonb, jsonb) OWNER TO %I',
                            tables_owner);
  CREATE TRIGGER _users_coordinated BEFORE INSERT OR UPDATE OR DELETE ON truxe.users
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_coordinated();
  CREATE TRIGGER users_citus_cascade AFTER DELETE ON truxe.users
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_users_deleted();
  CREATE TRIGGER users_citus_id_changed AFTER UPDATE OF id ON truxe.users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION truxe.citus_id_changed('sessions.user_id', 'mfa_factors.user_id',
                                            'mfa_recovery_codes.user_id', 'invitations.invited_by',
                                            'invitations.accepted_by', 'api_keys.created_by');

  -- the sealed audit log's row digest (sql/seal.sql) in a form Citus can plan: the SQL
  -- function there (a statement with parameters over audit_logs) cannot be planned once
  -- audit_logs is distributed (0A000). Same result for the same rows, same signature,
  -- settings and grants; only the body changes, in this database only (a single-node
  -- install keeps the SQL function and its speed). The shards hash their rows (the query
  -- has no parameter: the ids are written into it as numbers), the coordinator folds the
  -- hashes in id order (a materialized CTE: Citus gathers the shards' rows into an
  -- intermediate result, then the aggregate runs on the coordinator). A row's text is the
  -- single-node one: its created_at is written out as the ISO style in UTC gives it
  -- (DateStyle 'ISO, MDY', TimeZone 'UTC', which the function pins on the coordinator
  -- but Citus does not pass to the workers), by to_char, which no setting changes.
  CREATE OR REPLACE FUNCTION truxe.audit_rows_digest(after_id bigint, to_id bigint,
                                          OUT row_count bigint, OUT rows_hash bytea,
                                          OUT min_created_at timestamptz, OUT max_created_at timestamptz)
  LANGUAGE plpgsql STABLE
  SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET TimeZone = 'UTC' AS $digest$
  BEGIN
    IF audit_rows_digest.after_id IS NULL OR audit_rows_digest.to_id IS NULL THEN
      SELECT 0, sha256(''::bytea), NULL, NULL
        INTO row_count, rows_hash, min_created_at, max_created_at;
      RETURN;
    END IF;
    EXECUTE format($q$
      WITH r AS MATERIALIZED (
        SELECT a.id, a.created_at,
               sha256(textsend(ROW(
                 a.id, a.org_id, a.actor_user_id, a.action, a.target_type, a.target_id,
                 a.details, a.ip, a.user_agent, a.request_id,
                 CASE WHEN isfinite(a.created_at) THEN
                   to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                   || coalesce('.' || nullif(rtrim(to_char(a.created_at AT TIME ZONE 'UTC', 'US'),
                                                   '0'), ''), '')
                   || '+00'
                   || CASE WHEN a.created_at < '0001-01-01 00:00:00+00'::timestamptz
                           THEN ' BC' ELSE '' END
                 ELSE a.created_at::text END)::text)) AS h
          FROM truxe.audit_logs a
         WHERE a.id > %s AND a.id <= %s)
      SELECT count(*), sha256(coalesce(string_agg(r.h, ''::bytea ORDER BY r.id), ''::bytea)),
             min(r.created_at), max(r.created_at)
        FROM r$q$, audit_rows_digest.after_id, audit_rows_digest.to_id)
      INTO row_count, rows_hash, min_created_at, max_created_at;
  END
  $digest$;

  -- by the hash of the key: its primary key (a bigserial id, used by nothing) cannot hold
  -- the distribution column, and (key_hash, window_start), the key rate_limit_hit
  -- upserts on, stays unique
  ALTER TABLE truxe.rate_limits DROP CONSTRAINT rate_limits_pkey;
  -- a table without a primary key needs a replica identity for Citus to move its shards
  -- online (the logical-replication mover of citus_rebalance_start and
  -- citus_move_shard_placement, when a worker is added: docs/scaling.md, "Adding a
  -- worker"): the unique key it keeps. Set before distributing, so every shard copies it
  ALTER TABLE truxe.rate_limits REPLICA IDENTITY USING INDEX unique_key_window;
  PERFORM pg_catalog.create_distributed_table('truxe.rate_limits', 'key_hash',
                                              colocate_with => 'none');
  -- by the challenge id that every token carries
  PERFORM pg_catalog.create_distributed_table('truxe.magic_link_challenges', 'id',
                                              colocate_with => 'none');

  -- audit_logs by org_id: each org's rows in its shard. What it needs (docs/scaling.md,
  -- "audit_logs on Citus"), on the empty table:
  --  * the primary key holds the distribution column: (org_id, id) instead of (id), which
  --    makes org_id NOT NULL; truxe's writer (src/audit.rs) then writes a row with no org
  --    under the nil uuid (Citus refuses a NULL distribution key);
  --  * the policies read the request identity from the signed claim (src/claim.rs) that
  --    authenticate/set_context write on the coordinator and Citus passes to the workers:
  --    no subquery, no other table. The claim functions (created above) are not part of
  --    the extension: a single-node install never has them;
  --  * the append-only guard, a statement trigger, runs on the shards (Citus copies it
  --    there only with citus.enable_unsafe_triggers).
  DROP POLICY audit_admin_read ON truxe.audit_logs;
  DROP POLICY audit_self_insert ON truxe.audit_logs;
  ALTER TABLE truxe.audit_logs DROP CONSTRAINT audit_logs_pkey;
  ALTER TABLE truxe.audit_logs ADD CONSTRAINT audit_logs_pkey PRIMARY KEY (org_id, id);
  PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
  -- authenticated may insert only some columns (sql/grants.sql), which the coordinator
  -- checks; but it sends the shard an INSERT of every column, the defaults filled in. So
  -- the shards (which copy the table's grants when they are made) get a table-level
  -- INSERT, and the coordinator's table gets the column list back without telling them
  GRANT INSERT ON truxe.audit_logs TO authenticated;
  PERFORM pg_catalog.create_distributed_table('truxe.audit_logs', 'org_id',
                                              colocate_with => 'none');
  propagate := pg_catalog.current_setting('citus.enable_ddl_propagation');
  PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
  REVOKE INSERT ON truxe.audit_logs FROM authenticated;
  GRANT INSERT (org_id, actor_user_id, action, target_type, target_id, details)
    ON truxe.audit_logs TO authenticated;
  PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagate, true);
  -- the single-node policies (sql/rls.sql) with the claim in place of the org-set helpers,
  -- under names of their own: each worker's own copy of the extension's table (Citus'
  -- shell of it there) still has the single-node ones, which the DROP above, made before
  -- the table was distributed, did not reach (the shards, made from this table, do not)
  CREATE POLICY audit_admin_read_claim ON truxe.audit_logs FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));
  CREATE POLICY audit_self_insert_claim ON truxe.audit_logs FOR INSERT TO authenticated
    WITH CHECK (actor_user_id = truxe.claim_user()
                AND (org_id = '00000000-0000-0000-0000-000000000000'::uuid
                     OR truxe.claim_may_act_in(org_id))
                AND NOT truxe.is_builtin_audit_action(action::text));

  -- usage_metrics by org_id, colocated with audit_logs (docs/scaling.md, "usage_metrics and
  -- secrets on Citus"), on the empty table:
  --  * the primary key (id), a bigserial that nothing looks up, becomes (org_id, id); the
  --    key record_usage upserts on, (org_id, metric_type, period_start), holds org_id;
  --  * the foreign key to organizations goes: Citus keeps none from a distributed table to
  --    a coordinator table. record_usage checks the org itself (23503, as the key did);
  --  * the admins' read policy reads the claim, under a name of its own (as audit_logs')
  DROP POLICY usage_admin_read ON truxe.usage_metrics;
  ALTER TABLE truxe.usage_metrics DROP CONSTRAINT usage_metrics_org_id_fkey;
  ALTER TABLE truxe.usage_metrics DROP CONSTRAINT usage_metrics_pkey;
  ALTER TABLE truxe.usage_metrics ADD CONSTRAINT usage_metrics_pkey PRIMARY KEY (org_id, id);
  PERFORM pg_catalog.create_distributed_table('truxe.usage_metrics', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY usage_admin_read_claim ON truxe.usage_metrics FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));
  -- secrets (the vault) by org_id, colocated: its keys lead with org_id already, it has no
  -- policy and no trigger (only the vault's SECURITY DEFINER functions read it); the foreign
  -- key to organizations goes (put_secret checks the org itself, P0002 as before)
  ALTER TABLE truxe.secrets DROP CONSTRAINT secrets_org_id_fkey;
  PERFORM pg_catalog.create_distributed_table('truxe.secrets', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  -- invitations by org_id, colocated: their keys lead with org_id already; the foreign
  -- keys to organizations and users go (an inviter gone still revokes the invitation at
  -- its next use: inviter_still_may_invite); the admins' read policy reads the claim. On
  -- Citus their functions (src/invitation.rs) find an invitation by id without a lock, then
  -- lock it by (org_id, id), and read and write it as the owner
  DROP POLICY invitation_admin_read ON truxe.invitations;
  ALTER TABLE truxe.invitations DROP CONSTRAINT invitations_org_id_fkey;
  ALTER TABLE truxe.invitations DROP CONSTRAINT invitations_invited_by_fkey;
  ALTER TABLE truxe.invitations DROP CONSTRAINT invitations_accepted_by_fkey;
  PERFORM pg_catalog.create_distributed_table('truxe.invitations', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY invitation_admin_read_claim ON truxe.invitations FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));

  -- api_keys by org_id, colocated with audit_logs (docs/scaling.md, "api_keys on Citus"),
  -- on the empty table: its primary key (org_id, id) holds org_id already;
  --  * the foreign keys to organizations and users go: deleting an org or a user no
  --    longer deletes its keys or clears created_by (authenticate_api_key reads the
  --    creator's status and org access on the coordinator, so such a key authenticates
  --    nothing);
  --  * the admins' read policy reads the claim, under a name of its own (as audit_logs');
  --  * service_account may no longer insert keys: a key has an entry in the coordinator's
  --    truxe.api_key_orgs (below), which create_api_key writes, or authenticates nothing.
  -- On Citus authenticate_api_key finds a key's org by its id in truxe.api_key_orgs (a key
  -- does not carry its org), reads the key in that org's shard, then checks the creator on
  -- the coordinator (src/api_key.rs)
  DROP POLICY api_key_admin_read ON truxe.api_keys;
  ALTER TABLE truxe.api_keys DROP CONSTRAINT api_keys_org_id_fkey;
  ALTER TABLE truxe.api_keys DROP CONSTRAINT api_keys_created_by_fkey;
  REVOKE INSERT ON truxe.api_keys FROM service_account;
  PERFORM pg_catalog.create_distributed_table('truxe.api_keys', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY api_key_admin_read_claim ON truxe.api_keys FOR SELECT TO authenticated
    USING (truxe.claim_administers(org_id));

  -- organizations by id and memberships by org_id, colocated with audit_logs: an org's row
  -- and members in its shard (docs/scaling.md, "organizations and memberships on Citus"), on
  -- the empty tables. Both stay on the coordinator too, as copies: plain tables there with
  -- the same columns, checks and foreign keys, which truxe reads and writes (the SQL
  -- functions are rewritten below to name them, the Rust statements are mapped to them:
  -- src/distribute.rs):
  --  * truxe.memberships_by_user, keyed for the lookup every request makes, a user's
  --    memberships (the org sets under RLS, the claim, has_permission): distributed by
  --    org_id, that read would ask every shard;
  --  * truxe.organizations_by_slug, which keeps slugs unique across the cluster (a unique
  --    key of a distributed table must hold its distribution column), the self-reference of
  --    the hierarchy and the foreign keys to organizations.
  -- Their triggers are the single-node tables' (audit rows; the hierarchy's closure and
  -- checks; sessions ended and API keys revoked when a membership goes; the updated_at
  -- stamps; the cascades above), and one more makes each change again in the distributed
  -- table (citus_copied). On the distributed tables:
  --  * the foreign keys, the slug's unique key and the triggers go (the copies keep them; on
  --    a shard the triggers could not write audit_logs, sessions or api_keys);
  --  * the read policies read the claim, under names of their own (as audit_logs');
  --  * nobody writes them but the copies' trigger: service_account's and authenticated's
  --    writes go to the copies (not granted here), and a guard on the shards refuses any
  --    other write
  CREATE TABLE truxe.organizations_by_slug (LIKE truxe.organizations INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
  ALTER TABLE truxe.organizations_by_slug
    ADD CONSTRAINT organizations_by_slug_pkey PRIMARY KEY (id),
    ADD CONSTRAINT organizations_by_slug_slug_key UNIQUE (slug),
    ADD CONSTRAINT organizations_by_slug_parent_org_id_fkey FOREIGN KEY (parent_org_id)
      REFERENCES truxe.organizations_by_slug (id) ON DELETE SET NULL;
  CREATE INDEX organizations_by_slug_parent ON truxe.organizations_by_slug (parent_org_id)
    WHERE parent_org_id IS NOT NULL;
  CREATE TABLE truxe.memberships_by_user (LIKE truxe.memberships INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
  ALTER TABLE truxe.memberships_by_user
    ADD CONSTRAINT memberships_by_user_pkey PRIMARY KEY (org_id, user_id),
    ADD CONSTRAINT memberships_by_user_org_id_fkey FOREIGN KEY (org_id)
      REFERENCES truxe.organizations_by_slug (id) ON DELETE CASCADE,
    ADD CONSTRAINT memberships_by_user_user_id_fkey FOREIGN KEY (user_id)
      REFERENCES truxe.users (id) ON DELETE CASCADE,
    ADD CONSTRAINT memberships_by_user_invited_by_fkey FOREIGN KEY (invited_by)
      REFERENCES truxe.users (id) ON DELETE SET NULL;
  CREATE INDEX memberships_by_user_user_org ON truxe.memberships_by_user (user_id, org_id)
    INCLUDE (role, joined_at);
  CREATE INDEX memberships_by_user_invited_by ON truxe.memberships_by_user (invited_by)
    WHERE invited_by IS NOT NULL;
  -- truxe.api_key_orgs, each API key's org by the key's id: what authenticate_api_key reads
  -- first, one index probe on the coordinator, so that it then reads the one shard of the
  -- key's org, not every shard. create_api_key writes it; an org's entries go with the org;
  -- nobody but truxe's functions reads or writes it (row level security with no policy,
  -- nothing granted)
  CREATE TABLE truxe.api_key_orgs (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES truxe.organizations_by_slug (id)
      ON DELETE CASCADE ON UPDATE CASCADE
  );
  CREATE INDEX api_key_orgs_org_id ON truxe.api_key_orgs (org_id);
  ALTER TABLE truxe.api_key_orgs ENABLE ROW LEVEL SECURITY;
  REVOKE ALL ON truxe.api_key_orgs FROM PUBLIC, authenticated, service_account;
  EXECUTE pg_catalog.format('ALTER TABLE truxe.organizations_by_slug OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER TABLE truxe.memberships_by_user OWNER TO %I', tables_owner);
  EXECUTE pg_catalog.format('ALTER TABLE truxe.api_key_orgs OWNER TO %I', tables_owner);
  -- the single-node policies and grants (sql/rls.sql, sql/grants.sql) on the copies
  ALTER TABLE truxe.organizations_by_slug ENABLE ROW LEVEL SECURITY;
  ALTER TABLE truxe.memberships_by_user ENABLE ROW LEVEL SECURITY;
  CREATE POLICY service_all ON truxe.organizations_by_slug TO service_account
    USING (true) WITH CHECK (true);
  CREATE POLICY org_read ON truxe.organizations_by_slug FOR SELECT TO authenticated
    USING (id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
           OR id = ANY ((SELECT truxe.invited_org_ids())::uuid[]));
  CREATE POLICY org_admin_update ON truxe.organizations_by_slug FOR UPDATE TO authenticated
    USING (id = ANY ((SELECT truxe.admin_org_ids())::uuid[]))
    WITH CHECK (id = ANY ((SELECT truxe.admin_org_ids())::uuid[]));
  CREATE POLICY service_all ON truxe.memberships_by_user TO service_account
    USING (true) WITH CHECK (true);
  CREATE POLICY membership_read ON truxe.memberships_by_user FOR SELECT TO authenticated
    USING (org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
           OR (user_id = (SELECT truxe.current_user_id())
               AND (joined_at IS NULL OR (SELECT truxe.current_org_id()) IS NULL)));
  GRANT SELECT ON truxe.organizations_by_slug, truxe.memberships_by_user TO authenticated;
  GRANT UPDATE (slug, name, parent_org_id, settings) ON truxe.organizations_by_slug TO authenticated;
  GRANT SELECT, INSERT, UPDATE, DELETE ON truxe.organizations_by_slug, truxe.memberships_by_user
    TO service_account;
  -- the single-node triggers (sql/schema.sql, sql/hierarchy.sql, src/audit.rs,
  -- src/session.rs, sql/api_keys.sql), the cascades of the dropped foreign keys (above),
  -- and the copy into the distributed tables. The copy's name puts it first among the row
  -- triggers after the foreign keys' checks (PostgreSQL fires them by name): its write
  -- makes the transaction a coordinated one (above), so that the single-shard writes of
  -- the triggers after it (an audit row) are in the remote transaction too, and not an
  -- autocommit of their own when the statement is a top-level one
  CREATE TRIGGER organizations_updated_at BEFORE UPDATE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();
  CREATE TRIGGER organizations_1_reparent_check
    BEFORE UPDATE OF parent_org_id ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.check_org_reparent();
  CREATE TRIGGER organizations_2_hierarchy
    AFTER INSERT OR UPDATE OF parent_org_id OR DELETE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.maintain_org_hierarchy();
  CREATE TRIGGER audit_organizations AFTER INSERT OR UPDATE OR DELETE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.audit_organizations();
  CREATE TRIGGER organizations_citus_cascade AFTER DELETE ON truxe.organizations_by_slug
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_organizations_deleted();
  CREATE TRIGGER organizations_citus_id_changed AFTER UPDATE OF id ON truxe.organizations_by_slug
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION truxe.citus_id_changed('sessions.org_id', 'usage_metrics.org_id',
                                            'secrets.org_id', 'invitations.org_id',
                                            'api_keys.org_id');
  CREATE TRIGGER _organizations_copied AFTER INSERT OR UPDATE OR DELETE ON truxe.organizations_by_slug
    FOR EACH ROW EXECUTE FUNCTION truxe.citus_copied();
  CREATE TRIGGER memberships_updated_at BEFORE UPDATE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.set_updated_at();
  CREATE TRIGGER audit_memberships AFTER INSERT OR UPDATE OR DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.audit_memberships();
  CREATE TRIGGER memberships_end_sessions AFTER DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.end_sessions_on_membership_delete();
  CREATE TRIGGER memberships_revoke_api_keys AFTER DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.revoke_api_keys_on_membership_delete();
  CREATE TRIGGER _memberships_copied AFTER INSERT OR UPDATE OR DELETE ON truxe.memberships_by_user
    FOR EACH ROW EXECUTE FUNCTION truxe.citus_copied();
  -- users' read policy reads the copy (a coordinator table reading a coordinator table)
  DROP POLICY user_read ON truxe.users;
  CREATE POLICY user_read ON truxe.users FOR SELECT TO authenticated
    USING (id = (SELECT truxe.current_user_id())
           OR id IN (SELECT m.user_id FROM truxe.memberships_by_user m
                      WHERE m.org_id = ANY ((SELECT truxe.accessible_org_ids())::uuid[])
                        AND m.joined_at IS NOT NULL));
  -- the distributed tables: memberships first (its key to organizations goes before
  -- organizations is distributed)
  DROP POLICY membership_read ON truxe.memberships;
  DROP TRIGGER memberships_updated_at ON truxe.memberships;
  DROP TRIGGER audit_memberships ON truxe.memberships;
  DROP TRIGGER memberships_end_sessions ON truxe.memberships;
  DROP TRIGGER memberships_revoke_api_keys ON truxe.memberships;
  ALTER TABLE truxe.memberships DROP CONSTRAINT memberships_org_id_fkey;
  ALTER TABLE truxe.memberships DROP CONSTRAINT memberships_user_id_fkey;
  ALTER TABLE truxe.memberships DROP CONSTRAINT memberships_invited_by_fkey;
  REVOKE INSERT, UPDATE, DELETE ON truxe.memberships FROM service_account;
  CREATE TRIGGER memberships_written_through_copy
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON truxe.memberships
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_written_through_copy('memberships',
                                                                        'memberships_by_user');
  ALTER TABLE truxe.memberships ENABLE ALWAYS TRIGGER memberships_written_through_copy;
  PERFORM pg_catalog.create_distributed_table('truxe.memberships', 'org_id',
                                              colocate_with => 'truxe.audit_logs');
  -- (num_nulls: "joined_at IS NULL OR claim_org() IS NULL", which Citus fails to pass to
  -- the shards: XX000 "unrecognized node type")
  CREATE POLICY membership_read_claim ON truxe.memberships FOR SELECT TO authenticated
    USING (truxe.claim_may_act_in(org_id)
           OR (user_id = truxe.claim_user()
               AND pg_catalog.num_nulls(joined_at, truxe.claim_org()) > 0));
  DROP POLICY org_read ON truxe.organizations;
  DROP POLICY org_admin_update ON truxe.organizations;
  DROP TRIGGER organizations_updated_at ON truxe.organizations;
  DROP TRIGGER organizations_1_reparent_check ON truxe.organizations;
  DROP TRIGGER organizations_2_hierarchy ON truxe.organizations;
  DROP TRIGGER audit_organizations ON truxe.organizations;
  ALTER TABLE truxe.organizations DROP CONSTRAINT organizations_parent_org_id_fkey;
  ALTER TABLE truxe.organizations DROP CONSTRAINT organizations_slug_key;
  REVOKE UPDATE ON truxe.organizations FROM authenticated;
  REVOKE INSERT, UPDATE, DELETE ON truxe.organizations FROM service_account;
  CREATE TRIGGER organizations_written_through_copy
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON truxe.organizations
    FOR EACH STATEMENT EXECUTE FUNCTION truxe.citus_written_through_copy('organizations',
                                                                        'organizations_by_slug');
  ALTER TABLE truxe.organizations ENABLE ALWAYS TRIGGER organizations_written_through_copy;
  PERFORM pg_catalog.create_distributed_table('truxe.organizations', 'id',
                                              colocate_with => 'truxe.audit_logs');
  CREATE POLICY org_read_claim ON truxe.organizations FOR SELECT TO authenticated
    USING (truxe.claim_may_act_in(id) OR truxe.claim_invited_to(id));
  -- the extension's SQL functions that name truxe.memberships or truxe.organizations,
  -- rewritten to name the copies (and the constraints invite_member and create_organization
  -- name); this one and the functions it made above, which are not the extension's, keep
  -- naming the distributed tables
  FOR reader IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass
                                 AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'truxe'
     WHERE p.prolang IN (SELECT l.oid FROM pg_catalog.pg_language l
                          WHERE l.lanname IN ('sql', 'plpgsql'))
       AND p.prosrc ~ 'truxe\.(memberships|organizations)\M'
       AND p.oid <> 'truxe.distribute()'::regprocedure
  LOOP
    definition := pg_catalog.pg_get_functiondef(reader);
    definition := pg_catalog.regexp_replace(definition, 'truxe\.memberships\M',
                                            'truxe.memberships_by_user', 'g');
    definition := pg_catalog.regexp_replace(definition, 'truxe\.organizations\M',
                                            'truxe.organizations_by_slug', 'g');
    definition := pg_catalog.regexp_replace(definition, '\mmemberships_pkey\M',
                                            'memberships_by_user_pkey', 'g');
    EXECUTE pg_catalog.regexp_replace(definition, '\morganizations_slug_key\M',
                                      'organizations_by_slug_slug_key', 'g');
  END LOOP;

  -- mfa_factors and mfa_recovery_codes by user_id, colocated with each other (a user's
  -- factors and codes in one shard group; users stay on the coordinator), on the empty
  -- tables (docs/scaling.md, "mfa on Citus"):
  --  * mfa_factors' primary key (id) becomes (user_id, id): ids are random uuids, and
  --    verify_totp and unenroll_factor, which have only the id, read the factor's user in
  --    truxe.mfa_factor_users on the coordinator (below), then the factor by (user_id, id)
  --    in its shard; mfa_recovery_codes' key leads with user_id already;
  --  * the foreign keys to users go: deleting a user row no longer deletes its factors and
  --    codes (enroll_totp and generate_recovery_codes check the user on the coordinator);
  --  * a user's read of their factors reads the claim, under a name of its own
  DROP POLICY factor_self_read ON truxe.mfa_factors;
  ALTER TABLE truxe.mfa_factors DROP CONSTRAINT mfa_factors_user_id_fkey;
  ALTER TABLE truxe.mfa_factors DROP CONSTRAINT mfa_factors_pkey;
  ALTER TABLE truxe.mfa_factors ADD CONSTRAINT mfa_factors_pkey PRIMARY KEY (user_id, id);
  ALTER TABLE truxe.mfa_recovery_codes DROP CONSTRAINT mfa_recovery_codes_user_id_fkey;
  PERFORM pg_catalog.create_distributed_table('truxe.mfa_factors', 'user_id',
                                              colocate_with => 'none');
  PERFORM pg_catalog.create_distributed_table('truxe.mfa_recovery_codes', 'user_id',
                                              colocate_with => 'truxe.mfa_factors');
  CREATE POLICY factor_self_read_claim ON truxe.mfa_factors FOR SELECT TO authenticated
    USING (user_id = truxe.claim_user());
  -- truxe.mfa_factor_users, each factor's user by the factor's id, on the coordinator (as
  -- api_key_orgs for API keys): enroll_totp writes it, unenroll_factor deletes it; a user's
  -- entries go with the user; nobody but truxe's functions reads or writes it
  CREATE TABLE truxe.mfa_factor_users (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES truxe.users (id) ON DELETE CASCADE ON UPDATE CASCADE
  );
  CREATE INDEX mfa_factor_users_user_id ON truxe.mfa_factor_users (user_id);
  ALTER TABLE truxe.mfa_factor_users ENABLE ROW LEVEL SECURITY;
  REVOKE ALL ON truxe.mfa_factor_users FROM PUBLIC, authenticated, service_account;
  EXECUTE pg_catalog.format('ALTER TABLE truxe.mfa_factor_users OWNER TO %I', tables_owner);

  -- sessions by jti_hash, what validate_session and authenticate look up: one shard each
  -- (docs/scaling.md, "sessions on Citus"), on the empty table:
  --  * the keys without jti_hash go: the primary key (id) and the unique refresh_jti_hash
  --    become plain indexes (both are SHA-256 or random uuids; refresh_session finds a
  --    refresh token on every shard, then locks its row by jti_hash);
  --  * the foreign keys to users and organizations go: deleting a user or an org no
  --    longer deletes its sessions (they stop validating and refreshing, since the user's
  --    status and the org access are read on the coordinator; cleanup removes them);
  --  * the audit trigger goes (a shard cannot write audit_logs): on Citus the session
  --    functions write session.created and session.revoked themselves (src/session/citus.rs);
  --  * the user's read policy reads the claim, under a name of its own (as audit_logs')
  DROP POLICY session_read ON truxe.sessions;
  DROP TRIGGER audit_sessions ON truxe.sessions;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_user_id_fkey;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_org_id_fkey;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_pkey;
  ALTER TABLE truxe.sessions DROP CONSTRAINT sessions_refresh_jti_hash_key;
  CREATE INDEX sessions_id_idx ON truxe.sessions (id);
  CREATE INDEX sessions_refresh_jti_hash_idx ON truxe.sessions (refresh_jti_hash);
  -- no primary key left: the unique jti_hash is the replica identity (as rate_limits')
  ALTER TABLE truxe.sessions REPLICA IDENTITY USING INDEX sessions_jti_hash_key;
  PERFORM pg_catalog.create_distributed_table('truxe.sessions', 'jti_hash',
                                              colocate_with => 'none');
  CREATE POLICY session_read_claim ON truxe.sessions FOR SELECT TO authenticated
    USING (user_id = truxe.claim_user());

  -- audit_seals, the sealed audit log's chain, as a reference table (docs/scaling.md, "The
  -- sealed audit log on Citus"): small, append-only, one row per seal. Its append-only
  -- guard (a statement trigger, ENABLE ALWAYS) is copied onto every copy
  -- (citus.enable_unsafe_triggers, set above), as are its policy (service_account reads)
  -- and grants. Seals are written through the coordinator only (seal_audit_log refuses on
  -- a worker, 55000): the coordinator's lock orders them and its sequence numbers them, as
  -- on a single node
  PERFORM pg_catalog.create_reference_table('truxe.audit_seals');

  -- role_permissions as a reference table (small, rarely written); the default role rights
  -- it holds from the start are copied into its shard, and the coordinator's own table (the
  -- shell) is emptied. has_permission (in truxe.user_holds_permission) and
  -- truxe.permitted_org_ids read it joined with memberships and org_closure, which stay on
  -- the coordinator. Citus plans such a join as a router query on the coordinator's copy,
  -- but runs it by deparsing it to text and parsing and planning that text again on every
  -- call (its local plan cache serves only queries with a distribution column): about
  -- eight times the backend CPU of has_permission (bench/README.md). So on Citus the two
  -- functions read the coordinator's copy, the shard, by its name: a plain table to the
  -- planner, planned once per connection. Citus writes that copy with every change of the
  -- table, in the changing transaction (two-phase commit over the nodes). Their Citus form
  -- is their own definition with that one name changed: the same rules and answers; a
  -- single node keeps them as they are
  PERFORM pg_catalog.create_reference_table('truxe.role_permissions');
  PERFORM pg_catalog.truncate_local_data_after_distributing_table('truxe.role_permissions');
  EXECUTE 'SELECT s.shardid FROM pg_catalog.pg_dist_shard s
            JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid AND p.groupid = 0
           WHERE s.logicalrelid = ''truxe.role_permissions''::regclass'
    INTO rp_shard;
  IF rp_shard IS NULL THEN
    RAISE EXCEPTION 'truxe.role_permissions has no copy on the coordinator'
      USING ERRCODE = '55000', HINT = 'see docs/scaling.md';
  END IF;
  FOREACH reader IN ARRAY ARRAY['truxe.user_holds_permission(uuid, text, uuid)',
                                'truxe.permitted_org_ids(text)']::regprocedure[] LOOP
    definition := pg_catalog.pg_get_functiondef(reader);
    IF pg_catalog.strpos(definition, 'FROM truxe.role_permissions rp') = 0 THEN
      RAISE EXCEPTION '% no longer reads truxe.role_permissions as distribute() expects', reader
        USING ERRCODE = 'XX000';
    END IF;
    EXECUTE pg_catalog.replace(definition, 'FROM truxe.role_permissions rp',
                               pg_catalog.format('FROM truxe.%I rp', 'role_permissions_' || rp_shard));
  END LOOP;

  RETURN QUERY
    SELECT c.relname::text,
           CASE c.relname
             WHEN 'audit_logs' THEN 'distributed by org_id'
             WHEN 'usage_metrics' THEN 'distributed by org_id'
             WHEN 'secrets' THEN 'distributed by org_id'
             WHEN 'invitations' THEN 'distributed by org_id'
             WHEN 'api_keys' THEN 'distributed by org_id'
             WHEN 'memberships' THEN 'distributed by org_id'
             WHEN 'organizations' THEN 'distributed by id'
             WHEN 'mfa_factors' THEN 'distributed by user_id'
             WHEN 'mfa_recovery_codes' THEN 'distributed by user_id'
             WHEN 'rate_limits' THEN 'distributed by key_hash'
             WHEN 'magic_link_challenges' THEN 'distributed by id'
             WHEN 'sessions' THEN 'distributed by jti_hash'
             WHEN 'audit_seals' THEN 'reference'
             WHEN 'role_permissions' THEN 'reference'
             ELSE 'coordinator'
           END
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'truxe'::regnamespace AND c.relkind = 'r'
     ORDER BY 1;
END
$$;
