//! Rate limiting: rate_limit_hit (SPEC §7).
