//! The one seam between the core and the proxy-wasm host. The filter implements [`Host`] in
//! one adapter file; [`crate::fake_host::FakeHost`] implements it in memory for native tests.
//!
//! The clock is not part of it: the host's entry points read the time once and pass it down
//! as an argument, so every decision is a function of `now` that tests choose freely.

use crate::labels::{InFlight, Label, Labels, Usage};
use crate::ledger::ClosedWindow;
use crate::limits::Limits;
use crate::shared_data::SharedData;
use crate::sync::SyncFailure;
use crate::RejectReason;

/// An HTTP callout to the control service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callout<'a> {
    /// Envoy cluster to call.
    pub cluster: &'a str,
    /// `:authority` of the request.
    pub authority: &'a str,
    /// `:path` of the request (a POST with a JSON body).
    pub path: &'a str,
    /// The JSON body.
    pub body: &'a [u8],
    /// How long the host waits for the response.
    pub timeout_ms: u64,
    /// Sent as `authorization: Bearer TOKEN` when set.
    pub bearer: Option<&'a str>,
}

/// What the core tells the host's stats about. Borrowed: nothing is allocated to say it.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// New limits are in force (the host defines stats for their labels).
    LimitsInForce(&'a Limits),
    /// A request was admitted.
    Admitted(&'a Labels),
    /// A request was rejected.
    Rejected(&'a Labels, RejectReason),
    /// An admitted request gave its slot back (or found it reclaimed already).
    Released(&'a Labels),
    /// Slots of dead VMs were given back (a counter; the gauges follow [`Event::InFlight`]).
    Reclaimed(u64),
    /// The ledger was written: requests in flight as it now holds them.
    InFlight(&'a InFlight),
    /// Write attempts lost to concurrent writers of the ledger.
    CasRetries(u32),
    /// The shared ledger could not be read or written.
    GateError,
    /// An adaptive window closed.
    WindowClosed(&'a ClosedWindow),
    /// A sync with the control service ended.
    Synced(Result<(), SyncFailure>),
    /// A request started waiting for a slot.
    Queued(&'a Labels),
    /// A wait ended after this many µs, this way.
    WaitEnded(&'a Labels, u64, WaitEnd),
}

/// How a wait for a slot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// A slot was handed to it.
    Admitted,
    /// Its deadline came first: `503 queue_timeout`.
    TimedOut,
    /// Its client went away.
    Left,
}

/// The host: shared data (via [`SharedData`]), callouts and stats.
pub trait Host: SharedData {
    /// Starts a callout; returns its token, or why the host refused it.
    fn dispatch(&self, call: &Callout<'_>) -> Result<u32, String>;

    /// Counts an event in the host's stats.
    fn record(&self, event: Event<'_>);

    /// Envoy-wide counts per tenant and class label, for the sync report.
    fn usage(&self) -> Vec<(Label, Usage)>;

    /// Wakes the VM behind host queue `queue` (its [`crate::Admitter::on_wake`] runs soon,
    /// on its own thread). Best effort: a lost wake-up is made good by that VM's timer.
    fn wake(&self, queue: u32);
}

impl<T: Host + ?Sized> Host for &T {
    fn dispatch(&self, call: &Callout<'_>) -> Result<u32, String> {
        (**self).dispatch(call)
    }

    fn record(&self, event: Event<'_>) {
        (**self).record(event);
    }

    fn usage(&self) -> Vec<(Label, Usage)> {
        (**self).usage()
    }

    fn wake(&self, queue: u32) {
        (**self).wake(queue);
    }
}
