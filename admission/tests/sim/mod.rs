//! A discrete-event simulation of a bottleneck behind the real admitter (on the in-memory
//! host): open-loop arrivals, a bottleneck model, every admitted request released when the
//! model says it is done. Time is simulated, so a minute of traffic runs in milliseconds.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::{Admitter, Decision, GateConfig, Ticket};

/// A small deterministic generator (xorshift64*), so runs are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform().ln()
    }

    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// How the bottleneck serves.
#[derive(Debug, Clone, Copy)]
pub enum Model {
    /// Up to `c` at once in `service_us` each; a request finding `n > c` in flight takes
    /// `service_us * (1 + slope * (n - c) / c)`: contention, it serves less when pushed.
    Collapse {
        c: usize,
        service_us: f64,
        slope: f64,
    },
    /// `c` servers, FIFO queue: throughput flat past `c`, latency grows.
    Queue { c: usize, service_us: f64 },
    /// `c` servers, lognormal service times with median `service_us` (sigma 1: p99/p50 ~ 10).
    HeavyTail { c: usize, service_us: f64 },
}

impl Model {
    pub fn capacity_per_s(&self) -> f64 {
        match *self {
            Model::Collapse { c, service_us, .. } | Model::Queue { c, service_us } => {
                c as f64 * 1e6 / service_us
            }
            // Mean of a lognormal with sigma 1 is median * e^(1/2).
            Model::HeavyTail { c, service_us } => c as f64 * 1e6 / (service_us * 1.6487),
        }
    }

    pub fn knee(&self) -> usize {
        match *self {
            Model::Collapse { c, .. } | Model::Queue { c, .. } | Model::HeavyTail { c, .. } => c,
        }
    }
}

/// One run's figures.
#[derive(Debug, Default)]
pub struct Run {
    pub sent: u64,
    pub admitted: u64,
    pub rejected: u64,
    /// Completions per second of simulated time, after the warm-up.
    pub goodput_per_s: f64,
    /// Latencies of the completed requests after the warm-up, µs, sorted.
    pub latencies_us: Vec<f64>,
    /// (time s, adaptive limit) at every change.
    pub limits: Vec<(f64, u32)>,
    /// (time s, in flight) sampled every 10 ms.
    pub inflight: Vec<(f64, usize)>,
    /// Rejections in the first `warmup_s`.
    pub rejected_in_warmup: u64,
    pub sent_in_warmup: u64,
}

impl Run {
    pub fn p(&self, q: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 * q).ceil() as usize)
            .clamp(1, self.latencies_us.len().max(1));
        self.latencies_us.get(i - 1).copied().unwrap_or(0.0)
    }

    /// Direction reversals of the limit between `from_s` and `to_s`.
    pub fn reversals(&self, from_s: f64, to_s: f64) -> usize {
        let mut last_dir = 0i8;
        let mut n = 0;
        let mut prev: Option<u32> = None;
        for (_, l) in self
            .limits
            .iter()
            .filter(|(t, _)| *t >= from_s && *t < to_s)
        {
            if let Some(p) = prev {
                let dir = (*l > p) as i8 - (*l < p) as i8;
                if dir != 0 && last_dir != 0 && dir != last_dir {
                    n += 1;
                }
                if dir != 0 {
                    last_dir = dir;
                }
            }
            prev = Some(*l);
        }
        n
    }

    /// The limit in force at `t`.
    pub fn limit_at(&self, t: f64) -> Option<u32> {
        self.limits
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, l)| *l)
    }
}

/// The traffic and the bottleneck of one run.
pub struct Scenario {
    pub model: Model,
    /// Offered load as a multiple of capacity, as a function of time (s).
    pub load: Box<dyn Fn(f64) -> f64>,
    /// Service-time multiplier as a function of time (s): a slower resource.
    pub slowdown: Box<dyn Fn(f64) -> f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub config: String,
    pub seed: u64,
}

impl Scenario {
    pub fn new(model: Model, load: f64, config: &str) -> Self {
        Self {
            model,
            load: Box::new(move |_| load),
            slowdown: Box::new(|_| 1.0),
            duration_s: 40.0,
            warmup_s: 10.0,
            config: config.to_owned(),
            seed: 7,
        }
    }

