//! store: not yet written.
