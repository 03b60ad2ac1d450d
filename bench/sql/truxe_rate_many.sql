\set k random(1, 100000)
SELECT allowed FROM truxe.rate_limit_hit(:k::text, 1000000000, '1 minute');
