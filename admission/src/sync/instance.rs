//! The id this Envoy reports under: Envoy's node id when it is set, else one generated once
//! per Envoy and kept in shared data, so every worker reports the same id.

use super::INSTANCE_KEY;
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
    let stored = || {
        store
            .get(INSTANCE_KEY)
            .ok()
            .and_then(|(bytes, _)| bytes)
            .filter(|id| valid(id))
            .map(|id| String::from_utf8_lossy(&id).into_owned())
    };
    if let Some(id) = stored() {
        return id;
    }
    let id = format!("wipgate-{seed:016x}");
    // Another VM may be writing its own at the same moment: everyone uses what is stored.
    let _ = store.set(INSTANCE_KEY, id.as_bytes(), None);
    stored().unwrap_or(id)
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
}
