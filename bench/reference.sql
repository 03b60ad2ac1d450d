-- The reference: the same operations written the straightforward way, in plain
-- SQL / PL/pgSQL with pgcrypto (digest() for hashing, gen_random_bytes() for secrets), same
-- signatures and semantics, in schema ref, on truxe's own tables (so both pay the same
-- triggers and indexes). Parent changes run against ref.organizations, a copy of truxe's
-- organizations (same columns and indexes) with plain PL/pgSQL triggers instead of truxe's.
CREATE SCHEMA ref;
CREATE EXTENSION pgcrypto SCHEMA ref;

CREATE FUNCTION ref.issue_magic_link(p_email citext, p_org_slug text DEFAULT NULL,
                                     p_ttl interval DEFAULT '15 minutes')
RETURNS TABLE(challenge_id uuid, token text, expires_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE secret bytea := ref.gen_random_bytes(32); cid uuid; exp timestamptz;
BEGIN
  IF p_email !~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$' THEN
    RAISE EXCEPTION 'invalid email' USING ERRCODE = '22023';
  END IF;
  IF p_ttl < interval '1 minute' OR p_ttl > interval '24 hours' THEN
    RAISE EXCEPTION 'invalid ttl' USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended(lower(p_email::text), 7329));
  IF (SELECT count(*) FROM truxe.magic_link_challenges c
       WHERE c.email = p_email AND c.created_at > now() - interval '15 minutes') >= 5 THEN
    RAISE EXCEPTION 'too many magic links' USING ERRCODE = 'TX429';
  END IF;
  INSERT INTO truxe.magic_link_challenges AS c (email, token_hash, org_slug, expires_at)
    VALUES (p_email, encode(ref.digest(secret, 'sha256'), 'hex'), p_org_slug, now() + p_ttl)
    RETURNING c.id, c.expires_at INTO cid, exp;
  INSERT INTO truxe.audit_logs (action, target_type, target_id, details)
    VALUES ('magic_link.sent', 'magic_link', cid::text, jsonb_build_object('email', p_email));
  RETURN QUERY SELECT cid, replace(cid::text, '-', '') || '.' ||
                      rtrim(translate(encode(secret, 'base64'), '+/', '-_'), '='), exp;
END $$;

