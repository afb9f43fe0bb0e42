//! Every setup at multiples of a bottleneck's capacity, open loop, a fresh Envoy per point:
//! the in-process shapes (collapsing, pure queue, heavy-tailed; a fresh upstream per point
//! too) and a real PostgreSQL under hot-row lock contention (one database and upstream for
//! every point, drained in between), whose capacity pgbench measures first. The bounded
//! wait's sweep (`queue.rs`) runs its own setups through the same loop, with Poisson
//! arrivals.

use std::sync::Arc;

use anyhow::{Context, Result};
use wipgate_e2e::pg_upstream::{prepare_hot_rows, PgUpstream, PgWork};
use wipgate_e2e::postgres::Postgres;
use wipgate_e2e::{RequestSpec, Slowdown};

use crate::gen::{self, Arrivals, OpenLoop};
use crate::pgbench;
use crate::results::{Bottleneck, Point, Sweep, SweepSetup};
use crate::scenarios::{ms, point, start_envoy, warm_up, Timing, MAX_GEN_CONNS};
use crate::setup::{self, Backend, Setup, Shape, Wasm};

/// What a sweep needs to know of its bottleneck.
pub struct Spec {
    /// The sweep's key.
    pub key: &'static str,
    /// Its heading.
    pub title: &'static str,
    /// The bottleneck.
    pub bottleneck: Bottleneck,
    /// Its capacity, requests per second.
    pub capacity: f64,
    /// The in-flight count told to the setups that are told C.
    pub c: usize,
}

