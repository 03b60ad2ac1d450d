//! Organisation hierarchy: the cycle/depth check trigger, org_ancestors, org_descendants (SPEC §5).
