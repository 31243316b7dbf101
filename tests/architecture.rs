//! architecture tests.
