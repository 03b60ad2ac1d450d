//! Security primitives (SHA-256 hex, constant-time comparison) and security_report (SPEC §8).
