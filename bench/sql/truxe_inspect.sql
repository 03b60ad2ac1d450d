\set i random(1, 1000)
SELECT status FROM truxe.inspect_magic_link((SELECT token FROM bench.tokens WHERE i = :i));
