-- Organisation hierarchy (docs/reference.md, "Hierarchy"). The checks are Rust triggers (src/hierarchy.rs); they
-- fire only when parent_org_id is set, changes or goes away. The permission check runs
-- first, as the caller; the cycle/depth check and the closure upkeep run after the row is
-- written, as the extension owner, so RLS hides no org from them. Every function here pins
-- search_path: none resolves a function, operator or type by the caller's path.

-- The triggers' C entry points are truxe's own (src/trigger.rs), so that calling one as a
-- plain function is a clean 0A000, not a panic; nobody holds EXECUTE on them
-- (sql/grants.sql). The permission check runs as the caller. The `_v2` symbols: the 0.1.0
-- functions' symbols keep 0.1's behaviour for databases still on that schema.
CREATE FUNCTION truxe.check_org_reparent() RETURNS trigger
LANGUAGE c SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'check_org_reparent_v2_wrapper';
-- enable_bitmapscan off: its statements read a few pairs by key, and plain index scans mark
-- the index entries of pairs a moved org left behind as dead (bitmap scans never do), so a
-- frequently moved org does not drag its history through every later check (bench/)
CREATE FUNCTION truxe.maintain_org_hierarchy() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_bitmapscan = off
AS 'MODULE_PATHNAME', 'maintain_org_hierarchy_v2_wrapper';

-- Every (ancestor, descendant) pair of the tree, depth >= 1 (1 = parent): admin_org_ids()
-- and accessible_org_ids() read an org's descendants with one index scan instead of a
-- recursive walk, and the cycle/depth check reads a new parent's ancestors the same way.
-- Kept by truxe.maintain_org_hierarchy(); no foreign keys (each would re-check every
-- inserted pair), org deletions are handled by the trigger.
CREATE TABLE truxe.org_closure (
  ancestor_id   uuid NOT NULL,
  descendant_id uuid NOT NULL,
  depth         integer NOT NULL CHECK (depth >= 1),
  PRIMARY KEY (ancestor_id, descendant_id) INCLUDE (depth)
);
CREATE INDEX idx_org_closure_descendant ON truxe.org_closure (descendant_id, ancestor_id) INCLUDE (depth);
-- One row per tree (keyed by its root org), locked and bumped by every change of that tree:
-- it serialises the changes of one tree, never of two unrelated ones, and makes a snapshot
-- that missed a change of the tree fail with 40001 (src/hierarchy.rs). Rows are created on
-- a tree's first change and kept (see src/hierarchy.rs); they hold no data, so the table is
-- not dumped: after a restore the rows come back on demand. No foreign key: a root's row
-- outlives the root.
CREATE TABLE truxe.org_tree (
  root_id uuid PRIMARY KEY,
  version bigint NOT NULL DEFAULT 0
);
SELECT pg_catalog.pg_extension_config_dump('truxe.org_closure', '');
-- the extension owner's alone: RLS on, no policy, no privilege (sql/grants.sql)
ALTER TABLE truxe.org_closure ENABLE ROW LEVEL SECURITY;
ALTER TABLE truxe.org_tree ENABLE ROW LEVEL SECURITY;

CREATE TRIGGER organizations_1_reparent_check
  BEFORE UPDATE OF parent_org_id ON truxe.organizations
  FOR EACH ROW EXECUTE FUNCTION truxe.check_org_reparent();
CREATE TRIGGER organizations_2_hierarchy
  AFTER INSERT OR UPDATE OF parent_org_id OR DELETE ON truxe.organizations
  FOR EACH ROW EXECUTE FUNCTION truxe.maintain_org_hierarchy();

-- Ancestors of an org, nearest first (depth 1 = parent). SECURITY INVOKER: an
-- authenticated caller gets the ancestors RLS lets it see. That is why these two walk
-- parent_org_id instead of reading truxe.org_closure (the extension owner's alone, and
-- blind to what the caller may see). Their bound, 1000, is the hard maximum of
-- truxe.max_org_depth (src/gucs.rs): a tree the trigger kept is never that deep, so the
-- bound only stops a walk through a cycle made with the triggers disabled
-- (tests/integration/hierarchy.rs proves the two numbers agree).
-- No SET search_path here, unlike every other truxe function: a SQL function with a SET
-- clause is never inlined and is planned anew on every call (4x slower in
-- bench/search_path_cost), and these run inside every organisation function. Instead every
-- name in their bodies is qualified (tables truxe.*, operators OPERATOR(pg_catalog.…)), so
-- inlined into the caller's query they still resolve nothing through the caller's path
-- (tests/integration/shadow.rs); security_report() knows them as qualified.
CREATE FUNCTION truxe.org_ancestors(org_id uuid)
RETURNS TABLE(org_id uuid, depth int) LANGUAGE sql STABLE AS $$
  WITH RECURSIVE up(org_id, depth) AS (
    SELECT o.parent_org_id, 1 FROM truxe.organizations o
     WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.parent_org_id IS NOT NULL
    UNION ALL
    SELECT o.parent_org_id, up.depth OPERATOR(pg_catalog.+) 1
      FROM truxe.organizations o JOIN up ON o.id OPERATOR(pg_catalog.=) up.org_id
     WHERE o.parent_org_id IS NOT NULL AND up.depth OPERATOR(pg_catalog.<) 1000
  )
  SELECT up.org_id, up.depth FROM up ORDER BY up.depth;
$$;

-- Descendants of an org, breadth first (depth 1 = children). SECURITY INVOKER, as above.
CREATE FUNCTION truxe.org_descendants(org_id uuid)
RETURNS TABLE(org_id uuid, depth int) LANGUAGE sql STABLE AS $$
  WITH RECURSIVE down(org_id, depth) AS (
    SELECT o.id, 1 FROM truxe.organizations o WHERE o.parent_org_id OPERATOR(pg_catalog.=) $1
    UNION ALL
    SELECT o.id, down.depth OPERATOR(pg_catalog.+) 1
      FROM truxe.organizations o JOIN down ON o.parent_org_id OPERATOR(pg_catalog.=) down.org_id
     WHERE down.depth OPERATOR(pg_catalog.<) 1000
  )
  SELECT down.org_id, down.depth FROM down ORDER BY down.depth, down.org_id;
$$;