CREATE FUNCTION ref.check_magic_link(p_token text, p_consume boolean)
RETURNS TABLE(status text, user_id uuid, email citext, expires_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE cid uuid; secret bytea; ch truxe.magic_link_challenges; uid uuid; ust truxe.user_status;
BEGIN
  BEGIN
    IF length(p_token) <> 76 OR substr(p_token, 33, 1) <> '.' THEN RAISE EXCEPTION 'bad'; END IF;
    cid := substr(p_token, 1, 32)::uuid;
    secret := decode(translate(substr(p_token, 34), '-_', '+/') || '=', 'base64');
  EXCEPTION WHEN others THEN
    RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::citext, NULL::timestamptz; RETURN;
  END;
  SELECT * INTO ch FROM truxe.magic_link_challenges c WHERE c.id = cid FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::citext, NULL::timestamptz; RETURN;
  END IF;
  IF ch.attempts >= 5 THEN
    RETURN QUERY SELECT 'locked'::text, NULL::uuid, NULL::citext, NULL::timestamptz; RETURN;
  END IF;
  IF ch.token_hash <> encode(ref.digest(secret, 'sha256'), 'hex') THEN
    UPDATE truxe.magic_link_challenges c SET attempts = c.attempts + 1 WHERE c.id = cid;
    RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::citext, NULL::timestamptz; RETURN;
  END IF;
  IF ch.used_at IS NOT NULL THEN
    RETURN QUERY SELECT 'used'::text, NULL::uuid, NULL::citext, NULL::timestamptz; RETURN;
  END IF;
  IF ch.expires_at <= now() THEN
    RETURN QUERY SELECT 'expired'::text, NULL::uuid, NULL::citext, NULL::timestamptz; RETURN;
  END IF;
  IF NOT p_consume THEN
    RETURN QUERY SELECT 'valid'::text, NULL::uuid, ch.email, ch.expires_at; RETURN;
  END IF;
  UPDATE truxe.magic_link_challenges c SET used_at = now() WHERE c.id = cid;
  SELECT u.id, u.status INTO uid, ust FROM truxe.users u WHERE u.email = ch.email FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO truxe.users AS u (email, status, email_verified) VALUES (ch.email, 'active', true)
      RETURNING u.id INTO uid;
  ELSIF ust IN ('suspended', 'deleted') THEN
    RETURN QUERY SELECT 'rejected'::text, NULL::uuid, ch.email, NULL::timestamptz; RETURN;
  ELSIF ust = 'pending' THEN
    UPDATE truxe.users u SET status = 'active', email_verified = true WHERE u.id = uid;
  END IF;
  INSERT INTO truxe.audit_logs (action, target_type, target_id) VALUES
    ('magic_link.verified', 'magic_link', cid::text), ('user.login', 'user', uid::text);
  RETURN QUERY SELECT 'verified'::text, uid, ch.email, NULL::timestamptz;
END $$;

CREATE FUNCTION ref.verify_magic_link(p_token text)
RETURNS TABLE(status text, user_id uuid, email citext) LANGUAGE sql AS
$$ SELECT c.status, c.user_id, c.email FROM ref.check_magic_link(p_token, true) c $$;
CREATE FUNCTION ref.inspect_magic_link(p_token text)
RETURNS TABLE(status text, email citext, expires_at timestamptz) LANGUAGE sql AS
$$ SELECT c.status, c.email, c.expires_at FROM ref.check_magic_link(p_token, false) c $$;

CREATE FUNCTION ref.validate_session(p_jti uuid)
RETURNS TABLE(user_id uuid, org_id uuid, expires_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE s truxe.sessions;
BEGIN
  SELECT * INTO s FROM truxe.sessions x
   WHERE x.jti_hash = sha256(uuid_send(p_jti)) AND x.revoked_at IS NULL AND x.expires_at > now();
  IF NOT FOUND THEN RETURN; END IF;
  IF s.last_used_at < now() - interval '1 minute' THEN
    UPDATE truxe.sessions x SET last_used_at = now() WHERE x.id = s.id;
  END IF;
  RETURN QUERY SELECT s.user_id, s.org_id, s.expires_at;
END $$;

CREATE FUNCTION ref.create_session(p_user uuid, p_ttl interval DEFAULT '7 days')
RETURNS TABLE(jti uuid, refresh_jti uuid, expires_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE j uuid := gen_random_uuid(); r uuid := gen_random_uuid();
BEGIN
  IF (SELECT u.status FROM truxe.users u WHERE u.id = p_user) IS DISTINCT FROM 'active' THEN
    RAISE EXCEPTION 'user not active' USING ERRCODE = '42501';
  END IF;
  RETURN QUERY INSERT INTO truxe.sessions AS x (jti_hash, user_id, refresh_jti_hash, family_id, expires_at)
    VALUES (sha256(uuid_send(j)), p_user, sha256(uuid_send(r)), gen_random_uuid(), now() + p_ttl)
    RETURNING j, r, x.expires_at;
END $$;

CREATE FUNCTION ref.refresh_session(p_refresh uuid, p_ttl interval DEFAULT '7 days')
RETURNS TABLE(jti uuid, refresh_jti uuid, expires_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE s truxe.sessions; n uuid := gen_random_uuid(); r uuid := gen_random_uuid(); nid uuid;
BEGIN
  SELECT * INTO s FROM truxe.sessions x WHERE x.refresh_jti_hash = sha256(uuid_send(p_refresh)) FOR UPDATE;
  IF NOT FOUND OR s.revoked_at IS NOT NULL OR s.expires_at <= now() THEN RETURN; END IF;
  INSERT INTO truxe.sessions AS x (jti_hash, user_id, org_id, refresh_jti_hash, family_id, device_info, ip, user_agent, expires_at)
    VALUES (sha256(uuid_send(n)), s.user_id, s.org_id, sha256(uuid_send(r)), s.family_id, s.device_info, s.ip, s.user_agent, now() + p_ttl)
    RETURNING x.id INTO nid;
  UPDATE truxe.sessions x SET revoked_at = now(), revoked_reason = 'rotated', replaced_by = nid WHERE x.id = s.id;
  RETURN QUERY SELECT n, r, x.expires_at FROM truxe.sessions x WHERE x.id = nid;
END $$;

CREATE FUNCTION ref.rate_limit_hit(p_key text, p_max integer, p_window interval DEFAULT '1 minute')
RETURNS TABLE(allowed boolean, remaining integer, reset_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE w double precision := extract(epoch FROM p_window); ws timestamptz; n integer;
BEGIN
  ws := to_timestamp(floor(extract(epoch FROM now()) / w) * w);
  INSERT INTO truxe.rate_limits AS r (key_hash, window_start, window_end)
    VALUES (encode(ref.digest(p_key, 'sha256'), 'hex'), ws, ws + p_window)
    ON CONFLICT (key_hash, window_start) DO UPDATE SET request_count = r.request_count + 1
    RETURNING r.request_count INTO n;
  RETURN QUERY SELECT n <= p_max, greatest(p_max - n, 0), ws + p_window;
END $$;

CREATE FUNCTION ref.record_usage(p_org uuid, p_metric text, p_amount bigint DEFAULT 1, p_at timestamptz DEFAULT now())
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE ps timestamptz := date_trunc('month', p_at, 'UTC'); total bigint;
BEGIN
  INSERT INTO truxe.usage_metrics AS u (org_id, metric_type, metric_value, period_start, period_end)
    VALUES (p_org, p_metric, p_amount, ps, (ps AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC')
    ON CONFLICT (org_id, metric_type, period_start) DO UPDATE SET metric_value = u.metric_value + EXCLUDED.metric_value
    RETURNING u.metric_value INTO total;
  RETURN total;
END $$;

CREATE FUNCTION ref.has_permission(p_org uuid, p_perm text, p_user uuid)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
DECLARE r record; p text;
BEGIN
  FOR r IN
    WITH RECURSIVE up(id) AS (SELECT parent_org_id FROM truxe.organizations WHERE id = p_org AND parent_org_id IS NOT NULL
                              UNION ALL SELECT o.parent_org_id FROM truxe.organizations o JOIN up ON o.id = up.id
                               WHERE o.parent_org_id IS NOT NULL)
    SELECT m.role, m.permissions, m.org_id = p_org AS direct FROM truxe.memberships m
     WHERE m.user_id = p_user AND m.joined_at IS NOT NULL
       AND (m.org_id = p_org OR (m.org_id IN (SELECT id FROM up) AND m.role IN ('owner', 'admin')))
  LOOP
    FOR p IN SELECT rp.permission FROM truxe.role_permissions rp WHERE rp.role = r.role
             UNION ALL SELECT jsonb_array_elements_text(CASE WHEN r.direct THEN r.permissions ELSE '[]' END)
    LOOP
      IF p = '*' OR p = p_perm OR (p LIKE '%:*' AND split_part(p, ':', 1) = split_part(p_perm, ':', 1)) THEN
        RETURN true;
      END IF;
    END LOOP;
  END LOOP;
  RETURN false;
END $$;

CREATE FUNCTION ref.accessible_org_ids() RETURNS uuid[] LANGUAGE plpgsql STABLE AS $$
DECLARE me uuid := nullif(current_setting('app.current_user_id', true), '')::uuid; result uuid[];
BEGIN
  WITH RECURSIVE tree(id) AS (
    SELECT m.org_id FROM truxe.memberships m
     WHERE m.user_id = me AND m.joined_at IS NOT NULL AND m.role IN ('owner', 'admin')
    UNION SELECT o.id FROM truxe.organizations o JOIN tree t ON o.parent_org_id = t.id)
  SELECT array_agg(DISTINCT x) INTO result FROM (
    SELECT m.org_id FROM truxe.memberships m WHERE m.user_id = me AND m.joined_at IS NOT NULL
    UNION ALL SELECT id FROM tree) s(x);
  RETURN coalesce(result, '{}');
END $$;

-- the reference's organizations table (truxe's columns, constraints and indexes: LIKE …
-- INCLUDING ALL), its updated_at trigger and its hierarchy check, a PL/pgSQL loop walking
-- parent_org_id; without truxe's audit row, closure upkeep or permission check
CREATE TABLE ref.organizations (LIKE truxe.organizations INCLUDING ALL);
ALTER TABLE ref.organizations ADD FOREIGN KEY (parent_org_id) REFERENCES ref.organizations (id) ON DELETE SET NULL;
INSERT INTO ref.organizations SELECT * FROM truxe.organizations ORDER BY created_at, id;
CREATE FUNCTION ref.update_updated_at_column() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at = now();
  RETURN NEW;
END $$;
CREATE TRIGGER update_organizations_updated_at BEFORE UPDATE ON ref.organizations
  FOR EACH ROW EXECUTE FUNCTION ref.update_updated_at_column();
CREATE FUNCTION ref.check_org_hierarchy() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE cur uuid := NEW.parent_org_id; depth int := 1;
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.parent_org_id IS NOT DISTINCT FROM OLD.parent_org_id THEN RETURN NEW; END IF;
  WHILE cur IS NOT NULL LOOP
    IF cur = NEW.id THEN RAISE EXCEPTION 'cycle' USING ERRCODE = '23514'; END IF;
    depth := depth + 1;
    IF depth > 64 THEN RAISE EXCEPTION 'too deep' USING ERRCODE = '23514'; END IF;
    SELECT o.parent_org_id INTO cur FROM ref.organizations o WHERE o.id = cur;
  END LOOP;
  RETURN NEW;
END $$;
CREATE TRIGGER check_org_hierarchy BEFORE INSERT OR UPDATE ON ref.organizations
  FOR EACH ROW EXECUTE FUNCTION ref.check_org_hierarchy();
ANALYZE ref.organizations;

-- Invitations by e-mail: invite (the rules of invite_member, the per-org hourly limit, the
-- earlier pending invitation revoked) and accept (attempts, statuses, the user created,
-- the membership joined), the magic-link token format, on truxe.invitations.
CREATE FUNCTION ref.invite_by_email(p_org uuid, p_email citext, p_role truxe.membership_role DEFAULT 'member',
                                    p_permissions jsonb DEFAULT '[]', p_ttl interval DEFAULT '7 days')
RETURNS TABLE(invitation_id uuid, token text, expires_at timestamptz) LANGUAGE plpgsql AS $$
DECLARE me uuid := truxe.current_user_id(); my_role truxe.membership_role; p text;
        secret bytea := ref.gen_random_bytes(32); iid uuid; exp timestamptz;
BEGIN
  IF p_email !~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$' THEN
    RAISE EXCEPTION 'invalid email' USING ERRCODE = '22023';
  END IF;
  IF p_ttl < interval '1 hour' OR p_ttl > interval '30 days' THEN
    RAISE EXCEPTION 'invalid ttl' USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = me AND u.status = 'active') THEN
    RAISE EXCEPTION 'no active user' USING ERRCODE = '42501';
  END IF;
  IF p_role IS NULL OR jsonb_typeof(p_permissions) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'bad role or permissions' USING ERRCODE = '22023';
  END IF;
  SELECT min(m.role) INTO my_role FROM truxe.memberships m
   WHERE m.user_id = me AND m.joined_at IS NOT NULL
     AND (m.org_id = p_org OR (m.role IN ('owner', 'admin') AND m.org_id IN (
           SELECT c.ancestor_id FROM truxe.org_closure c WHERE c.descendant_id = p_org)));
  IF my_role IS NULL OR my_role NOT IN ('owner', 'admin') OR (p_role = 'owner' AND my_role <> 'owner') THEN
    RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
  END IF;
  FOR p IN SELECT jsonb_array_elements_text(p_permissions) LOOP
    IF p !~ '^(\*|[a-z_]+:(\*|[a-z_]+))$' THEN
      RAISE EXCEPTION 'invalid permission' USING ERRCODE = '22023';
    END IF;
    IF my_role <> 'owner' AND NOT ref.has_permission(p_org, p, me) THEN
      RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
  END LOOP;
  PERFORM pg_advisory_xact_lock(hashtextextended(p_org::text, 7331));
  IF (SELECT count(*) FROM truxe.invitations i
       WHERE i.org_id = p_org AND i.created_at > now() - interval '1 hour') >= 100 THEN
    RAISE EXCEPTION 'too many invitations' USING ERRCODE = 'TX429';
  END IF;
  UPDATE truxe.invitations i SET revoked_at = now()
   WHERE i.org_id = p_org AND i.email = p_email AND i.accepted_at IS NULL AND i.revoked_at IS NULL;
  INSERT INTO truxe.invitations AS i (org_id, email, role, permissions, token_hash, invited_by, expires_at)
    VALUES (p_org, p_email, p_role, p_permissions, encode(ref.digest(secret, 'sha256'), 'hex'), me, now() + p_ttl)
    RETURNING i.id, i.expires_at INTO iid, exp;
  INSERT INTO truxe.audit_logs (org_id, actor_user_id, action, target_type, target_id, details)
    VALUES (p_org, me, 'invitation.sent', 'invitation', iid::text,
            jsonb_build_object('email', p_email, 'role', p_role));
  RETURN QUERY SELECT iid, replace(iid::text, '-', '') || '.' ||
                      rtrim(translate(encode(secret, 'base64'), '+/', '-_'), '='), exp;
END $$;

CREATE FUNCTION ref.accept_invitation_token(p_token text, p_user uuid DEFAULT NULL)
RETURNS TABLE(status text, org_id uuid, user_id uuid) LANGUAGE plpgsql AS $$
DECLARE iid uuid; secret bytea; inv truxe.invitations; uid uuid; ust truxe.user_status;
        joined boolean; result text := 'accepted';
BEGIN
  BEGIN
    IF length(p_token) <> 76 OR substr(p_token, 33, 1) <> '.' THEN RAISE EXCEPTION 'bad'; END IF;
    iid := substr(p_token, 1, 32)::uuid;
    secret := decode(translate(substr(p_token, 34), '-_', '+/') || '=', 'base64');
  EXCEPTION WHEN others THEN
    RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid; RETURN;
  END;
  SELECT * INTO inv FROM truxe.invitations i WHERE i.id = iid FOR UPDATE;
  IF NOT FOUND THEN RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid; RETURN; END IF;
  IF inv.attempts >= 5 THEN RETURN QUERY SELECT 'locked'::text, NULL::uuid, NULL::uuid; RETURN; END IF;
  IF inv.token_hash <> encode(ref.digest(secret, 'sha256'), 'hex') THEN
    UPDATE truxe.invitations i SET attempts = i.attempts + 1 WHERE i.org_id = inv.org_id AND i.id = iid;
    RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid; RETURN;
  END IF;
  IF inv.accepted_at IS NOT NULL THEN RETURN QUERY SELECT 'used'::text, inv.org_id, NULL::uuid; RETURN; END IF;
  IF inv.revoked_at IS NOT NULL THEN RETURN QUERY SELECT 'revoked'::text, inv.org_id, NULL::uuid; RETURN; END IF;
  IF inv.expires_at <= now() THEN RETURN QUERY SELECT 'expired'::text, inv.org_id, NULL::uuid; RETURN; END IF;
  IF p_user IS NOT NULL AND NOT EXISTS (SELECT 1 FROM truxe.users u WHERE u.id = p_user AND u.email = inv.email) THEN
    RETURN QUERY SELECT 'email_mismatch'::text, inv.org_id, p_user; RETURN;
  END IF;
  SELECT u.id, u.status INTO uid, ust FROM truxe.users u WHERE u.email = inv.email FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO truxe.users AS u (email, status, email_verified) VALUES (inv.email, 'active', true)
      RETURNING u.id INTO uid;
  ELSIF ust IN ('suspended', 'deleted') THEN
    RETURN QUERY SELECT 'rejected'::text, inv.org_id, uid; RETURN;
  ELSIF ust = 'pending' THEN
    UPDATE truxe.users u SET status = 'active', email_verified = true WHERE u.id = uid;
  END IF;
  SELECT m.joined_at IS NOT NULL INTO joined FROM truxe.memberships m
   WHERE m.org_id = inv.org_id AND m.user_id = uid FOR UPDATE;
  IF joined THEN
    result := 'already_member';
  ELSIF joined IS NOT NULL THEN
    UPDATE truxe.memberships m SET joined_at = now(), role = inv.role, permissions = inv.permissions
     WHERE m.org_id = inv.org_id AND m.user_id = uid;
  ELSE
    INSERT INTO truxe.memberships (org_id, user_id, role, permissions, invited_by, invited_at, joined_at)
      VALUES (inv.org_id, uid, inv.role, inv.permissions, NULLIF(inv.invited_by, uid), inv.created_at, now());
  END IF;
  UPDATE truxe.invitations i SET accepted_at = now(), accepted_by = uid WHERE i.org_id = inv.org_id AND i.id = iid;
  INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id, details)
    VALUES (inv.org_id, 'invitation.accepted', 'invitation', iid::text,
            jsonb_build_object('user_id', uid, 'status', result));
  RETURN QUERY SELECT result, inv.org_id, uid;
END $$;
