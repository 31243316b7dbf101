//! Object storage (a real S3-compatible server) and the Litestream binary for tests.
