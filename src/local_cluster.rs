//! local_cluster: not yet written.
