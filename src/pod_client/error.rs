//! What a call to a pod that produced no usable answer reports: whether the request may have
//! reached the pod decides whether a caller may send it again.

use crate::ownership::Ordinal;

/// A call to a pod that did not produce an answer.
///
/// Only a connect error (nothing was sent) may be retried for an interaction: after that, the
/// pod may have executed the command and a second POST could act twice.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// No connection could be made: the request was never sent (safe to retry).
    #[error("cannot connect to gateway-{ordinal}")]
    Connect {
        /// The pod.
        ordinal: Ordinal,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The pod did not answer in time; it may have received (and acted on) the request.
    #[error("gateway-{ordinal} did not answer in time")]
    Timeout {
        /// The pod.
        ordinal: Ordinal,
    },
    /// The pod refused the request as malformed (400) without acting on it.
    #[error("gateway-{ordinal} could not read the request: {reason}")]
    Rejected {
        /// The pod.
        ordinal: Ordinal,
        /// The pod's error text.
        reason: String,
    },
    /// The pod answered 503: it is not serving this request (stopping, out of time, or not
    /// running behind the address), and it did not act on it.
    #[error("gateway-{ordinal} is unavailable: {reason}")]
    Unavailable {
        /// The pod.
        ordinal: Ordinal,
        /// The pod's (or the proxy's) error text.
        reason: String,
    },
    /// The connection failed mid-request or the answer was not what the contract says.
    #[error("gateway-{ordinal}: {reason}")]
    Failed {
        /// The pod.
        ordinal: Ordinal,
        /// What went wrong.
        reason: String,
    },
}

impl PodError {
    /// Sorts a client error by whether the request may have been sent.
    pub(super) fn classify(ordinal: Ordinal, err: reqwest::Error) -> PodError {
        if err.is_connect() {
            PodError::Connect {
                ordinal,
                source: err,
            }
        } else if err.is_timeout() {
            PodError::Timeout { ordinal }
        } else {
            PodError::Failed {
                ordinal,
                reason: err.to_string(),
            }
        }
    }

    /// The pod asked.
    pub fn ordinal(&self) -> Ordinal {
        match self {
            PodError::Connect { ordinal, .. }
            | PodError::Timeout { ordinal }
            | PodError::Rejected { ordinal, .. }
            | PodError::Unavailable { ordinal, .. }
            | PodError::Failed { ordinal, .. } => *ordinal,
        }
    }

    /// What went wrong, without the pod's name (for errors that name it themselves).
    pub fn reason(&self) -> String {
        match self {
            PodError::Connect { source, .. } => format!("cannot connect: {source}"),
            PodError::Timeout { .. } => "did not answer in time".to_owned(),
            PodError::Rejected { reason, .. } => format!("could not read the request: {reason}"),
            PodError::Unavailable { reason, .. } => format!("unavailable: {reason}"),
            PodError::Failed { reason, .. } => reason.clone(),
        }
    }
}