/// What runs at which load.
pub struct Plan {
    /// The setups, in the report's order.
    pub setups: Vec<(&'static str, Setup)>,
    /// wipgate static's configuration, as the results record it.
    pub wipgate_static: String,
    /// The offered loads, as multiples of capacity.
    pub multipliers: &'static [f64],
    /// Whether a setup runs at a load (a baseline may run at one load only).
    pub runs: fn(&str, f64) -> bool,
    /// Evenly spaced or Poisson.
    pub arrivals: Arrivals,
}

impl Plan {
    /// The five setups of `setup::setups` at every load of `timing`, evenly spaced arrivals.
    fn standard(c: usize, adaptive: &str, timing: Timing) -> Self {
        let wipgate_static = setup::wipgate_static(c);
        Self {
            setups: setup::setups(c, &wipgate_static, adaptive),
            wipgate_static,
            multipliers: timing.multipliers,
            runs: |_, _| true,
            arrivals: Arrivals::Even,
        }
    }
}

/// A fresh (or drained) upstream for the next point.
pub type Fresh<'a> = dyn FnMut() -> Result<Box<dyn Backend>> + 'a;

/// Every setup of `plan` at its loads, a fresh Envoy (and a backend from `fresh`) per point.
pub async fn sweep(
    wasm: &Wasm,
    timing: Timing,
    spec: Spec,
    plan: Plan,
    fresh: &mut Fresh<'_>,
) -> Result<Sweep> {
    let setups = &plan.setups;
    let mut points: Vec<Vec<Point>> = vec![Vec::new(); setups.len()];
    // Load outermost: the setups compared at one load run minutes apart at most, so the
    // machine's other tenants disturb them alike.
    for &mult in plan.multipliers {
        for (i, (name, setup)) in setups.iter().enumerate() {
            if !(plan.runs)(name, mult) {
                continue;
            }
            eprintln!("{}: {name} at {mult}x capacity", spec.key);
            let backend = fresh()?;
            let stats = backend.stats();
            let envoy = start_envoy(setup, backend.addr(), wasm, name)?;
            warm_up(&envoy, &stats, spec.capacity).await;
            let run = gen::open_loop_with(
                envoy.listener_addr(),
                OpenLoop {
                    rate: spec.capacity * mult,
                    duration: timing.point,
                    timeout: timing.client_timeout,
                    max_conns: MAX_GEN_CONNS,
                    arrivals: plan.arrivals,
                    retry: None,
                },
                |_| (RequestSpec::get("/"), 0),
            )
            .await;
            drop(envoy);
            points[i].push(point(
                &run,
                spec.capacity,
                timing.point,
                mult,
                stats.max_inflight(),
            ));
        }
    }
    Ok(Sweep {
        key: spec.key.to_owned(),
        title: spec.title.to_owned(),
        bottleneck: spec.bottleneck,
        capacity_rps: spec.capacity,
        c: spec.c,
        wipgate_static: plan.wipgate_static,
        point_s: timing.point.as_secs_f64(),
        client_timeout_s: timing.client_timeout.as_secs_f64(),
        multipliers: plan.multipliers.to_vec(),
        setups: setups
            .iter()
            .zip(points)
            .map(|((name, _), points)| SweepSetup {
                name: (*name).to_owned(),
                points,
            })
            .collect(),
    })
}

/// A fresh upstream of `shape` for every point.
pub fn fresh_upstream(shape: Shape) -> impl FnMut() -> Result<Box<dyn Backend>> {
    move || {
        let upstream = shape.start(&Slowdown::default())?;
        Ok(Box::new(upstream) as Box<dyn Backend>)
    }
}

/// One of the in-process shapes, C = `setup::KNEE`.
pub async fn shape(wasm: &Wasm, timing: Timing, shape: Shape, adaptive: &str) -> Result<Sweep> {
    let spec = Spec {
        key: shape.key(),
        title: shape.title(),
        bottleneck: shape.bottleneck(),
        capacity: shape.capacity_rps(),
        c: setup::KNEE,
    };
    let plan = Plan::standard(setup::KNEE, adaptive, timing);
    sweep(wasm, timing, spec, plan, &mut fresh_upstream(shape)).await
}

/// The PostgreSQL shape: a throwaway cluster, the hot rows, pgbench's capacity at each
/// client count, then every setup in front of the hot-rows upstream.
pub async fn postgres(wasm: &Wasm, timing: Timing, adaptive: &str) -> Result<Sweep> {
    let most_clients = timing.pgbench_clients.iter().copied().max().unwrap_or(1);
    let max_connections = u32::try_from(setup::PG_POOL + most_clients + 10)?;
    let pg = Postgres::start(max_connections).context("starting PostgreSQL")?;
    let dsn = pg.dsn();
    prepare_hot_rows(&dsn, setup::PG_ROWS).await?;
    let script = wipgate_e2e::pg_upstream::hot_rows_pgbench_script(setup::PG_ROWS, setup::PG_WORK);
    let measured = {
        let (dsn, script) = (dsn.clone(), script.clone());
        tokio::task::spawn_blocking(move || pgbench::measure(&dsn, &script, timing)).await??
    };
    eprintln!(
        "postgres: pgbench's best {:.0} tps at {} clients",
        measured.best_tps, measured.best_clients
    );
    let upstream = Arc::new(
        PgUpstream::start_with(
            &dsn,
            setup::PG_POOL,
            setup::PG_WORK,
            PgWork::HotRows {
                rows: setup::PG_ROWS,
            },
        )
        .await?,
    );
    let spec = Spec {
        key: "postgres",
        title: "e. PostgreSQL, hot-row lock contention",
        capacity: measured.best_tps,
        c: measured.best_clients,
        bottleneck: Bottleneck::Postgres {
            pool: setup::PG_POOL,
            rows: setup::PG_ROWS,
            work_ms: ms(setup::PG_WORK),
            pgbench: measured,
        },
    };
    let plan = Plan::standard(spec.c, adaptive, timing);
    let result = sweep(wasm, timing, spec, plan, &mut || {
        Ok(Box::new(Arc::clone(&upstream)) as Box<dyn Backend>)
    })
    .await;
    drop(upstream);
    drop(pg);
    result
}
