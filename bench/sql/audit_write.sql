\set o random(1, :O)
INSERT INTO truxe.audit_logs (org_id, action, target_type, target_id, details)
  VALUES (bench.uid(2, :o), 'bench.written', 'organization', :o, '{"bench": true}');
