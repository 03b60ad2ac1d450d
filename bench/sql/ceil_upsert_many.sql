\set k random(1, 100000)
INSERT INTO bench.counter AS c VALUES (:k::text, 1) ON CONFLICT (k) DO UPDATE SET n = c.n + 1;
