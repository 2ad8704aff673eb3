//! The fleet simulation: thousands of tenants created and deleted through the real lifecycle
//! code, on the in-memory platform (`tenantry::fake`), with faults injected into the Cloudflare
//! API, in virtual time. It prints what a capacity plan needs: API calls per create and per
//! delete, the busiest 5 minutes against the API's limit, how many reconciler passes the fleet
//! takes to converge, and whether every invariant holds at the end.
//!
//! ```text
//! cargo run --release --example simulate -- --tenants 50000 --faults 0.02
//! ```
//!
//! Options: `--tenants N` (1000), `--faults RATE` (0: the chance that any one API call fails:
//! 429, 5xx, a timeout, or a lost answer), `--delete FRACTION` (0.2: deleted after all are
//! created), `--concurrency C` (200: requests in flight), `--polls P` (3: `GET`s a client makes,
//! 2 s apart, after a 202), `--max-bindings M` (5000: a script's binding limit), `--host-capacity H`
//! (4000: tenant bindings per binding host; 0: the single-script layout, every binding on the main
//! Worker), `--seed S`.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tenantry::control::lifecycle::Progress;
use tenantry::core::lifecycle::TenantStatus;
use tenantry::fake::World;

/// Cloudflare's API limit: 1,200 requests per 5 minutes per user.
const API_LIMIT_PER_5_MIN: u64 = 1_200;

struct Options {
    tenants: usize,
    faults: f64,
    delete: f64,
    concurrency: usize,
    polls: u32,
    max_bindings: usize,
    seed: u64,
    max_passes: u32,
    host_capacity: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        tenants: 1000,
        faults: 0.0,
        delete: 0.2,
        concurrency: 200,
        polls: 3,
        max_bindings: 5000,
        seed: 1,
        max_passes: 2000,
        host_capacity: tenantry::core::config::DEFAULT_HOST_CAPACITY,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--tenants" => o.tenants = value.parse().map_err(|e| bad(&e))?,
            "--faults" => o.faults = value.parse().map_err(|e| bad(&e))?,
            "--delete" => o.delete = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => o.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--polls" => o.polls = value.parse().map_err(|e| bad(&e))?,
            "--max-bindings" => o.max_bindings = value.parse().map_err(|e| bad(&e))?,
            "--seed" => o.seed = value.parse().map_err(|e| bad(&e))?,
            "--max-passes" => o.max_passes = value.parse().map_err(|e| bad(&e))?,
            "--host-capacity" => o.host_capacity = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if !(0.0..1.0).contains(&o.faults) || !(0.0..=1.0).contains(&o.delete) || o.concurrency == 0 {
        return Err("--faults must be in [0, 1), --delete in [0, 1], --concurrency at least 1".into());
    }
    Ok(o)
}

