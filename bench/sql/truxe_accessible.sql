\set u random(1, :U)
BEGIN;
SELECT set_config('app.current_user_id', bench.uid(1, :u)::text, true);
SELECT truxe.accessible_org_ids();
END;
