-- Organisation hierarchy (SPEC §5). The checks are Rust triggers (src/hierarchy.rs); they
-- fire only when parent_org_id is set or changes. The permission check runs first, as the
-- caller; the walk runs as the extension owner, so RLS hides no ancestor from it.
CREATE TRIGGER organizations_1_reparent_check
  BEFORE UPDATE OF parent_org_id ON truxe.organizations
  FOR EACH ROW EXECUTE FUNCTION truxe.check_org_reparent();
CREATE TRIGGER organizations_2_hierarchy_check
  BEFORE INSERT OR UPDATE OF parent_org_id ON truxe.organizations
  FOR EACH ROW EXECUTE FUNCTION truxe.check_org_hierarchy();
ALTER FUNCTION truxe.check_org_hierarchy() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Ancestors of an org, nearest first (depth 1 = parent). SECURITY INVOKER: an
-- authenticated caller gets the ancestors RLS lets it see.
CREATE FUNCTION truxe.org_ancestors(org_id uuid)
RETURNS TABLE(org_id uuid, depth int) LANGUAGE sql STABLE AS $$
  WITH RECURSIVE up(org_id, depth) AS (
    SELECT o.parent_org_id, 1 FROM truxe.organizations o
     WHERE o.id = $1 AND o.parent_org_id IS NOT NULL
    UNION ALL
    SELECT o.parent_org_id, up.depth + 1 FROM truxe.organizations o JOIN up ON o.id = up.org_id
     WHERE o.parent_org_id IS NOT NULL AND up.depth < 1000
  )
  SELECT up.org_id, up.depth FROM up ORDER BY up.depth;
$$;

-- Descendants of an org, breadth first (depth 1 = children). SECURITY INVOKER, as above.
CREATE FUNCTION truxe.org_descendants(org_id uuid)
RETURNS TABLE(org_id uuid, depth int) LANGUAGE sql STABLE AS $$
  WITH RECURSIVE down(org_id, depth) AS (
    SELECT o.id, 1 FROM truxe.organizations o WHERE o.parent_org_id = $1
    UNION ALL
    SELECT o.id, down.depth + 1 FROM truxe.organizations o JOIN down ON o.parent_org_id = down.org_id
     WHERE down.depth < 1000
  )
  SELECT down.org_id, down.depth FROM down ORDER BY down.depth, down.org_id;
$$;
