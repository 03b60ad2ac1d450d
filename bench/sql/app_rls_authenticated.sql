\set i random(1, :U * 10)
\set u 1 + (:i - 1) / 10
\set o 1 + ((:u * 10 + (:i - 1) % 10) % :O)
BEGIN;
SELECT set_config('app.current_user_id', bench.uid(1, :u)::text, true);
SELECT id, name, created_at FROM bench.projects WHERE org_id = bench.uid(2, :o);
END;
