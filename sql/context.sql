-- Request context. The getters current_user_id()/current_org_id() are Rust
-- (src/identity.rs), as are set_context, clear_context and the org sets
-- accessible_org_ids()/admin_org_ids()/invited_org_ids() (src/context.rs). Trust model:
-- docs/security.md, "Verified identity".

-- The request settings app.ip, app.user_agent and app.request_id as the audit trail records
-- them: NULL when unset, empty or invalid, never an error. They are the defaults of
-- audit_logs.ip, user_agent and request_id, which `authenticated` cannot set itself
-- (sql/grants.sql), so an audit row an application writes carries the same request
-- context as the rows truxe writes. request_ip() and request_id() are Rust
-- (src/audit.rs): the parsers truxe's own audit rows use, without an exception block.

-- app.user_agent, clipped to 512 characters; NULL when unset or empty.
CREATE FUNCTION truxe.request_user_agent()
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT left(nullif(current_setting('app.user_agent', true), ''), 512);
$$;

