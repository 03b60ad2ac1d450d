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

-- The request settings app.ip, app.user_agent and app.request_id as the audit trail records
-- them (the Rust audit triggers parse them the same way): NULL when unset, empty or
-- invalid, never an error. They are the defaults of audit_logs.ip, user_agent and
-- request_id, which `authenticated` cannot set itself (sql/grants.sql), so an audit row an
-- application writes carries the same request context as the rows truxe writes.

-- app.ip when it is a single IP address (no prefix length), else NULL.
CREATE FUNCTION truxe.request_ip()
RETURNS inet LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE v text := btrim(current_setting('app.ip', true));
BEGIN
  IF v IS NULL OR v = '' OR length(v) > 64 OR v !~ '^[0-9A-Fa-f:.]+$' THEN
    RETURN NULL;
  END IF;
  RETURN v::inet;
EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value THEN
  RETURN NULL;
END
$$;

-- app.user_agent, clipped to 512 characters; NULL when unset or empty.
CREATE FUNCTION truxe.request_user_agent()
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT left(nullif(current_setting('app.user_agent', true), ''), 512);
$$;

-- app.request_id when it is a uuid, else NULL.
CREATE FUNCTION truxe.request_id()
RETURNS uuid LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE v text := btrim(current_setting('app.request_id', true));
BEGIN
  IF v IS NULL OR v = '' OR length(v) > 45 THEN
    RETURN NULL;
  END IF;
  IF starts_with(v, 'urn:uuid:') THEN
    v := substr(v, 10);
  END IF;
  IF v = '' THEN
    RETURN NULL;
  END IF;
  RETURN v::uuid;
EXCEPTION WHEN invalid_text_representation THEN
  RETURN NULL;
END
$$;
