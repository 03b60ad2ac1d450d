//! Organisations and memberships (docs/reference.md, "Organisations and memberships"): create_organization, invite_member,
//! accept_invitation, change_role, remove_member, has_permission. Not hot and rule-heavy,
//! so they are PL/pgSQL and SQL in sql/orgs.sql, declared after the hierarchy they use.
pgrx::extension_sql_file!(
    "../sql/orgs.sql",
    name = "orgs",
    requires = ["schema", "context", "hierarchy"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::error::error_of;
    use pgrx::prelude::*;

    const OWNER: &str = "00000000-0000-0000-0000-0000000000a1";
    const ADMIN: &str = "00000000-0000-0000-0000-0000000000a2";
    const MEMBER: &str = "00000000-0000-0000-0000-0000000000a3";
    const OUTSIDER: &str = "00000000-0000-0000-0000-0000000000a4";

    fn act_as(user: &str) {
        Spi::run(&format!("SELECT truxe.set_context('{user}')")).unwrap();
    }

    /// Org 'acme' owned by OWNER, ADMIN joined as admin, MEMBER joined as member with an
    /// extra permission; returns nothing (look the org up by slug).
    fn setup() {
        Spi::run(&format!(
            "INSERT INTO truxe.users (id, email, status) VALUES
               ('{OWNER}', 'owner@x.example', 'active'), ('{ADMIN}', 'admin@x.example', 'active'),
               ('{MEMBER}', 'member@x.example', 'active'), ('{OUTSIDER}', 'out@x.example', 'active')"
        ))
        .unwrap();
        act_as(OWNER);
        Spi::run("SELECT truxe.create_organization('acme', 'Acme')").unwrap();
        Spi::run(&format!(
            "SELECT truxe.invite_member(o.id, '{ADMIN}', 'admin') FROM truxe.organizations o WHERE slug = 'acme';
             SELECT truxe.invite_member(o.id, '{MEMBER}', 'member', '[\"reports:export\"]') FROM truxe.organizations o WHERE slug = 'acme';"
        ))
        .unwrap();
        for u in [ADMIN, MEMBER] {
            act_as(u);
            Spi::run(
                "SELECT truxe.accept_invitation(id) FROM truxe.organizations WHERE slug = 'acme'",
            )
            .unwrap();
        }
    }

    fn has(user: &str, perm: &str, slug: &str) -> bool {
        Spi::get_one::<bool>(&format!(
            "SELECT truxe.has_permission(o.id, '{perm}', '{user}') FROM truxe.organizations o WHERE slug = '{slug}'"
        ))
        .unwrap()
        .unwrap_or(false)
    }

    fn code_of(sql: &str) -> Option<PgSqlErrorCode> {
        error_of(sql).map(|(c, _)| c)
    }

    #[pg_test]
    fn permissions_follow_roles_arrays_wildcards_and_ancestors() {
        setup();
        assert!(has(OWNER, "anything:at_all", "acme"), "owner holds *");
        assert!(has(ADMIN, "users:delete", "acme"), "admin holds users:*");
        assert!(has(ADMIN, "audit_logs:read", "acme"));
        assert!(!has(ADMIN, "audit_logs:delete", "acme"));
        assert!(has(MEMBER, "users:read", "acme"));
        assert!(!has(MEMBER, "users:write", "acme"));
        assert!(
            has(MEMBER, "reports:export", "acme"),
            "membership's own array"
        );
        assert!(!has(OUTSIDER, "users:read", "acme"));
        // a child org: the parent's owner and admin hold their role's permissions there,
        // the parent's member does not
        act_as(OWNER);
        Spi::run("SELECT truxe.create_organization('acme-eu', 'Acme EU', (SELECT id FROM truxe.organizations WHERE slug = 'acme'))").unwrap();
        assert!(has(ADMIN, "sessions:revoke", "acme-eu"));
        assert!(!has(MEMBER, "users:read", "acme-eu"));
        // pending invitations grant nothing
        Spi::run(&format!("SELECT truxe.invite_member(id, '{OUTSIDER}', 'admin') FROM truxe.organizations WHERE slug = 'acme'")).unwrap();
        assert!(!has(OUTSIDER, "users:read", "acme"));
    }

    #[pg_test]
    fn membership_rules_and_their_sqlstates() {
        setup();
        let acme = "(SELECT id FROM truxe.organizations WHERE slug = 'acme')";
        // no context
        Spi::run("SELECT truxe.clear_context()").unwrap();
        assert_eq!(
            code_of("SELECT truxe.create_organization('x-org', 'X')"),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        // bad input and unknown things
        act_as(OWNER);
        assert_eq!(
            code_of("SELECT truxe.create_organization('Bad Slug', 'X')"),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
        assert_eq!(
            code_of("SELECT truxe.create_organization('ok-slug', '  ')"),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
        // an unknown parent is refused like a stranger's: no existence oracle
        assert_eq!(
            code_of("SELECT truxe.create_organization('kid', 'Kid', gen_random_uuid())"),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.invite_member({acme}, gen_random_uuid())"
            )),
            Some(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND)
        );
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.invite_member({acme}, '{OUTSIDER}', 'member', '{{}}')"
            )),
            Some(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE)
        );
        // roles
        act_as(ADMIN);
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.invite_member({acme}, '{OUTSIDER}', 'owner')"
            )),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE),
            "only owners invite owners"
        );
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.change_role({acme}, '{OWNER}', 'member')"
            )),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE),
            "admins cannot demote owners"
        );
        assert_eq!(
            code_of(&format!("SELECT truxe.remove_member({acme}, '{OWNER}')")),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        act_as(MEMBER);
        assert_eq!(
            code_of(&format!("SELECT truxe.invite_member({acme}, '{OUTSIDER}')")),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        assert_eq!(code_of("SELECT truxe.create_organization('kid', 'Kid', (SELECT id FROM truxe.organizations WHERE slug = 'acme'))"), Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE));
        assert_eq!(
            code_of(&format!("SELECT truxe.accept_invitation({acme})")),
            Some(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND),
            "already joined"
        );
        // the last owner stays
        act_as(OWNER);
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.change_role({acme}, '{OWNER}', 'admin')"
            )),
            Some(PgSqlErrorCode::ERRCODE_CHECK_VIOLATION)
        );
        assert_eq!(
            code_of(&format!("SELECT truxe.remove_member({acme}, '{OWNER}')")),
            Some(PgSqlErrorCode::ERRCODE_CHECK_VIOLATION)
        );
        // with a second owner it can go; a member may leave by themself
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.change_role({acme}, '{ADMIN}', 'owner')"
            )),
            None
        );
        assert_eq!(
            code_of(&format!(
                "SELECT truxe.change_role({acme}, '{OWNER}', 'viewer')"
            )),
            None
        );
        act_as(MEMBER);
        assert_eq!(
            code_of(&format!("SELECT truxe.remove_member({acme}, '{MEMBER}')")),
            None
        );
        let owners = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM truxe.memberships WHERE org_id = {acme} AND role = 'owner'"
        ));
        assert_eq!(owners.unwrap(), Some(1));
    }
}
