//! The pods' processing windows: every pod logs a [`ProcessingWindow`] each time what it
//! processes changes (its topologies, the peers it covers), so a test can see which
//! topologies a pod processed under at once.

use std::collections::BTreeMap;
use std::path::Path;

use guildshard::wire::ProcessingWindow;

/// What the pods logged about what they processed.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Window records by ordinal, in time order.
    pub windows: BTreeMap<u32, Vec<ProcessingWindow>>,
}

/// Every window record in the log files of `log_dir`.
pub fn read(log_dir: &Path) -> Recorded {
    let mut recorded = Recorded::default();
    for entry in std::fs::read_dir(log_dir).expect("log dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(window) = json["window"].as_str() {
                let window: ProcessingWindow = serde_json::from_str(window)
                    .unwrap_or_else(|e| panic!("a record that does not parse ({e}): {line}"));
                recorded
                    .windows
                    .entry(window.ordinal.0)
                    .or_default()
                    .push(window);
            }
        }
    }
    for records in recorded.windows.values_mut() {
        records.sort_by_key(|w| w.at_ms);
    }
    recorded
}
