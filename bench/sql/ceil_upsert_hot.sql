INSERT INTO bench.counter AS c VALUES ('hot', 1) ON CONFLICT (k) DO UPDATE SET n = c.n + 1;
