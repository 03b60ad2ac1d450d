-- Second factors and the vault, for the verify_totp and get_secret rows (loaded by bench/run
-- after reference.sql, whose schema ref holds pgcrypto; psql variable F = how many).
-- F TOTP factors (users 1..F) enrolled through truxe, with their seeds kept here in clear
-- so that the pgbench script can compute the current code (RFC 6238 in SQL with pgcrypto's
-- hmac); one secret in each of orgs 1..F.
CREATE TABLE bench.factors (i int PRIMARY KEY, factor_id uuid NOT NULL, seed bytea NOT NULL);

-- base32 (RFC 4648, unpadded) to bytes
CREATE FUNCTION bench.b32(s text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT decode(string_agg(lpad(to_hex(substr(b.bits, i, 8)::bit(8)::int), 2, '0'), '' ORDER BY i), 'hex')
    FROM (SELECT string_agg(((strpos('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', c) - 1)::bit(5))::text, '' ORDER BY n) AS bits
            FROM regexp_split_to_table(s, '') WITH ORDINALITY t(c, n)) b,
         generate_series(1, length(b.bits) - 7, 8) i
$$;

-- the 6-digit TOTP code of seed for the current 30-second step (PL/pgSQL: its simple
-- expressions are cheap next to a non-inlined SQL function's per-call planning)
CREATE FUNCTION bench.totp(seed bytea) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  h bytea := ref.hmac(int8send(floor(extract(epoch FROM clock_timestamp()) / 30)::bigint), seed, 'sha1');
  o int := get_byte(h, 19) & 15;
BEGIN
  RETURN lpad(((((get_byte(h, o) & 127) << 24) | (get_byte(h, o + 1) << 16)
                | (get_byte(h, o + 2) << 8) | get_byte(h, o + 3)) % 1000000)::text, 6, '0');
END
$$;

INSERT INTO bench.factors
  SELECT g, f.factor_id, bench.b32(f.secret)
    FROM generate_series(1, :F) g, truxe.enroll_totp(bench.uid(1, g), 'bench') f;
SELECT count(truxe.put_secret(bench.uid(2, g), 'webhook', 'whsec_' || g)) FROM generate_series(1, :F) g;
