//! litestream tests.
