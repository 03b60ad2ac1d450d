//! Scale-out on Citus (docs/scaling.md): `truxe.distribute()`, PL/pgSQL in
//! sql/distribute.sql, declared after every table it places.
pgrx::extension_sql_file!(
    "../sql/distribute.sql",
    name = "distribute",
    requires = [
        "schema",
        "api_keys",
        "mfa",
        "invitations",
        "vault",
        "seal",
        "hierarchy"
    ]
);
