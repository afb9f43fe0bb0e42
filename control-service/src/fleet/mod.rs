//! The fleet: one [`FleetPolicy`] for all Envoys, and how its numbers are shared among them.
//!
//! Every Envoy reports its counts in a `SyncRequest` and gets back its share of the fleet
//! numbers in a `SyncReply` (the wire types of `wipgate_admission::wire`). How a fleet
//! number is split among the live instances is pure arithmetic in [`allowance`];
//! [`InstanceBook`] is the whole bookkeeping of one process (the memory store), while the
//! Redis store keeps the same records in Redis and calls the same functions. Time is always
//! an argument.

pub mod allowance;
pub mod instance_book;
pub mod policy;

pub use allowance::{Dim, SplitParams};
pub use instance_book::{InstanceBook, InstanceView};
pub use policy::FleetPolicy;
