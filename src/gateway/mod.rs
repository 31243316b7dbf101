//! gateway: not yet written.
