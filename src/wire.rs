//! Types that cross process boundaries (internal API bodies, status reports, guild exports).
//!
//! Level 0: serde only, no I/O, so every side of a conversation agrees on one definition.
