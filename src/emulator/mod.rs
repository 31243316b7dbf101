//! emulator: not yet written.
