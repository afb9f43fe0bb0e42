//! The control service (built by the control-service issue).
fn main() {}
