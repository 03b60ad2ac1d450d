\set i random(1, 1000)
SELECT status FROM ref.inspect_magic_link((SELECT token FROM bench.ref_tokens WHERE i = :i));
