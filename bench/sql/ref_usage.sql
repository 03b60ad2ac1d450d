\set o random(1, :O)
SELECT ref.record_usage(bench.uid(2, :o), 'api_requests');
