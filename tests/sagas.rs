//! The lifecycle's sagas, the leases and the bindings reconciler, run natively on the in-memory
//! platform (`tenantry::fake`): the same code the Worker runs, against the same SQL (on SQLite),
//! the real Cloudflare client over a stand-in of the API, and tokio's paused clock.
//!
//! Each test drives what a real deployment sees: requests that start a saga and run it as far as
//! one invocation can, later invocations (a re-send, a `GET`, the cron reconciler) that carry it
//! on, processes killed between any two writes, faults from the API, and many of all of these at
//! once. Every test ends by checking the fleet's invariants (`World::violations`).

use std::time::Duration;

use futures::future::{join_all, select, Either};
use tenantry::control::lifecycle::{Progress, Wait, LEASE_MS};
use tenantry::core::lifecycle::TenantStatus;
use tenantry::fake::World;

async fn status(world: &World, slug: &str) -> TenantStatus {
    world.store().tenant(slug).await.unwrap().unwrap().status
}

/// What a bare `wrangler deploy` does: it sends only wrangler.toml's bindings.
async fn bare_deploy(world: &World) {
    let own: Vec<_> =
        ["CONTROL_DB", "APEX", "BACKUPS"].iter().map(|n| serde_json::json!({ "type": "inherit", "name": n })).collect();
    world.invocation().api.patch_settings(tenantry::fake::SCRIPT, &own).await.unwrap();
    assert_eq!(world.cloud.tenant_bindings().len(), 0);
}

