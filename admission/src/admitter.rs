//! One VM's admission: the limits in force, where a request belongs, the gate's decision,
//! the slot's release with its latency sample — and what each of these tells the host's
//! stats and log. The filter calls it with header bytes, statuses and the time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::adaptive::Outcome;
use crate::clock::JumpWatch;
use crate::gate::{Finish, Report, Spot, Withdrawal, DEFAULT_LEASE_MS};
use crate::host::{Event, Host, WaitEnd};
use crate::labels::{InFlight, Labels};
use crate::ledger::{GaugeDeltas, Pressure};
use crate::limits::Limits;
use crate::log_limit::LogLimit;
use crate::partitions::{Placement, Rule};
use crate::queue::{WaitRoom, Waiting};
use crate::retry_after::{retry_after_s, Jitter};
use crate::sync::load_allowance;
use crate::{
    Admission, Gate, GateConfig, GateError, Permit, RejectReason, Rejection, TenantName,
    WorkerHandle,
};

/// An admitted request's slot and where it is counted. Not `Clone`: [`Admitter::release`]
/// consumes it, so a slot is given back at most once.
#[derive(Debug)]
#[must_use = "an admitted request must be released"]
pub struct Ticket {
    permit: Permit,
    labels: Labels,
    admitted_us: u64,
    /// The VM's clock epoch at admission: a jump since leaves no latency to tell.
    epoch: u32,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Decision {
    /// Let it through; release the ticket exactly once when the stream ends.
    Admitted(Ticket),
    /// Answer it with this rejection; nothing to release.
    Rejected(Rejection),
    /// Pause it: it waits for a slot. [`Admitter::on_wake`] or [`Admitter::on_deadlines`]
    /// says later how its wait ended; if its client goes first, call [`Admitter::leave`].
    Waiting,
}

/// How a paused stream's wait ended, by its token.
#[derive(Debug)]
pub enum Resolved {
    /// A slot was handed to it: resume it; release the ticket when it ends.
    Resume(u32, Ticket),
    /// No slot came in time: answer it with the rejection.
    Reject(u32, Rejection),
}

/// One configured plugin in one VM.
#[derive(Debug)]
pub struct Admitter {
    config: GateConfig,
    limits: RefCell<Rc<Limits>>,
    /// The allowance `seq` the cached limits were built for.
    loaded_seq: Cell<u64>,
    /// The latest allowance `seq` seen in the ledger.
    seen_seq: Cell<u64>,
    gate: Gate,
    worker: WorkerHandle,
    error_log: LogLimit,
    /// This VM's paused streams.
    room: RefCell<WaitRoom>,
    /// The host queue that wakes this VM; without one its requests never wait.
    wake_queue: Cell<Option<u32>>,
    /// The pressure the last ledger write saw, for `retry-after`.
    pressure: Cell<Pressure>,
    jitter: Jitter,
    /// Jumps of the host's clock, as this VM's readings show them.
    clock: JumpWatch,
    /// Rebuild the limits at the next look (the clock jumped).
    reload_limits: Cell<bool>,
}

impl Admitter {
    /// Sets up the gate for a validated configuration and writes the ledger if it is absent.
    pub fn new(config: GateConfig, host: &impl Host) -> Self {
        let gate = Gate::default()
            .with_adaptive(
                config.adaptive.clone(),
                config.min_inflight.unwrap_or(1),
                config.max_inflight,
            )
            .with_queue(config.queue);
        if let Err(e) = gate.initialize(host) {
            log::error!("cannot initialise the shared in-flight ledger: {e}");
        }
        let limits = Limits::build(&config, None, 0);
        host.record(Event::LimitsInForce(&limits));
        Self {
            config,
            limits: RefCell::new(Rc::new(limits)),
            loaded_seq: Cell::new(0),
            seen_seq: Cell::new(0),
            gate,
            worker: WorkerHandle::default(),
            error_log: LogLimit::default(),
            room: RefCell::default(),
            wake_queue: Cell::new(None),
            pressure: Cell::new(Pressure::default()),
            jitter: Jitter::new(0),
            clock: JumpWatch::default(),
            reload_limits: Cell::new(false),
        }
    }

