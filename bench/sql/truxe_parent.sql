\set m 1 + :client_id % 8
UPDATE truxe.organizations SET parent_org_id = bench.uid(2, :d) WHERE id = bench.uid(5, :m);
UPDATE truxe.organizations SET parent_org_id = NULL WHERE id = bench.uid(5, :m);