/// Waits past any lease a dead invocation held.
async fn after_leases_lapse() {
    tokio::time::sleep(Duration::from_millis(LEASE_MS as u64 + 1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_create_finishes_on_the_next_touch_and_a_delete_at_once() {
    let world = World::new(1).await;
    let op = world.request_create("acme").await;
    // The invocation that binds cannot see its own binding: the create waits for the next touch.
    assert_eq!(world.invocation().run(&op).await.unwrap(), Progress::Pending(Wait::BindingNotLive));
    assert_eq!(status(&world, "acme").await, TenantStatus::Provisioning);
    assert_eq!(world.invocation().run(&op).await.unwrap(), Progress::Finished);
    assert_eq!(status(&world, "acme").await, TenantStatus::Active);
    assert_eq!(world.violations().await, Vec::<String>::new());

    let delete = world.request_delete("acme").await.expect("a delete opens");
    assert_eq!(world.invocation().run(&delete).await.unwrap(), Progress::Finished);
    let tenant = world.store().tenant("acme").await.unwrap().unwrap();
    assert_eq!(tenant.status, TenantStatus::Deleted);
    let backup = tenant.backup_location.expect("a deleted tenant keeps its backup");
    assert!(backup.starts_with("r2://BACKUPS/acme/2026-11-23T"), "{backup}");
    assert_eq!(world.violations().await, Vec::<String>::new());
}

/// Runs `op` in a fresh invocation until the process dies (the crash switch is armed) or the run
/// ends; whether it died.
async fn run_until_crash(world: &World, op: &tenantry::store::control::OperationRow) -> bool {
    let lc = world.invocation();
    let run = std::pin::pin!(lc.run(op));
    let crashed = std::pin::pin!(world.crash.wait());
    matches!(select(run, crashed).await, Either::Right(_))
}

/// The effects (writes that land) of one whole clean run of `saga` on a new world.
async fn effects_of(saga: &str) -> u64 {
    let world = World::new(7).await;
    let create = world.request_create("acme").await;
    let before = world.crash.effects();
    world.invocation().run(&create).await.unwrap();
    world.invocation().run(&create).await.unwrap();
    let create_effects = world.crash.effects() - before;
    if saga == "create" {
        return create_effects;
    }
    let delete = world.request_delete("acme").await.unwrap();
    let before = world.crash.effects();
    world.invocation().run(&delete).await.unwrap();
    world.crash.effects() - before
}

#[tokio::test(start_paused = true)]
async fn a_create_killed_after_any_write_resumes_to_active_with_no_orphan() {
    let total = effects_of("create").await;
    assert!(total >= 10, "a create makes many writes ({total})");
    for at in 1..=total {
        let world = World::new(7).await;
        let op = world.request_create("acme").await;
        world.crash.arm(at);
        assert!(run_until_crash(&world, &op).await || at > world.crash.effects(), "crash point {at} was reached");
        world.crash.disarm();
        after_leases_lapse().await;
        let passes = world.converge(5).await;
        assert_eq!(status(&world, "acme").await, TenantStatus::Active, "killed after write {at} of {total}");
        assert_eq!(world.violations().await, Vec::<String>::new(), "killed after write {at} of {total}");
        assert!(passes <= 3, "killed after write {at}: converged in {passes} passes");
    }
}

#[tokio::test(start_paused = true)]
async fn a_delete_killed_after_any_write_resumes_to_deleted_with_its_backup() {
    let total = effects_of("delete").await;
    assert!(total >= 6, "a delete makes several writes ({total})");
    for at in 1..=total {
        let world = World::new(7).await;
        let create = world.request_create("acme").await;
        world.invocation().run(&create).await.unwrap();
        world.invocation().run(&create).await.unwrap();
        let delete = world.request_delete("acme").await.unwrap();
        world.crash.arm(at);
        run_until_crash(&world, &delete).await;
        world.crash.disarm();
        after_leases_lapse().await;
        world.converge(5).await;
        let tenant = world.store().tenant("acme").await.unwrap().unwrap();
        assert_eq!(tenant.status, TenantStatus::Deleted, "killed after write {at} of {total}");
        assert!(tenant.backup_location.is_some(), "killed after write {at}: the backup was recorded");
        assert_eq!(world.violations().await, Vec::<String>::new(), "killed after write {at} of {total}");
    }
}

#[tokio::test(start_paused = true)]
async fn two_runners_of_one_saga_never_both_run_it() {
    let world = World::new(3).await;
    let op = world.request_create("acme").await;
    let (a, b) = (world.invocation(), world.invocation());
    let (ra, rb) = tokio::join!(a.run(&op), b.run(&op));
    let outcomes = [ra.unwrap(), rb.unwrap()];
    assert!(outcomes.contains(&Progress::Busy), "one of them found the lease taken: {outcomes:?}");
    assert!(outcomes.contains(&Progress::Pending(Wait::BindingNotLive)), "{outcomes:?}");
    world.converge(3).await;
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_lost_its_lease_cannot_write() {
    use tenantry::store::control::Fence;
    let world = World::new(3).await;
    let op = world.request_create("acme").await;
    let store = world.store();
    let lease = "tenant:acme";
    let now = 1_000.0;
    assert!(store.acquire_lease(lease, "old", now, LEASE_MS).await.unwrap());
    assert!(!store.acquire_lease(lease, "new", now + 1.0, LEASE_MS).await.unwrap(), "held and fresh");
    // The old holder stalls past its lease; the new one takes over.
    assert!(store.acquire_lease(lease, "new", now + LEASE_MS + 1.0, LEASE_MS).await.unwrap());
    let old = Fence { lease, holder: "old" };
    let new = Fence { lease, holder: "new" };
    assert!(!store.record_step(&op.id, &old, &[], None).await.unwrap(), "the stalled runner's write is refused");
    assert!(!store.record_failure(&op.id, &old, "late").await.unwrap());
    assert!(!store.renew_lease(lease, "old", now + 2.0 * LEASE_MS, LEASE_MS).await.unwrap());
    assert!(store.record_failure(&op.id, &new, "mine").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_creates_all_end_bound() {
    let world = World::new(11).await;
    let slugs: Vec<String> = (0..50).map(|i| format!("tenant-{i:02}")).collect();
    let ops = join_all(slugs.iter().map(|s| world.request_create(s))).await;
    let invocations: Vec<_> = ops.iter().map(|_| world.invocation()).collect();
    let runs = join_all(invocations.iter().zip(&ops).map(|(lc, op)| lc.run(op))).await;
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    world.converge(5).await;
    for slug in &slugs {
        assert_eq!(status(&world, slug).await, TenantStatus::Active, "{slug}");
    }
    assert_eq!(world.cloud.tenant_bindings().len(), 50, "no binding lost to a concurrent settings PATCH");
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_bare_deploy_that_drops_every_tenant_binding_is_healed() {
    let world = World::new(5).await;
    for slug in ["acme", "globex"] {
        let op = world.request_create(slug).await;
        world.invocation().run(&op).await.unwrap();
    }
    world.converge(3).await;
    assert_eq!(world.cloud.tenant_bindings().len(), 2);
    // What a bare `wrangler deploy` does: send only wrangler.toml's bindings.
    let own: Vec<_> =
        ["CONTROL_DB", "APEX", "BACKUPS"].iter().map(|n| serde_json::json!({ "type": "inherit", "name": n })).collect();
    world.invocation().api.patch_settings(tenantry::fake::SCRIPT, &own).await.unwrap();
    assert_eq!(world.cloud.tenant_bindings().len(), 0);
    assert!(!world.violations().await.is_empty(), "the drift is seen");
    let report = world.invocation().reconcile_bindings().await.unwrap().expect("the lease was free");
    assert!(report.converged && report.patches == 1, "{report:?}");
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_fault_that_outlasts_the_retries_leaves_the_create_open_not_failed() {
    use tenantry::fake::Fault;
    let world = World::new(13).await;
    let op = world.request_create("acme").await;
    world.cloud.fail_next_on("d1.create", 50, Fault::ServerError);
    let progress = world.invocation().run(&op).await.unwrap();
    assert!(matches!(&progress, Progress::Pending(Wait::Reason(r)) if r.starts_with("database step")), "{progress:?}");
    let tenant = world.store().tenant("acme").await.unwrap().unwrap();
    assert_eq!(tenant.status, TenantStatus::Provisioning, "a transient fault never fails a create");
    assert!(tenant.last_error.unwrap().contains("d1.create"), "the tenant says what it waits for");
    let op = world.store().operation(&op.id).await.unwrap().unwrap();
    assert_eq!(op.attempts, 1);
    // The rest of the scripted faults are used up by the retries of the passes to come.
    world.converge(60).await;
    assert_eq!(status(&world, "acme").await, TenantStatus::Active);
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_database_stamped_for_another_tenant_fails_the_create_and_is_never_served() {
    use tenantry::core::slug::TenantSlug;
    let world = World::new(17).await;
    let (_, foreign) = world.cloud.add_database("tenantry-acme");
    tenantry::store::tenant_db::prepare(&foreign, &TenantSlug::parse("globex").unwrap()).await.unwrap();
    let op = world.request_create("acme").await;
    let progress = world.invocation().run(&op).await.unwrap();
    assert!(matches!(&progress, Progress::Failed(why) if why.contains("stamped for tenant globex")), "{progress:?}");
    let tenant = world.store().tenant("acme").await.unwrap().unwrap();
    assert_eq!(tenant.status, TenantStatus::Failed);
    assert!(!tenant.bind_wanted, "a failed create never asked for its binding");
    assert!(world.cloud.tenant_bindings().is_empty());
    // The operator deletes it: torn down like any other.
    let delete = world.request_delete("acme").await.unwrap();
    assert_eq!(world.invocation().run(&delete).await.unwrap(), Progress::Finished);
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn the_account_database_limit_fails_a_create_permanently() {
    let world = World::new(19).await;
    world.cloud.set_max_databases(0);
    let op = world.request_create("acme").await;
    let progress = world.invocation().run(&op).await.unwrap();
    assert!(matches!(&progress, Progress::Failed(why) if why.contains("limit")), "{progress:?}");
    assert_eq!(status(&world, "acme").await, TenantStatus::Failed);
}

/// A small deterministic generator for the mixes below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(start_paused = true)]
async fn the_reconciler_converges_from_any_mix_of_states() {
    use tenantry::sql;
    use tenantry::store::sql::Sql;
    for seed in 1..=12_u64 {
        let world = World::new(seed).await;
        world.remove_orphans.set(true);
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let slugs: Vec<String> = (0..10).map(|i| format!("mix-{i}")).collect();
        for slug in &slugs {
            let op = world.request_create(slug).await;
            // Each create is cut at a random write, or runs its first invocation, or never starts.
            match rng.below(3) {
                0 => {
                    world.crash.arm(1 + rng.below(25));
                    run_until_crash(&world, &op).await;
                    world.crash.disarm();
                }
                1 => drop(world.invocation().run(&op).await.unwrap()),
                _ => {}
            }
            // Some are deleted at once, mid-create; some deletes are cut too.
            if rng.below(4) == 0 {
                if let Some(delete) = world.request_delete(slug).await {
                    if rng.below(2) == 0 {
                        world.crash.arm(1 + rng.below(10));
                        run_until_crash(&world, &delete).await;
                        world.crash.disarm();
                    }
                }
            }
        }
        // Drift the platform can be left in: a stray provisioning row and a stray deleting row
        // (no operation), an orphan database, a binding set edited by hand.
        let store = world.store();
        world.control.run(sql!("INSERT INTO tenants (slug, display_name, status, database_name, binding_name) VALUES ('stray-p', 's', 'provisioning', 'tenantry-stray-p', 'TENANT_STRAY_P')")).await.unwrap();
        world.control.run(sql!("INSERT INTO tenants (slug, display_name, status, database_name, binding_name) VALUES ('stray-d', 's', 'deleting', 'tenantry-stray-d', 'TENANT_STRAY_D')")).await.unwrap();
        world.cloud.add_database("tenantry-orphan");
        let (ghost, _) = world.cloud.add_database("somebody-elses");
        let mut bindings = world.cloud.bindings();
        bindings.push(serde_json::json!({ "type": "d1", "name": "TENANT_GHOST", "id": ghost }));
        world.invocation().api.patch_settings(tenantry::fake::SCRIPT, &bindings).await.unwrap();
        after_leases_lapse().await;

        let passes = world.converge(6).await;
        assert_eq!(world.violations().await, Vec::<String>::new(), "seed {seed}");
        assert!(passes <= 3, "seed {seed}: {passes} passes");
        for slug in &slugs {
            let t = store.tenant(slug).await.unwrap().unwrap();
            assert!(
                matches!(t.status, TenantStatus::Active | TenantStatus::Deleted),
                "seed {seed}: {slug} is {}",
                t.status
            );
        }
        assert_eq!(status(&world, "stray-p").await, TenantStatus::Failed, "seed {seed}");
        assert_eq!(status(&world, "stray-d").await, TenantStatus::Deleted, "seed {seed}");
        assert!(world.cloud.database_names().contains(&"somebody-elses".to_owned()), "not ours: never removed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_refused_its_binding_gives_its_place_back() {
    let world = World::new(23).await;
    // Room for the Worker's three own bindings and one tenant.
    world.cloud.set_max_bindings(4);
    let first = world.request_create("first").await;
    world.invocation().run(&first).await.unwrap();
    world.converge(3).await;
    assert_eq!(status(&world, "first").await, TenantStatus::Active);
    let second = world.request_create("second").await;
    let progress = world.invocation().run(&second).await.unwrap();
    assert!(matches!(&progress, Progress::Failed(why) if why.contains("too many bindings")), "{progress:?}");
    let failed = world.store().tenant("second").await.unwrap().unwrap();
    assert!(!failed.bind_wanted, "a failed create does not keep asking for a binding");
    // So the binding set still converges, and the fleet's other changes go through.
    let report = world.invocation().reconcile_bindings().await.unwrap().unwrap();
    assert!(report.converged, "{report:?}");
    let delete = world.request_delete("first").await.unwrap();
    assert_eq!(world.invocation().run(&delete).await.unwrap(), Progress::Finished);
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_create_failed_after_its_bind_step_and_sent_again_ends_bound() {
    use tenantry::fake::Fault;
    use tenantry::store::control::CreateStart;
    let world = World::new(29).await;
    let op = world.request_create("acme").await;
    // Bound by the first invocation; the next finds it not live and its token refused.
    assert_eq!(world.invocation().run(&op).await.unwrap(), Progress::Pending(Wait::BindingNotLive));
    bare_deploy(&world).await;
    world.cloud.fail_next_on("settings.get", 1, Fault::Api { status: 403, code: 10000 });
    let progress = world.invocation().run(&op).await.unwrap();
    assert!(matches!(progress, Progress::Failed(_)), "{progress:?}");
    assert_eq!(status(&world, "acme").await, TenantStatus::Failed);
    // The operator sends the same create again: a new create operation, from its first step (each
    // idempotent), asks for the binding again.
    let store = world.store();
    let input = r#"{"admin_email":"admin@acme.test"}"#;
    store
        .start_create(CreateStart::Resume, "acme", "fp-acme", "resume-1", input, &serde_json::json!({}))
        .await
        .unwrap();
    world.converge(5).await;
    assert_eq!(status(&world, "acme").await, TenantStatus::Active);
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_creates_at_the_binding_limit_never_overfill_it_and_the_set_still_converges() {
    let world = World::new(31).await;
    // The Worker's three own bindings and room for ten tenants.
    world.cloud.set_max_bindings(13);
    let slugs: Vec<String> = (0..50).map(|i| format!("burst-{i:02}")).collect();
    let ops = join_all(slugs.iter().map(|s| world.request_create(s))).await;
    let invocations: Vec<_> = ops.iter().map(|_| world.invocation()).collect();
    let runs = join_all(invocations.iter().zip(&ops).map(|(lc, op)| lc.run(op))).await;
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    world.converge(10).await;
    let mut active = Vec::new();
    for slug in &slugs {
        let t = world.store().tenant(slug).await.unwrap().unwrap();
        match t.status {
            TenantStatus::Active => active.push(slug.as_str()),
            TenantStatus::Failed => assert!(!t.bind_wanted, "{slug} failed but still asks for a binding"),
            other => panic!(
                "{slug} is {other}: {:?} {:?}",
                t.last_error,
                world.store().open_operation_of(slug).await.unwrap()
            ),
        }
    }
    assert!((1..=10).contains(&active.len()), "{} active", active.len());
    assert_eq!(world.cloud.tenant_bindings().len(), active.len());
    assert_eq!(world.violations().await, Vec::<String>::new());
    // The failed ones gave their place back: a delete still changes the binding set.
    let delete = world.request_delete(active[0]).await.unwrap();
    assert_eq!(world.invocation().run(&delete).await.unwrap(), Progress::Finished);
    assert_eq!(world.violations().await, Vec::<String>::new());
}