    /// Lets this VM's requests wait (with `queue` configured): `queue` is the host queue
    /// whose messages reach this VM's [`Admitter::on_wake`].
    pub fn set_wake_queue(&self, queue: u32) {
        self.wake_queue.set(Some(queue));
    }

    /// The validated plugin configuration.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Whether [`Admitter::release`] uses the response status (adaptive limits): the filter
    /// spares the host call otherwise.
    pub fn wants_status(&self) -> bool {
        self.config.adaptive.is_some()
    }

    /// Admits or rejects a request by its tenant and priority header values. A gate that
    /// cannot be read or written fails closed: the request is rejected as over the limit
    /// rather than admitted unaccounted (and counted as a gate error); so is one whose limits
    /// were replaced by another worker three times while it was being decided.
    pub fn admit(
        &self,
        host: &impl Host,
        tenant: Option<&[u8]>,
        priority: Option<&[u8]>,
        now_us: u64,
    ) -> Decision {
        self.decide(host, tenant, priority, None, now_us)
    }

    /// [`Admitter::admit`], except that with the queue on, a request the limit turns away
    /// waits (as `token`, unique among this VM's streams) while fewer than `max_waiting` do.
    pub fn admit_or_wait(
        &self,
        host: &impl Host,
        tenant: Option<&[u8]>,
        priority: Option<&[u8]>,
        token: u32,
        now_us: u64,
    ) -> Decision {
        let spot = self
            .wake_queue
            .get()
            .filter(|_| self.config.queue.is_some())
            .map(|queue| Spot { token, queue });
        self.decide(host, tenant, priority, spot, now_us)
    }

    fn decide(
        &self,
        host: &impl Host,
        tenant: Option<&[u8]>,
        priority: Option<&[u8]>,
        spot: Option<Spot>,
        now_us: u64,
    ) -> Decision {
        let now_ms = self.observe(now_us);
        let tenant = TenantName::from_header(tenant, &self.config.default_tenant);
        // Limits another worker replaced since this one loaded them are reloaded, and the
        // request decided again (bounded: a new allowance comes once per sync interval).
        let mut attempts = 0;
        let (limits, placement, result) = loop {
            let limits = self.limits(host, now_ms);
            let placement = limits.partitions.place(tenant.clone(), priority);
            let max = limits.config.max_inflight;
            let rule = Rule {
                partitions: &limits.partitions,
                ceiling: max,
                adaptive: self.config.adaptive.is_some(),
            };
            let result = self.gate.admit(
                host,
                &self.worker,
                now_ms,
                Some(self.loaded_seq.get()),
                max,
                &placement.seat,
                &rule,
                spot,
            );
            match result {
                Err(GateError::LimitsChanged(seq)) if attempts < 3 => {
                    self.seen_seq.set(seq);
                    attempts += 1;
                }
                result => break (limits, placement, result),
            }
        };
        let labels = limits.partitions.labels(&placement);
        match self
            .account(host, result, now_ms)
            .unwrap_or(Admission::Rejected(RejectReason::WipLimit))
        {
            Admission::Admitted(permit) => {
                host.record(Event::Admitted(&labels));
                Decision::Admitted(Ticket {
                    permit,
                    labels,
                    admitted_us: now_us,
                    epoch: self.clock.epoch(),
                })
            }
            Admission::Rejected(reason) => self.reject(host, &labels, placement, reason, now_us),
            Admission::Waiting => {
                let (Some(spot), Some(queue)) = (spot, self.config.queue) else {
                    return self.reject(host, &labels, placement, RejectReason::WipLimit, now_us);
                };
                host.record(Event::Queued(&labels));
                self.room.borrow_mut().enter(
                    spot.token,
                    Waiting {
                        labels,
                        placement,
                        since_us: now_us,
                        deadline_ms: now_ms.saturating_add(queue.timeout_ms),
                    },
                );
                Decision::Waiting
            }
        }
    }

