\set k random(1, 100000)
SELECT allowed FROM ref.rate_limit_hit(:k::text, 1000000000, '1 minute');
