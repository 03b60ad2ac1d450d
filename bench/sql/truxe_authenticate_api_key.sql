\set i random(1, 1000)
SELECT org_id FROM truxe.authenticate_api_key((SELECT k.key FROM bench.api_keys k WHERE k.i = :i));
