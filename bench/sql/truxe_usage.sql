\set o random(1, :O)
SELECT truxe.record_usage(bench.uid(2, :o), 'api_requests');
