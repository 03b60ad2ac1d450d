//! Usage metering: record_usage (SPEC §7).
