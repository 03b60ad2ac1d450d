\set i random(1, :F)
SELECT truxe.verify_totp(f.factor_id, bench.totp(f.seed)) FROM bench.factors f WHERE f.i = :i;
