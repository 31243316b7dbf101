//! The admission limit in front of the forward to a pod: at most
//! [`DEFAULT_FORWARDS_PER_POD`] interactions in flight to one pod at once.
//!
//! A pod that is slow (or drowning) would otherwise collect every incoming request as an open
//! call, each holding a socket and a task for up to Discord's 3 s, until the service runs out
//! of descriptors and fails everyone, including guilds of healthy pods. With a limit per pod,
//! the excess is answered "busy" at once and other pods are unaffected. Admission never
//! waits: a queued request would only spend the user's deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ownership::Ordinal;

/// Interactions in flight to one pod before more are answered "busy". A healthy pod answers
/// in milliseconds, so this allows thousands per second; a pod that defers everything (2.6 s)
/// still gets about fifty per second.
pub const DEFAULT_FORWARDS_PER_POD: usize = 128;

/// Per-pod forward slots.
pub struct Admission {
    per_pod: usize,
    pods: Mutex<HashMap<Ordinal, Arc<Semaphore>>>,
}

impl Admission {
    /// `per_pod` forwards in flight to each pod (at least one).
    pub fn new(per_pod: usize) -> Self {
        Admission {
            per_pod: per_pod.max(1),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one forward to `ordinal`, held until dropped; `None` when all are taken.
    pub fn try_admit(&self, ordinal: Ordinal) -> Option<OwnedSemaphorePermit> {
        let semaphore = self
            .pods
            .lock()
            // The map holds no invariant a panic could break.
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ordinal)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_pod)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_per_pod_and_again_once_a_slot_frees() {
        let admission = Admission::new(2);
        let a = admission.try_admit(Ordinal(0));
        let b = admission.try_admit(Ordinal(0));
        assert!(a.is_some() && b.is_some());
        assert!(admission.try_admit(Ordinal(0)).is_none());
        // Another pod has its own slots.
        assert!(admission.try_admit(Ordinal(1)).is_some());
        drop(a);
        assert!(admission.try_admit(Ordinal(0)).is_some());
    }
}
