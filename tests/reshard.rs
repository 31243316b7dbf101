//! reshard tests.
