\set i random(1, :U * 10)
\set u 1 + (:i - 1) / 10
\set o 1 + ((:u * 10 + (:i - 1) % 10) % :O)
SELECT truxe.has_permission(bench.uid(2, :o), 'users' || ':' || 'read', bench.uid(1, :u));
