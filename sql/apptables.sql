-- The application's own tables (README, "Your own tables"; docs/security.md, "Your own
-- tables"): one call gives a table truxe's tenant policies, one attaches truxe's audit
-- trigger, and audit_logs accepts the application's own actions.

-- Application-defined audit actions: 'resource.verb', lowercase letters, digits and _, each
-- part starting with a letter, at most 128 characters (truxe.valid_audit_action, Rust:
-- src/apptables.rs). truxe's own actions (the labels of truxe.audit_action) have the same
-- shape. audit_logs.action is text checked by this.
ALTER TABLE truxe.audit_logs ADD CONSTRAINT action_format CHECK (truxe.valid_audit_action(action));

-- The orgs where the acting identity holds `permission` ('resource:action'): the rules of
-- truxe.has_permission (role defaults of truxe.role_permissions, the membership's own
-- permissions array, 'resource:*' and '*' wildcards, owners/admins of an ancestor holding
-- their role's permissions on descendants), within truxe.accessible_org_ids() — so every
-- rule that narrows what a user may see (an inactive user, a pending invitation) narrows
-- this too. Under an API key: the key's org when the key holds the permission there.
-- Empty with no context. For policies, evaluated once per statement:
--   org_id = ANY ((SELECT truxe.permitted_org_ids('projects:write'))::uuid[])
-- Callable by authenticated and service_account. A malformed permission is 22023. On Citus,
-- truxe.distribute() makes it read the coordinator's copy of the reference table
-- role_permissions: it replaces "FROM truxe.role_permissions rp" in this definition
-- (sql/distribute.sql), so keep that text.
CREATE FUNCTION truxe.permitted_org_ids(permission text)
RETURNS uuid[] LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE me uuid := truxe.current_user_id();
BEGIN
  IF permission IS NULL OR permission !~ '^[a-z_]+:[a-z_]+$' THEN
    RAISE EXCEPTION 'invalid permission %: expected resource:action in lowercase letters and _',
      coalesce(to_json(left(permission, 64))::text, 'NULL') USING ERRCODE = '22023';
  END IF;
  IF me IS NULL THEN
    -- an API key: its own org, when it holds the permission there (has_permission's rule
    -- for keys: a matching scope, still held by the key's creator)
    IF truxe.current_api_key_id() IS NOT NULL
       AND truxe.has_permission(truxe.current_org_id(), permission) THEN
      RETURN ARRAY[truxe.current_org_id()];
    END IF;
    RETURN '{}';
  END IF;
  RETURN (
    WITH visible AS (SELECT truxe.accessible_org_ids() AS ids),
    held AS (
      SELECT m.org_id, m.role, m.permissions
        FROM truxe.memberships m, visible v
       WHERE m.user_id = me AND m.joined_at IS NOT NULL AND m.org_id = ANY (v.ids)
      UNION ALL
      SELECT c.descendant_id, m.role, '[]'::jsonb
        FROM truxe.memberships m JOIN truxe.org_closure c ON c.ancestor_id = m.org_id, visible v
       WHERE m.user_id = me AND m.joined_at IS NOT NULL AND m.role IN ('owner', 'admin')
         AND c.descendant_id = ANY (v.ids)
    )
    SELECT coalesce(array_agg(DISTINCT h.org_id), '{}') FROM held h
     WHERE EXISTS (
       SELECT 1 FROM (SELECT rp.permission FROM truxe.role_permissions rp WHERE rp.role = h.role
                      UNION ALL
                      SELECT e FROM jsonb_array_elements_text(h.permissions) e) g(p)
        WHERE truxe.permission_matches(g.p, permitted_org_ids.permission)));
END
$$;

-- Checks that `who` owns the application table `tbl` (42501, before anything else of it is
-- read: the same message whether or not it is a table), then that it is an ordinary or
-- partitioned table outside truxe and the system schemas (22023).
CREATE FUNCTION truxe.require_table_owner(tbl regclass, who name)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE c record;
BEGIN
  SELECT r.relowner, r.relkind, r.relnamespace INTO c FROM pg_class r WHERE r.oid = tbl;
  IF tbl IS NULL OR NOT FOUND OR NOT pg_has_role(who, c.relowner, 'USAGE') THEN
    RAISE EXCEPTION 'permission denied: only the owner of a table may protect or audit it'
      USING ERRCODE = '42501';
  END IF;
  IF c.relkind NOT IN ('r', 'p') THEN
    RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '22023';
  END IF;
  IF c.relnamespace IN ('truxe'::regnamespace, 'pg_catalog'::regnamespace,
                        'information_schema'::regnamespace, 'pg_toast'::regnamespace) THEN
    RAISE EXCEPTION '% is not an application table', tbl USING ERRCODE = '22023';
  END IF;
END
$$;

-- The number of column `org_column` of `tbl`, which must be a uuid column (22023).
CREATE FUNCTION truxe.org_column_of(tbl regclass, org_column name)
RETURNS smallint LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE a record;
BEGIN
  SELECT t.attnum, t.atttypid INTO a FROM pg_attribute t
   WHERE t.attrelid = tbl AND t.attname = org_column AND t.attnum > 0 AND NOT t.attisdropped;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'table % has no column %', tbl, coalesce(quote_ident(org_column), 'NULL')
      USING ERRCODE = '22023';
  END IF;
  IF a.atttypid <> 'uuid'::regtype THEN
    RAISE EXCEPTION 'column % of table % must be of type uuid, not %', quote_ident(org_column), tbl,
      a.atttypid::regtype USING ERRCODE = '22023';
  END IF;
  RETURN a.attnum;
END
$$;

-- Gives application table `tbl` truxe's tenant policies: enables and forces row level
-- security (the owner is subject to it too) and creates, replacing its own earlier ones:
--   truxe_read    SELECT for authenticated: rows whose org_column is in accessible_org_ids()
--   truxe_insert, truxe_update, truxe_delete for authenticated: the row's org (old and new
--                 for an update) in permitted_org_ids('<resource>:write')
--   truxe_service everything for service_account (the trusted backend), as on truxe's tables
-- each helper wrapped in (SELECT …), so it is evaluated once per statement (an InitPlan),
-- and an index on org_column when no valid, non-partial index leads with it. `resource`
-- defaults to the table's name and must be lowercase letters and _ (22023), as permissions
-- are. Idempotent. Caller: the table's owner (42501). No such uuid column: 22023. Runs as
-- the caller (SECURITY INVOKER): Postgres' own ownership checks apply as well.
CREATE FUNCTION truxe.protect_table(tbl regclass, org_column name DEFAULT 'org_id',
                                    resource text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  col smallint;
  res text;
  readable text;
  writable text;
  p name;
  idx regclass;
BEGIN
  PERFORM truxe.require_table_owner(tbl, current_user);
  col := truxe.org_column_of(tbl, org_column);
  res := coalesce(resource, (SELECT c.relname::text FROM pg_class c WHERE c.oid = tbl));
  IF res !~ '^[a-z_]+$' THEN
    RAISE EXCEPTION 'invalid resource %: lowercase letters and _ (pass resource => ''...'' for this table)',
      to_json(left(res, 64))::text USING ERRCODE = '22023';
  END IF;
  EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
  FOR p IN SELECT pol.polname FROM pg_policy pol
            WHERE pol.polrelid = tbl
              AND pol.polname IN ('truxe_read', 'truxe_insert', 'truxe_update', 'truxe_delete', 'truxe_service')
  LOOP
    EXECUTE format('DROP POLICY %I ON %s', p, tbl);
  END LOOP;
  readable := format('%I = ANY ((SELECT truxe.accessible_org_ids())::uuid[])', org_column);
  writable := format('%I = ANY ((SELECT truxe.permitted_org_ids(%L))::uuid[])', org_column, res || ':write');
  EXECUTE format('CREATE POLICY truxe_read ON %s FOR SELECT TO authenticated USING (%s)', tbl, readable);
  EXECUTE format('CREATE POLICY truxe_insert ON %s FOR INSERT TO authenticated WITH CHECK (%s)', tbl, writable);
  EXECUTE format('CREATE POLICY truxe_update ON %s FOR UPDATE TO authenticated USING (%s) WITH CHECK (%s)',
                 tbl, writable, writable);
  EXECUTE format('CREATE POLICY truxe_delete ON %s FOR DELETE TO authenticated USING (%s)', tbl, writable);
  EXECUTE format('CREATE POLICY truxe_service ON %s TO service_account USING (true) WITH CHECK (true)', tbl);
  IF NOT EXISTS (SELECT 1 FROM pg_index i
                  WHERE i.indrelid = tbl AND i.indkey[0] = col AND i.indpred IS NULL AND i.indisvalid) THEN
    EXECUTE format('CREATE INDEX ON %s (%I)', tbl, org_column);
    SELECT i.indexrelid::regclass INTO idx FROM pg_index i
     WHERE i.indrelid = tbl AND i.indkey[0] = col AND i.indpred IS NULL
     ORDER BY i.indexrelid::oid::bigint DESC LIMIT 1;
    EXECUTE format('COMMENT ON INDEX %s IS %L', idx, 'created by truxe.protect_table');
  END IF;
END
$$;

-- Removes what protect_table created on `tbl`: its truxe_* policies and the index it made;
-- then, when no other policy is left on the table, turns row level security off (forced
-- and enabled). Idempotent. Caller: the table's owner (42501). SECURITY INVOKER.
CREATE FUNCTION truxe.unprotect_table(tbl regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  p name;
  idx regclass;
BEGIN
  PERFORM truxe.require_table_owner(tbl, current_user);
  FOR p IN SELECT pol.polname FROM pg_policy pol
            WHERE pol.polrelid = tbl
              AND pol.polname IN ('truxe_read', 'truxe_insert', 'truxe_update', 'truxe_delete', 'truxe_service')
  LOOP
    EXECUTE format('DROP POLICY %I ON %s', p, tbl);
  END LOOP;
  FOR idx IN SELECT i.indexrelid::regclass FROM pg_index i
              WHERE i.indrelid = tbl
                AND obj_description(i.indexrelid, 'pg_class') = 'created by truxe.protect_table'
  LOOP
    EXECUTE format('DROP INDEX %s', idx);
  END LOOP;
  IF NOT EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = tbl) THEN
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY', tbl);
  END IF;
END
$$;

-- Attaches truxe's audit trigger (truxe_audit, src/apptables.rs) to application table
-- `tbl`: one audit_logs row per inserted, updated or deleted row, action
-- '<table>.created|updated|deleted', with the acting user, the row's org (`org_column`, a
-- uuid column; NULL: rows without an org), the request context, target_type the table and
-- target_id its primary key, and details {table, new} / {table, old} / {table, old, new}
-- (an update records only the columns whose value changed, and nothing when none did).
-- Idempotent (run it again after changing the primary key). The table's name must make
-- valid actions that are not truxe's own (22023). Caller: the role running the statement
-- must own the table (42501). SECURITY DEFINER: creating a trigger needs EXECUTE on the
-- trigger function, which no role holds.
CREATE FUNCTION truxe.audit_table(tbl regclass, org_column name DEFAULT 'org_id')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  res text;
  verb text;
  args text[];
BEGIN
  PERFORM truxe.require_table_owner(tbl, truxe.calling_role());
  IF org_column IS NOT NULL THEN
    PERFORM truxe.org_column_of(tbl, org_column);
  END IF;
  res := (SELECT c.relname::text FROM pg_class c WHERE c.oid = tbl);
  FOREACH verb IN ARRAY ARRAY['created', 'updated', 'deleted'] LOOP
    IF NOT truxe.valid_audit_action(res || '.' || verb) THEN
      RAISE EXCEPTION 'table name % cannot name audit actions (resource.verb: lowercase letters, digits and _)',
        to_json(left(res, 64))::text USING ERRCODE = '22023';
    END IF;
    IF truxe.is_builtin_audit_action(res || '.' || verb) THEN
      RAISE EXCEPTION 'the audit actions of table % would be truxe''s own (%)', tbl, res || '.' || verb
        USING ERRCODE = '22023';
    END IF;
  END LOOP;
  args := ARRAY[res, coalesce(org_column::text, '')]
          || ARRAY(SELECT a.attname::text
                     FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord), pg_attribute a
                    WHERE i.indrelid = tbl AND i.indisprimary
                      AND a.attrelid = tbl AND a.attnum = k.attnum
                    ORDER BY k.ord);
  IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'truxe_audit') THEN
    EXECUTE format('DROP TRIGGER truxe_audit ON %s', tbl);
  END IF;
  EXECUTE format('CREATE TRIGGER truxe_audit AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
                 'EXECUTE FUNCTION truxe.audit_app_table(%s)',
                 tbl, (SELECT string_agg(quote_literal(x), ', ' ORDER BY n)
                         FROM unnest(args) WITH ORDINALITY u(x, n)));
END
$$;