/// What a client does: send the request (its invocation runs the saga as far as it can), then
/// `GET` the tenant a few times, 2 s apart, each in a new invocation, until it settles.
async fn request_and_poll(world: &World, op: tenantry::store::control::OperationRow, polls: u32) {
    let mut progress = world.invocation().run(&op).await;
    for _ in 0..polls {
        if matches!(progress, Ok(Progress::Finished | Progress::Failed(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        progress = world.invocation().run(&op).await;
    }
}

struct Phase {
    name: &'static str,
    count: usize,
    calls: u64,
    passes: u32,
    virtual_s: f64,
    wall_s: f64,
    by_kind: std::collections::BTreeMap<String, u64>,
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

async fn run(o: Options) -> bool {
    let world = World::new(o.seed).await;
    if o.host_capacity > 0 {
        world.use_hosts(o.host_capacity);
    }
    world.cloud.set_max_bindings(o.max_bindings);
    world.cloud.set_fault_rate(o.faults);
    let slugs: Vec<String> = (0..o.tenants).map(|i| format!("t{i:06}")).collect();
    let deleted: Vec<&String> =
        slugs.iter().step_by(if o.delete > 0.0 { (1.0 / o.delete).round() as usize } else { usize::MAX }).collect();
    let mut phases = Vec::new();

    for (name, targets) in [("create", slugs.iter().collect::<Vec<_>>()), ("delete", deleted.clone())] {
        if targets.is_empty() {
            continue;
        }
        world.cloud.reset_counters();
        let (wall, start) = (Instant::now(), world.clock.elapsed_ms());
        stream::iter(targets.iter().map(|slug| {
            let world = &world;
            async move {
                let op = if name == "create" {
                    Some(world.request_create(slug).await)
                } else {
                    world.request_delete(slug).await
                };
                if let Some(op) = op {
                    request_and_poll(world, op, o.polls).await;
                }
            }
        }))
        .buffer_unordered(o.concurrency)
        .collect::<Vec<()>>()
        .await;
        let passes = world.converge(o.max_passes).await;
        phases.push(Phase {
            name,
            count: targets.len(),
            calls: world.cloud.calls(),
            passes,
            virtual_s: (world.clock.elapsed_ms() - start) / 1000.0,
            wall_s: wall.elapsed().as_secs_f64(),
            by_kind: world.cloud.calls_by_kind(),
        });
        let peak = world.cloud.peak_in_window(300_000);
        let phase = phases.last().expect("just pushed");
        let sizes = world.cloud.patch_sizes();
        println!(
            "{:>6}: {:>6} tenants, {:>8} API calls ({:.1} per tenant), peak {} calls in 5 min (limit {}{}), \
             {} reconciler pass(es) to converge, {:.0} s virtual, {:.1} s wall",
            phase.name,
            phase.count,
            phase.calls,
            phase.calls as f64 / phase.count as f64,
            peak,
            API_LIMIT_PER_5_MIN,
            if peak > API_LIMIT_PER_5_MIN { ": OVER" } else { "" },
            phase.passes,
            phase.virtual_s,
            phase.wall_s
        );
        println!("        by call: {:?}", phase.by_kind);
        let at_limit_min = phase.calls as f64 / API_LIMIT_PER_5_MIN as f64 * 5.0;
        println!(
            "        at the API limit ({} calls / 5 min) these calls take at least {:.0} min ({:.1} h); \
             tenantry's own pace here was {:.0} min of virtual time",
            API_LIMIT_PER_5_MIN,
            at_limit_min,
            at_limit_min / 60.0,
            phase.virtual_s / 60.0
        );
        if !sizes.is_empty() {
            let mean = sizes.iter().sum::<usize>() / sizes.len();
            println!(
                "        settings changes: {} PATCHes ({:.3} per tenant), metadata per change: mean {} B, max {} B",
                sizes.len(),
                sizes.len() as f64 / phase.count as f64,
                mean,
                sizes.iter().max().copied().unwrap_or(0)
            );
        }
    }

    let store = world.store();
    let tenants = store.list_tenants(None, "", u32::MAX).await.expect("the control store answers");
    let count = |s: TenantStatus| tenants.iter().filter(|t| t.status == s).count();
    println!(
        "tenants: {} active, {} deleted, {} failed, {} still provisioning, {} still deleting",
        count(TenantStatus::Active),
        count(TenantStatus::Deleted),
        count(TenantStatus::Failed),
        count(TenantStatus::Provisioning),
        count(TenantStatus::Deleting)
    );
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for t in tenants.iter().filter(|t| t.status == TenantStatus::Failed) {
        let why = t.last_error.clone().unwrap_or_default();
        // One line per kind of failure: the text up to its first figure.
        let kind: String = why.chars().take_while(|c| !c.is_ascii_digit() || why.len() < 20).take(120).collect();
        *reasons.entry(kind).or_default() += 1;
    }
    for (why, n) in &reasons {
        println!("  failed x{n}: {why}");
    }
    let mut waiting = std::collections::BTreeMap::<String, usize>::new();
    for op in store.unfinished_operations(u32::MAX).await.expect("the control store answers") {
        let why = format!(
            "{} at {}: {}",
            op.kind.as_str(),
            op.next_step.map_or("-", |s| s.as_str()),
            op.last_error.unwrap_or_default()
        );
        *waiting.entry(why.chars().take(140).collect()).or_default() += 1;
    }
    for (why, n) in &waiting {
        println!("  open x{n}: {why}");
    }
    let hosts = store.hosts().await.expect("the control store answers");
    println!(
        "scripts: the main Worker (settings changed {} times by tenant churn) and {} binding host(s), \
         holding {} tenant bindings at most (cap {})",
        world.cloud.settings_version(),
        hosts.len(),
        hosts.iter().map(|h| h.used).max().unwrap_or(0),
        if o.host_capacity > 0 { o.host_capacity.to_string() } else { "-".into() }
    );
    let violations = world.violations().await;
    let checked = "every active tenant bound exactly once, where it is served from, to its own stamped, migrated \
                   database with its admin; every deleted tenant's database gone, unbound, its slot and backup \
                   kept right; no orphan database or script; every host under its cap and counting its tenants; \
                   every script's binding set exactly the wanted one; no operation left open";
    if violations.is_empty() {
        println!("invariants: all hold ({checked})");
    } else {
        println!("invariants: {} broken ({checked}); first ones:", violations.len());
        for v in violations.iter().take(10) {
            println!("  {v}");
        }
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak memory: {mib} MiB");
    }
    violations.is_empty()
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("simulate: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "simulating {} tenants, {:.0}% deleted, API fault rate {}, {} in flight, binding limit {}, {}, seed {}",
        o.tenants,
        o.delete * 100.0,
        o.faults,
        o.concurrency,
        o.max_bindings,
        if o.host_capacity > 0 {
            format!("binding hosts of {} tenants", o.host_capacity)
        } else {
            "single-script layout".to_owned()
        },
        o.seed
    );
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a runtime");
    let ok = runtime.block_on(run(o));
    std::process::exit(if ok { 0 } else { 1 });
}