    fn reject(
        &self,
        host: &impl Host,
        labels: &Labels,
        placement: Placement,
        reason: RejectReason,
        now_us: u64,
    ) -> Decision {
        Decision::Rejected(self.rejection(host, labels, placement, reason, now_us))
    }

    /// The rejection of a request, counted; its `retry-after` from the last pressure seen.
    fn rejection(
        &self,
        host: &impl Host,
        labels: &Labels,
        placement: Placement,
        reason: RejectReason,
        now_us: u64,
    ) -> Rejection {
        host.record(Event::Rejected(labels, reason));
        Rejection {
            reason,
            tenant: placement.tenant,
            retry_after_s: retry_after_s(
                &self.pressure.get(),
                self.config.retry_after_s,
                self.jitter.next(now_us),
            ),
        }
    }

    /// This VM was woken (its host queue had a message): picks up the slots handed to its
    /// waiters. A slot whose waiter left meanwhile goes back in the same write.
    pub fn on_wake(&self, host: &impl Host, now_us: u64) -> Vec<Resolved> {
        let now_ms = self.observe(now_us);
        if self.worker.current_id().is_none() {
            return Vec::new();
        }
        let limits = self.limits(host, now_ms);
        let rule = self.rule(&limits);
        let result = self
            .gate
            .claim(host, &self.worker, now_ms, Some(&rule), |token| {
                self.room.borrow().contains(token)
            });
        let permits = self.account(host, result, now_ms).unwrap_or_default();
        permits
            .into_iter()
            .filter_map(|(token, permit)| {
                let waiting = self.room.borrow_mut().leave(token)?;
                Some(self.resume(host, token, waiting, permit, now_us))
            })
            .collect()
    }

    /// Answers the waiters whose deadline came with `503 queue_timeout`, and picks up any
    /// slots handed over whose wake-up was lost. Call it on the host's timer, at
    /// [`Admitter::next_deadline_ms`] at the latest.
    pub fn on_deadlines(&self, host: &impl Host, now_us: u64) -> Vec<Resolved> {
        let mut resolved = self.on_wake(host, now_us);
        let now_ms = now_us / 1_000;
        let due = self.room.borrow().due(now_ms);
        if due.is_empty() {
            return resolved;
        }
        let limits = self.limits(host, now_ms);
        let rule = self.rule(&limits);
        for token in due {
            let result = self
                .gate
                .withdraw(host, &self.worker, token, true, now_ms, Some(&rule));
            let outcome = self.account(host, result, now_ms);
            let Some(waiting) = self.room.borrow_mut().leave(token) else {
                continue;
            };
            resolved.push(match outcome {
                Some(Withdrawal::Granted(permit)) => {
                    self.resume(host, token, waiting, permit, now_us)
                }
                // Withdrawn, gone with a reclaimed entry, or the ledger failed: the wait is
                // over either way and nothing is held.
                _ => {
                    let waited_us = now_us.saturating_sub(waiting.since_us);
                    host.record(Event::WaitEnded(
                        &waiting.labels,
                        waited_us,
                        WaitEnd::TimedOut,
                    ));
                    let rejection = self.rejection(
                        host,
                        &waiting.labels,
                        waiting.placement,
                        RejectReason::QueueTimeout,
                        now_us,
                    );
                    Resolved::Reject(token, rejection)
                }
            });
        }
        resolved
    }

    /// A waiting stream's client went away: its wait is withdrawn, and a slot already handed
    /// to it goes back at once. Does nothing for a token that does not wait here.
    pub fn leave(&self, host: &impl Host, token: u32, now_us: u64) {
        let now_ms = self.observe(now_us);
        let Some(waiting) = self.room.borrow_mut().leave(token) else {
            return;
        };
        let limits = self.limits(host, now_ms);
        let rule = self.rule(&limits);
        let result = self
            .gate
            .withdraw(host, &self.worker, token, false, now_ms, Some(&rule));
        self.account(host, result, now_ms);
        let waited_us = now_us.saturating_sub(waiting.since_us);
        host.record(Event::WaitEnded(&waiting.labels, waited_us, WaitEnd::Left));
    }

