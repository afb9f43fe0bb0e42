//! The id this Envoy reports under: Envoy's node id when it is set, else one generated once
//! per Envoy and kept in shared data, so every worker reports the same id.

use super::{INSTANCE_KEY, NONCE_KEY};
use crate::wire::sync::MAX_INSTANCE_LEN;
use crate::SharedData;

/// The instance id. `seed` picks a generated id (the filter mixes the host's randomness
/// with the clock); whichever worker stores one first, every worker uses that one.
pub fn instance_id(store: &impl SharedData, node_id: Option<&[u8]>, seed: u64) -> String {
    let valid = |id: &[u8]| {
        !id.is_empty() && id.len() <= MAX_INSTANCE_LEN && id.iter().all(u8::is_ascii_graphic)
    };
    if let Some(id) = node_id.filter(|id| valid(id)) {
        // Visible ASCII only, so the conversion is lossless.
        return String::from_utf8_lossy(id).into_owned();
    }
    // Another VM may be writing its own at the same moment: everyone uses what is stored.
    stored_once(store, INSTANCE_KEY, format!("wipgate-{seed:016x}"), valid)
}

/// This Envoy process's nonce (16 hex digits from `seed`), kept in shared data so every
/// worker, and every VM after a configuration reload, reports the same one; a new process
/// (a restart, a second Envoy on the same node id) has its own.
pub fn process_nonce(store: &impl SharedData, seed: u64) -> String {
    stored_once(store, NONCE_KEY, format!("{seed:016x}"), |n| {
        n.len() == 16 && n.iter().all(u8::is_ascii_hexdigit)
    })
}

/// The value under `key` when it is `valid`; else `fresh`, stored unless another worker
/// stored one first (then that one). Valid values are visible ASCII, so the conversion is
/// lossless.
fn stored_once(
    store: &impl SharedData,
    key: &str,
    fresh: String,
    valid: impl Fn(&[u8]) -> bool,
) -> String {
    let stored = || {
        store
            .get(key)
            .ok()
            .and_then(|(bytes, _)| bytes)
            .filter(|v| valid(v))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    if let Some(value) = stored() {
        return value;
    }
    let _ = store.set(key, fresh.as_bytes(), None);
    stored().unwrap_or(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_data::MemoryStore;

    #[test]
    fn the_node_id_wins_when_it_is_valid() {
        let store = MemoryStore::default();
        assert_eq!(instance_id(&store, Some(b"envoy-7"), 1), "envoy-7");
        assert_eq!(
            instance_id(&store, Some(b""), 1),
            "wipgate-0000000000000001"
        );
        assert_eq!(
            instance_id(&store, Some(b"bad id"), 2),
            "wipgate-0000000000000001",
            "the first generated id is kept for every worker"
        );
        assert_eq!(instance_id(&store, None, 3), "wipgate-0000000000000001");
    }

    #[test]
    fn one_nonce_per_process() {
        let store = MemoryStore::default();
        assert_eq!(process_nonce(&store, 0xab), "00000000000000ab");
        assert_eq!(
            process_nonce(&store, 0xcd),
            "00000000000000ab",
            "every worker the same"
        );
        assert_eq!(
            process_nonce(&MemoryStore::default(), 0xcd),
            "00000000000000cd"
        );
    }
}
