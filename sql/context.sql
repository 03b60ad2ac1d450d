-- Request context (SPEC §2). The getters current_user_id()/current_org_id() and the org
-- sets accessible_org_ids()/admin_org_ids()/invited_org_ids() are Rust (src/context.rs).
-- Trust model: these are ordinary settings; the backend that owns the connection sets them
-- after authenticating the request (README, "Context").

-- Sets the acting user and organisation; transaction-local by default (safe behind a
-- transaction-pooling connection pooler). NULL clears a value.
-- search_path pinned like every truxe function (it names pg_catalog explicitly as well); a
-- transaction-local set_config inside it still outlives the call: only the pinned setting
-- itself is restored when the function returns.
CREATE FUNCTION truxe.set_context(user_id uuid, org_id uuid DEFAULT NULL, is_local boolean DEFAULT true)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT pg_catalog.set_config('app.current_user_id', coalesce(user_id::pg_catalog.text, ''), is_local),
         pg_catalog.set_config('app.current_org_id', coalesce(org_id::pg_catalog.text, ''), is_local);
$$;

-- Clears both settings (session and transaction values).
CREATE FUNCTION truxe.clear_context()
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT pg_catalog.set_config('app.current_user_id', '', false),
         pg_catalog.set_config('app.current_org_id', '', false);
$$;
