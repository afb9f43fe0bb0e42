//! The gate under real threads and a shared store with compare-and-swap semantics like
//! Envoy's shared data: the limit holds, and every permit is released exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use wipgate_admission::shared_data::MemoryStore;
use wipgate_admission::{Admission, Gate, WorkerHandle};

fn admitted(a: &Admission) -> bool {
    matches!(a, Admission::Admitted(_))
}

#[test]
fn limit_holds_across_threads_and_counts_return_to_zero() {
    const LIMIT: u32 = 7;
    let store = Arc::new(MemoryStore::default());
    let gate = Gate::default();
    gate.initialize(&*store).unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, gate) = (store.clone(), gate.clone());
            let (held, peak) = (held.clone(), peak.clone());
            std::thread::spawn(move || {
                let worker = WorkerHandle::default();
                let mut count = 0u64;
                for i in 0..2_000u64 {
                    // Contended (every attempt lost to other writers) counts as a rejection.
                    let Ok(report) = gate.admit_within(&*store, &worker, LIMIT, i) else {
                        continue;
                    };
                    if let Admission::Admitted(permit) = report.value {
                        count += 1;
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        held.fetch_sub(1, Ordering::SeqCst);
                        // A contended release is owed and paid by a later write.
                        let _ = gate.release(&*store, &worker, permit, None, i, None);
                    }
                }
                for _ in 0..1_000 {
                    if worker.owed_releases() == 0 {
                        break;
                    }
                    let _ = gate.heartbeat(&*store, &worker, 2_000, None);
                }
                assert_eq!(worker.owed_releases(), 0);
                count
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 0);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= u64::from(LIMIT), "peak {peak} over {LIMIT}");
    assert_eq!(gate.inflight(&*store, &WorkerHandle::default()).unwrap(), 0);
}

#[test]
fn dead_workers_slots_come_back_after_the_lease() {
    let store = MemoryStore::default();
    let gate = Gate::new("k", 1_000);
    let (dead, live) = (WorkerHandle::default(), WorkerHandle::default());
    for _ in 0..3 {
        assert!(admitted(
            &gate.admit_within(&store, &dead, 3, 0).unwrap().value
        ));
    }
    assert!(!admitted(
        &gate.admit_within(&store, &live, 3, 500).unwrap().value
    ));
    let beat = gate.heartbeat(&store, &live, 1_000, None).unwrap();
    assert_eq!((beat.reclaimed, beat.value), (3, 0));
    assert!(admitted(
        &gate.admit_within(&store, &live, 3, 1_001).unwrap().value
    ));
}

#[test]
fn a_failed_release_is_paid_by_the_next_write() {
    let store = MemoryStore::failing_every(2);
    let gate = Gate::default();
    let worker = WorkerHandle::default();
    // Write 0 fails (injected), write 1 admits.
    assert!(gate.admit_within(&store, &worker, 1, 0).is_err());
    let Admission::Admitted(permit) = gate.admit_within(&store, &worker, 1, 0).unwrap().value
    else {
        panic!("first admission refused");
    };
    // Write 2 fails: the release is owed, the slot still counted.
    assert!(gate
        .release(&store, &worker, permit, None, 1, None)
        .is_err());
    assert_eq!(worker.owed_releases(), 1);
    assert_eq!(gate.inflight(&store, &WorkerHandle::default()).unwrap(), 1);
    // Write 3 succeeds and pays it.
    gate.heartbeat(&store, &worker, 2, None).unwrap();
    assert_eq!(worker.owed_releases(), 0);
    assert_eq!(gate.inflight(&store, &WorkerHandle::default()).unwrap(), 0);
}

proptest! {
    /// Random interleavings of admit/release/heartbeat by several workers, with writes that
    /// fail now and then: never over the limit, and once every permit is released and a
    /// heartbeat has paid what is owed, the ledger is back at zero.
    #[test]
    fn interleavings_keep_the_invariants(
        limit in 1u32..10,
        fail_every in proptest::option::of(2u64..7),
        ops in proptest::collection::vec((0usize..4, 0u8..3), 1..300),
    ) {
        let store = fail_every.map_or_else(MemoryStore::default, MemoryStore::failing_every);
        let gate = Gate::default();
        let workers: Vec<WorkerHandle> = (0..4).map(|_| WorkerHandle::default()).collect();
        let mut permits: Vec<Vec<_>> = (0..4).map(|_| Vec::new()).collect();
        for (t, (w, op)) in ops.into_iter().enumerate() {
            let now = t as u64;
            match op {
                0 => {
                    if let Ok(r) = gate.admit_within(&store, &workers[w], limit, now) {
                        if let Admission::Admitted(p) = r.value {
                            permits[w].push(p);
                        }
                    }
                }
                1 => {
                    if let Some(p) = permits[w].pop() {
                        let _ = gate.release(&store, &workers[w], p, None, now, None);
                    }
                }
                _ => {
                    let _ = gate.heartbeat(&store, &workers[w], now, None);
                }
            }
            let held: usize = permits.iter().map(Vec::len).sum();
            prop_assert!(held <= limit as usize);
            prop_assert!(gate.inflight(&store, &WorkerHandle::default()).unwrap() <= u64::from(limit));
        }
        for (w, ps) in permits.iter_mut().enumerate() {
            for p in ps.drain(..) {
                let _ = gate.release(&store, &workers[w], p, None, 1_000, None);
            }
        }
        let clean = store.snapshot();
        for w in &workers {
            gate.heartbeat(&clean, w, 1_001, None).unwrap();
        }
        prop_assert_eq!(gate.inflight(&clean, &WorkerHandle::default()).unwrap(), 0);
        prop_assert!(workers.iter().all(|w| w.owed_releases() == 0));
    }
}
