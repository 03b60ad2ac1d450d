-- truxe demo: run by scripts/run in database truxe_demo after CREATE EXTENSION truxe CASCADE.
\echo '== the extension and its schema'
\dx truxe
SELECT truxe.version() AS truxe_version;

-- == tenant isolation (schema / RLS) ==

-- == organisations, hierarchy and audit ==

-- == login flow: magic link, session, refresh, logout ==