    pub fn run(&self) -> Run {
        let host = FakeHost::default();
        let admitter = Admitter::new(
            GateConfig::parse(self.config.as_bytes()).expect("config"),
            &host,
        );
        let mut rng = Rng::new(self.seed);
        let capacity = self.model.capacity_per_s();
        let end_us = self.duration_s * 1e6;
        let warmup_us = self.warmup_s * 1e6;
        // Completions: (time, id) -> ticket.
        let mut done: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
        let mut tickets: Vec<Option<(Ticket, f64)>> = Vec::new();
        let mut servers_free_at: Vec<f64> = Vec::new();
        let mut inflight = 0usize;
        let mut run = Run::default();
        let mut next_arrival = 0.0f64;
        let mut next_sample = 0.0f64;
        let mut last_limit = 0;
        let mut completed_after_warmup = 0u64;
        loop {
            let next_done = done.peek().map(|Reverse((t, _))| *t as f64);
            let t = match next_done {
                Some(d) if d <= next_arrival => d,
                _ => next_arrival,
            };
            if t >= end_us {
                break;
            }
            while next_sample <= t {
                run.inflight.push((next_sample / 1e6, inflight));
                next_sample += 10_000.0;
            }
            if next_done.is_some_and(|d| d <= next_arrival) {
                let Reverse((_, id)) = done.pop().expect("peeked");
                if let Some((ticket, started)) = tickets[id as usize].take() {
                    admitter.release(&host, ticket, Some(200), t as u64);
                    inflight -= 1;
                    if started >= warmup_us {
                        completed_after_warmup += 1;
                        run.latencies_us.push(t - started);
                    }
                }
            } else {
                let load = (self.load)(t / 1e6);
                next_arrival = t + rng.exponential(1e6 / (capacity * load));
                run.sent += 1;
                if t < warmup_us {
                    run.sent_in_warmup += 1;
                }
                match admitter.admit(&host, Some(b"t"), None, t as u64) {
                    Decision::Admitted(ticket) => {
                        run.admitted += 1;
                        inflight += 1;
                        let slow = (self.slowdown)(t / 1e6);
                        let finish = match self.model {
                            Model::Collapse {
                                c,
                                service_us,
                                slope,
                            } => {
                                let over = inflight.saturating_sub(c) as f64 / c as f64;
                                t + (service_us * slow * (1.0 + slope * over)).min(5e6)
                            }
                            Model::Queue { c, service_us } | Model::HeavyTail { c, service_us } => {
                                if servers_free_at.len() < c {
                                    servers_free_at.resize(c, 0.0);
                                }
                                let s = match self.model {
                                    Model::HeavyTail { .. } => service_us * rng.normal().exp(),
                                    _ => service_us,
                                } * slow;
                                let (i, free) = servers_free_at
                                    .iter()
                                    .copied()
                                    .enumerate()
                                    .min_by(|a, b| a.1.total_cmp(&b.1))
                                    .expect("c >= 1");
                                let finish = free.max(t) + s;
                                servers_free_at[i] = finish;
                                finish
                            }
                        };
                        let id = tickets.len() as u64;
                        tickets.push(Some((ticket, t)));
                        done.push(Reverse((finish as u64, id)));
                    }
                    Decision::Rejected(_) | Decision::Waiting => {
                        run.rejected += 1;
                        if t < warmup_us {
                            run.rejected_in_warmup += 1;
                        }
                    }
                }
            }
            let windows = host.windows().len();
            if windows != last_limit {
                let w = host.windows()[windows - 1];
                run.limits.push((t / 1e6, w.limit));
                if std::env::var_os("WIPGATE_SIM_TRACE").is_some() {
                    eprintln!(
                        "{:7.3}s n={:4} rate={:6.0}/s mean={:7.1}ms peak={:4} limited={} -> {:4} {:?}",
                        t / 1e6,
                        w.sample.count,
                        w.sample.delivery_rate(),
                        w.sample.mean_us as f64 / 1e3,
                        w.sample.peak_inflight,
                        w.sample.limited,
                        w.limit,
                        w.change
                    );
                }
                last_limit = windows;
            }
        }
        run.goodput_per_s = completed_after_warmup as f64 / (self.duration_s - self.warmup_s);
        run.latencies_us.sort_by(f64::total_cmp);
        run
    }
}
