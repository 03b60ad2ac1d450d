//! Magic links: issue_magic_link, verify_magic_link, inspect_magic_link (SPEC §7).
