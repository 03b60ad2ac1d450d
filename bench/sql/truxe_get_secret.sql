\set i random(1, :F)
SELECT truxe.get_secret(bench.uid(2, :i), 'webhook');
