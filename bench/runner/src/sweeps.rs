//! Every setup at multiples of a bottleneck's capacity, open loop, a fresh Envoy per point:
//! the in-process shapes (collapsing, pure queue, heavy-tailed; a fresh upstream per point
//! too) and a real PostgreSQL under hot-row lock contention (one database and upstream for
//! every point, drained in between), whose capacity pgbench measures first.

use std::sync::Arc;

use anyhow::{Context, Result};
use wipgate_e2e::pg_upstream::{prepare_hot_rows, PgUpstream, PgWork};
use wipgate_e2e::postgres::Postgres;
use wipgate_e2e::{RequestSpec, Slowdown};

use crate::gen;
use crate::pgbench;
use crate::results::{Bottleneck, Point, Sweep, SweepSetup};
use crate::scenarios::{ms, point, start_envoy, warm_up, Timing, MAX_GEN_CONNS};
use crate::setup::{self, Backend, Shape, Wasm};

/// What a sweep needs to know of its bottleneck.
struct Spec {
    key: &'static str,
    title: &'static str,
    bottleneck: Bottleneck,
    capacity: f64,
    c: usize,
}

/// A fresh (or drained) upstream for the next point.
type Fresh<'a> = dyn FnMut() -> Result<Box<dyn Backend>> + 'a;

async fn sweep(
    wasm: &Wasm,
    timing: Timing,
    spec: Spec,
    adaptive: &str,
    fresh: &mut Fresh<'_>,
) -> Result<Sweep> {
    let wipgate_static = setup::wipgate_static(spec.c);
    let setups = setup::setups(spec.c, &wipgate_static, adaptive);
    let mut points: Vec<Vec<Point>> = vec![Vec::new(); setups.len()];
    // Load outermost: the setups compared at one load run minutes apart at most, so the
    // machine's other tenants disturb them alike.
    for &mult in timing.multipliers {
        for (i, (name, setup)) in setups.iter().enumerate() {
            eprintln!("{}: {name} at {mult}x capacity", spec.key);
            let backend = fresh()?;
            let stats = backend.stats();
            let envoy = start_envoy(setup, backend.addr(), wasm, name)?;
            warm_up(&envoy, &stats, spec.capacity).await;
            let run = gen::open_loop(
                envoy.listener_addr(),
                spec.capacity * mult,
                timing.point,
                timing.client_timeout,
                MAX_GEN_CONNS,
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
        wipgate_static,
        point_s: timing.point.as_secs_f64(),
        client_timeout_s: timing.client_timeout.as_secs_f64(),
        multipliers: timing.multipliers.to_vec(),
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

/// One of the in-process shapes, C = `setup::KNEE`.
pub async fn shape(wasm: &Wasm, timing: Timing, shape: Shape, adaptive: &str) -> Result<Sweep> {
    let spec = Spec {
        key: shape.key(),
        title: shape.title(),
        bottleneck: shape.bottleneck(),
        capacity: shape.capacity_rps(),
        c: setup::KNEE,
    };
    sweep(wasm, timing, spec, adaptive, &mut || {
        let upstream = shape.start(&Slowdown::default())?;
        Ok(Box::new(upstream) as Box<dyn Backend>)
    })
    .await
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
    let result = sweep(wasm, timing, spec, adaptive, &mut || {
        Ok(Box::new(Arc::clone(&upstream)) as Box<dyn Backend>)
    })
    .await;
    drop(upstream);
    drop(pg);
    result
}
