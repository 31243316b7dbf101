//! http: not yet written.