    /// When the earliest waiter of this VM must be answered (ms since the epoch).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.room.borrow().next_deadline_ms()
    }

    /// Streams of this VM waiting now.
    pub fn waiting(&self) -> usize {
        self.room.borrow().len()
    }

    fn resume(
        &self,
        host: &impl Host,
        token: u32,
        waiting: Waiting,
        permit: Permit,
        now_us: u64,
    ) -> Resolved {
        let waited_us = now_us.saturating_sub(waiting.since_us);
        host.record(Event::WaitEnded(
            &waiting.labels,
            waited_us,
            WaitEnd::Admitted,
        ));
        host.record(Event::Admitted(&waiting.labels));
        // Its latency, for the adaptive limit, starts now: waiting is not the bottleneck's.
        Resolved::Resume(
            token,
            Ticket {
                permit,
                labels: waiting.labels,
                admitted_us: now_us,
                epoch: self.clock.epoch(),
            },
        )
    }

    /// The admission rule of `limits`, for hand-offs.
    fn rule<'a>(&self, limits: &'a Limits) -> Rule<'a> {
        Rule {
            partitions: &limits.partitions,
            ceiling: limits.config.max_inflight,
            adaptive: self.config.adaptive.is_some(),
        }
    }

    /// Gives a slot back. `status` is the response status, `None` when no response came
    /// (the client left): a 5xx (Envoy's own for upstream resets and timeouts included)
    /// counts against the resource, no response says nothing. If the ledger cannot be
    /// written now, the release is owed and paid by this VM's next write.
    pub fn release(&self, host: &impl Host, ticket: Ticket, status: Option<u16>, now_us: u64) {
        let now_ms = self.observe(now_us);
        // Across a jump of the clock the request's latency is unknown: no sample.
        let measured = self.wants_status() && ticket.epoch == self.clock.epoch();
        let finish = status.filter(|_| measured).map(|status| Finish {
            latency_us: now_us.saturating_sub(ticket.admitted_us),
            outcome: if status >= 500 {
                Outcome::Error
            } else {
                Outcome::Success
            },
        });
        let limits = self.limits(host, now_ms);
        let rule = self.rule(&limits);
        let result = self.gate.release(
            host,
            &self.worker,
            ticket.permit,
            finish,
            now_ms,
            Some(&rule),
        );
        self.account(host, result, now_ms);
        host.record(Event::Released(&ticket.labels));
    }

    /// Periodic sign of life: reclaims the slots of dead VMs, pays owed releases, and
    /// notices new or stale limits while no request comes.
    pub fn heartbeat(&self, host: &impl Host, now_ms: u64) {
        self.observe(now_ms.saturating_mul(1_000));
        let limits = self.limits(host, now_ms);
        let result = self
            .gate
            .heartbeat(host, &self.worker, now_ms, Some(&self.rule(&limits)));
        self.account(host, result, now_ms);
        self.limits(host, now_ms);
    }

    /// Takes a reading of the host's clock (µs), in ms. After a jump back, this VM's waits
    /// keep their time left (else they would wait for the clock to come back) and its limits
    /// are rebuilt (an allowance's validity was measured on the old time); after a jump
    /// forward a wait may end early, by at most its `timeout_ms`.
    fn observe(&self, now_us: u64) -> u64 {
        let now_ms = now_us / 1_000;
        if let Some(by) = self.clock.observe(now_ms) {
            if by < 0 {
                self.room.borrow_mut().shift(by);
            }
            self.reload_limits.set(true);
            log::warn!("the host clock jumped by {by} ms: times kept by wipgate moved with it");
        }
        now_ms
    }

    /// Requests in flight through this Envoy now.
    pub fn inflight(&self, host: &impl Host) -> u64 {
        self.gate.inflight(host, &self.worker).unwrap_or(0)
    }

    /// Tells every worker that allowance `seq` is in shared data.
    pub fn publish_limits(&self, host: &impl Host, seq: u64, now_ms: u64) {
        let limits = self.limits(host, now_ms);
        let result =
            self.gate
                .publish_limits(host, &self.worker, seq, now_ms, Some(&self.rule(&limits)));
        self.account(host, result, now_ms);
    }

    /// The limits in force: rebuilt only when a new allowance was announced in the ledger
    /// or the current one went stale.
    pub fn limits(&self, host: &impl Host, now_ms: u64) -> Rc<Limits> {
        self.observe(now_ms.saturating_mul(1_000));
        let current = Rc::clone(&self.limits.borrow());
        let seq = self.seen_seq.get();
        let reload = self.reload_limits.replace(false);
        if !reload && now_ms < current.valid_until_ms && seq == self.loaded_seq.get() {
            return current;
        }
        let next = Rc::new(Limits::build(
            &self.config,
            load_allowance(host).as_ref(),
            now_ms,
        ));
        if next.on_static() && !current.on_static() {
            log::warn!(
                "the control service's allowance is stale: back on the static configuration"
            );
        }
        self.loaded_seq.set(seq);
        host.record(Event::LimitsInForce(&next));
        *self.limits.borrow_mut() = Rc::clone(&next);
        next
    }

    /// Turns a gate report into stats and logs; `None` when the gate failed.
    fn account<T>(
        &self,
        host: &impl Host,
        result: Result<Report<T>, GateError>,
        now_ms: u64,
    ) -> Option<T> {
        match result {
            Ok(report) => {
                self.seen_seq
                    .set(self.seen_seq.get().max(report.limits_seq));
                self.pressure.set(report.pressure);
                for queue in &report.wake {
                    host.wake(*queue);
                }
                if let Some(window) = &report.window {
                    host.record(Event::WindowClosed(window));
                    if let Some(reason) = window.change {
                        let s = &window.sample;
                        log::info!(
                            "adaptive limit now {} ({}): {} finished in {} ms, {:.0}/s at {:.1} ms mean, peak {} in flight{}",
                            window.limit,
                            reason.as_str(),
                            s.count,
                            s.duration_ms,
                            s.delivery_rate(),
                            s.mean_us as f64 / 1e3,
                            s.peak_inflight,
                            window.estimates.map_or_else(String::new, |e| format!(
                                "; knee {:.1} = {:.0}/s x {:.1} ms",
                                e.knee,
                                e.delivered_per_s,
                                f64::from(e.no_load_us) / 1e3
                            ))
                        );
                    }
                }
                if let Some(deltas) = report
                    .gauges
                    .as_ref()
                    .filter(|d| **d != GaugeDeltas::default())
                {
                    let limits = Rc::clone(&self.limits.borrow());
                    host.record(Event::InFlight(&InFlight {
                        total: deltas.total,
                        by_label: limits.partitions.gauge_deltas(deltas),
                    }));
                }
                if report.cas_retries > 0 {
                    host.record(Event::CasRetries(report.cas_retries));
                }
                if report.reclaimed > 0 {
                    host.record(Event::Reclaimed(report.reclaimed));
                    log::warn!(
                        "reclaimed {} in-flight slots of a worker VM silent for {DEFAULT_LEASE_MS} ms",
                        report.reclaimed
                    );
                }
                if report.reset_corrupt {
                    log::error!("the shared in-flight ledger was unreadable and was reset");
                }
                if report.diverted {
                    log::error!(
                        "the shared in-flight ledger was written by a build with another format: \
                         left as it is, this VM uses its own key"
                    );
                }
                Some(report.value)
            }
            Err(e) => {
                host.record(Event::GateError);
                if self.error_log.allow(now_ms) {
                    log::error!("shared in-flight ledger error: {e}");
                }
                None
            }
        }
    }
}
