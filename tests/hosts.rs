//! Binding hosts, natively: tenant bindings spread over Worker scripts in a dispatch namespace,
//! each under its cap; the main Worker never changed by tenant churn; hosts created when all are
//! full and freed slots reused; a crash after any write of a create resumed; the upgrade from the
//! single-script layout with every tenant served throughout. Every test ends on the fleet's
//! invariants (`World::violations`: each active tenant bound exactly once, where it is served
//! from; each host under its cap and counting its tenants right; no orphan database or script).

use std::time::Duration;

use futures::future::{join_all, select, Either};
use tenantry::control::lifecycle::{Progress, Wait, LEASE_MS};
use tenantry::core::lifecycle::TenantStatus;
use tenantry::core::names::BindingName;
use tenantry::core::slug::TenantSlug;
use tenantry::fake::{World, NAMESPACE};
use tenantry::store::control::OperationRow;
use tenantry::store::ports::{Bindings, Home};
use tenantry::store::sql::Sql;

async fn status(world: &World, slug: &str) -> TenantStatus {
    world.store().tenant(slug).await.unwrap().unwrap().status
}

/// Creates `slugs` concurrently (each run once by its own invocation), then lets the reconciler
/// converge.
async fn create_all(world: &World, slugs: &[String]) {
    let ops = join_all(slugs.iter().map(|s| world.request_create(s))).await;
    let invocations: Vec<_> = ops.iter().map(|_| world.invocation()).collect();
    let runs = join_all(invocations.iter().zip(&ops).map(|(lc, op)| lc.run(op))).await;
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    world.converge(5).await;
}

/// The tenants placed on host `host`, by slug.
async fn on_host(world: &World, host: &str) -> Vec<String> {
    let tenants = world.store().list_tenants(None, "", 10_000).await.unwrap();
    tenants.into_iter().filter(|t| t.host.as_deref() == Some(host)).map(|t| t.slug).collect()
}

fn slugs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

/// Whether a new invocation reaches tenant `slug`'s database where the control plane routes it,
/// and finds it stamped for it.
async fn serves(world: &World, slug: &str) -> bool {
    let Some(record) = world.store().tenant_record(slug).await.unwrap() else { return false };
    let parsed = TenantSlug::parse(slug).unwrap();
    let lc = world.invocation();
    let Some(db) = lc.bindings.database(Home::of(record.host.as_deref()), &BindingName::for_tenant(&parsed)) else {
        return false;
    };
    #[derive(serde::Deserialize)]
    struct Value {
        value: String,
    }
    let stamp: Option<Value> =
        db.first(tenantry::sql!("SELECT value FROM tenant_meta WHERE key = 'slug'")).await.ok().flatten();
    stamp.is_some_and(|v| v.value == slug)
}

#[tokio::test(start_paused = true)]
async fn sixty_concurrent_creates_fill_hosts_in_order_and_never_touch_the_main_worker() {
    let world = World::with_hosts(3, 10).await;
    let all = slugs("t", 60);
    create_all(&world, &all).await;
    for slug in &all {
        assert_eq!(status(&world, slug).await, TenantStatus::Active, "{slug}");
        assert!(serves(&world, slug).await, "{slug} is not served");
    }
    let hosts = world.store().hosts().await.unwrap();
    assert_eq!(hosts.len(), 6, "60 tenants at 10 a host: {hosts:?}");
    assert!(hosts.iter().all(|h| h.used == 10 && h.state == "ready"), "{hosts:?}");
    assert_eq!(world.cloud.namespace_scripts(NAMESPACE).len(), 6);
    assert_eq!(world.cloud.settings_version(), 0, "tenant churn made no version of the main Worker");
    assert!(world.cloud.tenant_bindings().is_empty());
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn freed_slots_are_reused_before_a_new_host_is_made() {
    let world = World::with_hosts(4, 5).await;
    create_all(&world, &slugs("a", 10)).await;
    assert_eq!(world.store().hosts().await.unwrap().len(), 2);
    // Three tenants of the first host go.
    let first = on_host(&world, &world.store().hosts().await.unwrap()[0].name).await;
    for slug in &first[..3] {
        let op = world.request_delete(slug).await.unwrap();
        world.invocation().run(&op).await.unwrap();
    }
    world.converge(5).await;
    let hosts = world.store().hosts().await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.used).collect::<Vec<_>>(), vec![2, 5]);
    create_all(&world, &slugs("b", 3)).await;
    let hosts = world.store().hosts().await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.used).collect::<Vec<_>>(), vec![5, 5], "the freed slots were taken");
    create_all(&world, &slugs("c", 1)).await;
    assert_eq!(world.store().hosts().await.unwrap().len(), 3, "a third host once both are full");
    assert_eq!(world.cloud.settings_version(), 0);
    assert_eq!(world.violations().await, Vec::<String>::new());
}

/// Runs `op` in fresh invocations (the touches that carry a saga on) until the armed crash fires,
/// at most `runs` times; whether it fired.
async fn run_until_crash(world: &World, op: &OperationRow, runs: usize) -> bool {
    for _ in 0..runs {
        let lc = world.invocation();
        let run = std::pin::pin!(lc.run(op));
        let crashed = std::pin::pin!(world.crash.wait());
        if matches!(select(run, crashed).await, Either::Right(_)) {
            return true;
        }
    }
    false
}

/// The effects (writes that land) of a clean create on a host that exists already (as in the
/// crash test below).
async fn create_effects() -> u64 {
    let world = World::with_hosts(7, 10).await;
    create_all(&world, &["first".to_owned()]).await;
    let op = world.request_create("acme").await;
    let before = world.crash.effects();
    for _ in 0..3 {
        world.invocation().run(&op).await.unwrap();
    }
    world.crash.effects() - before
}

#[tokio::test(start_paused = true)]
async fn a_create_on_hosts_killed_after_any_write_resumes_to_active() {
    let total = create_effects().await;
    assert!(total >= 10, "a create makes many writes ({total})");
    for at in 1..=total {
        let world = World::with_hosts(7, 10).await;
        // Another tenant first, so the host exists and holds a binding the crash must not lose.
        create_all(&world, &["first".to_owned()]).await;
        let op = world.request_create("acme").await;
        world.crash.arm(at);
        assert!(run_until_crash(&world, &op, 3).await, "crash point {at} of {total} was reached");
        world.crash.disarm();
        tokio::time::sleep(Duration::from_millis(LEASE_MS as u64 + 1)).await;
        let passes = world.converge(5).await;
        assert_eq!(status(&world, "acme").await, TenantStatus::Active, "killed after write {at} of {total}");
        assert!(serves(&world, "acme").await && serves(&world, "first").await, "killed after write {at}");
        assert_eq!(world.violations().await, Vec::<String>::new(), "killed after write {at} of {total}");
        assert!(passes <= 3, "killed after write {at}: converged in {passes} passes");
        assert_eq!(world.store().hosts().await.unwrap().len(), 1, "killed after write {at}: one host");
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_waits_for_its_binding_on_its_host_then_finishes() {
    let world = World::with_hosts(8, 10).await;
    let op = world.request_create("acme").await;
    // The invocation that binds cannot see the binding: migrations wait for the next touch.
    assert_eq!(world.invocation().run(&op).await.unwrap(), Progress::Pending(Wait::BindingNotLive));
    assert_eq!(world.invocation().run(&op).await.unwrap(), Progress::Finished);
    let api = world.cloud.calls_by_kind();
    assert_eq!(api.get("d1.query"), None, "no migration went through the REST API: {api:?}");
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_host_that_lost_its_bindings_is_restored_and_other_hosts_are_not_touched() {
    let world = World::with_hosts(9, 5).await;
    create_all(&world, &slugs("t", 10)).await;
    let hosts = world.store().hosts().await.unwrap();
    let other = format!("{NAMESPACE}/{}", hosts[1].name);
    let other_version = world.cloud.settings_version_of(&other);
    // Someone empties the first host's bindings by hand.
    world.invocation().api.patch_script_settings(Some(NAMESPACE), &hosts[0].name, &[]).await.unwrap();
    let victim = on_host(&world, &hosts[0].name).await.remove(0);
    assert!(!serves(&world, &victim).await);
    world.converge(3).await;
    for slug in slugs("t", 10) {
        assert!(serves(&world, &slug).await, "{slug}");
    }
    assert_eq!(world.cloud.settings_version_of(&other), other_version, "the other host was not changed");
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_single_script_fleet_moves_to_hosts_with_every_tenant_served_throughout() {
    // Tenants created before hosts existed: bound on the main Worker.
    let world = World::new(12).await;
    let all = slugs("old", 25);
    create_all(&world, &all).await;
    assert_eq!(world.cloud.tenant_bindings().len(), 25);
    // The upgrade: hosts are configured.
    world.use_hosts(10);
    let mut passes = 0;
    loop {
        passes += 1;
        let _ = world.invocation().reconcile_all().await;
        for slug in &all {
            assert!(serves(&world, slug).await, "{slug} unserved after pass {passes}");
        }
        let on_main = world.store().tenants_on_main(100).await.unwrap().len();
        if on_main == 0 && world.cloud.tenant_bindings().is_empty() {
            break;
        }
        assert!(passes < 10, "still {on_main} tenants on the main Worker after {passes} passes");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    // New tenants go to hosts too; the main Worker is not changed again.
    let main_version = world.cloud.settings_version();
    create_all(&world, &slugs("new", 5)).await;
    assert_eq!(world.cloud.settings_version(), main_version);
    assert_eq!(world.store().hosts().await.unwrap().len(), 3);
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn orphan_host_scripts_are_reported_and_removed_only_when_empty_and_ours() {
    let world = World::with_hosts(14, 5).await;
    create_all(&world, &slugs("t", 3)).await;
    let api = world.invocation().api;
    let upload = |name: &'static str, bindings: Vec<serde_json::Value>| {
        let api = &api;
        async move {
            let metadata = tenantry::store::host::metadata(&bindings);
            api.upload_namespace_script(NAMESPACE, name, metadata, "host.mjs", "export default {}").await.unwrap();
        }
    };
    // An empty script named like a host, one holding a binding, and someone else's script.
    upload("tenantry-host-0099", vec![]).await;
    let (id, _) = world.cloud.add_database("tenantry-stray");
    upload("tenantry-host-0098", vec![serde_json::json!({ "type": "d1", "name": "TENANT_STRAY", "id": id })]).await;
    upload("not-ours", vec![]).await;
    let report = world.invocation().reconcile_all().await.unwrap();
    let mut found: Vec<String> = serde_json::from_value(report["orphans"]["scripts"]["found"].clone()).unwrap();
    found.sort();
    assert_eq!(found, vec!["tenantry-host-0098", "tenantry-host-0099"]);
    assert_eq!(report["orphans"]["scripts"]["removed"], serde_json::json!([]), "reported only");
    world.remove_orphans.set(true);
    let report = world.invocation().reconcile_all().await.unwrap();
    assert_eq!(report["orphans"]["scripts"]["removed"], serde_json::json!(["tenantry-host-0099"]));
    let mut left = world.cloud.namespace_scripts(NAMESPACE);
    left.sort();
    assert_eq!(left, vec!["not-ours", "tenantry-host-0001", "tenantry-host-0098"]);
}

/// The effects (writes that land) of a clean delete on hosts.
async fn delete_effects() -> u64 {
    let world = World::with_hosts(7, 10).await;
    create_all(&world, &["acme".to_owned()]).await;
    let op = world.request_delete("acme").await.unwrap();
    let before = world.crash.effects();
    world.invocation().run(&op).await.unwrap();
    world.crash.effects() - before
}

#[tokio::test(start_paused = true)]
async fn a_delete_on_hosts_killed_after_any_write_resumes_and_leaves_no_binding_behind() {
    let total = delete_effects().await;
    assert!(total >= 6, "a delete makes several writes ({total})");
    for at in 1..=total {
        let world = World::with_hosts(7, 10).await;
        create_all(&world, &["first".to_owned(), "acme".to_owned()]).await;
        let op = world.request_delete("acme").await.unwrap();
        world.crash.arm(at);
        assert!(run_until_crash(&world, &op, 3).await, "crash point {at} of {total} was reached");
        world.crash.disarm();
        tokio::time::sleep(Duration::from_millis(LEASE_MS as u64 + 1)).await;
        // The saga alone (not the reconciler's pass, which checks every host first) must finish
        // the delete with the binding gone from its host before the database is dropped.
        for _ in 0..5 {
            if world.invocation().run(&op).await.unwrap() == Progress::Finished {
                break;
            }
        }
        assert_eq!(status(&world, "acme").await, TenantStatus::Deleted, "killed after write {at} of {total}");
        assert_eq!(world.violations().await, Vec::<String>::new(), "killed after write {at} of {total}");
        assert!(serves(&world, "first").await, "killed after write {at}: the other tenant still serves");
        let hosts = world.store().hosts().await.unwrap();
        assert_eq!(
            hosts.iter().map(|h| h.used).sum::<i64>(),
            1,
            "killed after write {at}: the slot was given back once"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_deletes_and_creates_reuse_slots_without_overfilling_or_miscounting() {
    let world = World::with_hosts(15, 10).await;
    create_all(&world, &slugs("old", 40)).await;
    assert_eq!(world.store().hosts().await.unwrap().len(), 4);
    // 25 deletes and 25 creates at once.
    let deletes = join_all(slugs("old", 25).into_iter().map(|s| {
        let world = &world;
        async move { world.request_delete(&s).await.unwrap() }
    }))
    .await;
    let creates = join_all(slugs("new", 25).iter().map(|s| world.request_create(s))).await;
    let ops: Vec<_> = deletes.into_iter().chain(creates).collect();
    let invocations: Vec<_> = ops.iter().map(|_| world.invocation()).collect();
    let runs = join_all(invocations.iter().zip(&ops).map(|(lc, op)| lc.run(op))).await;
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    world.converge(5).await;
    for slug in slugs("new", 25) {
        assert!(serves(&world, &slug).await, "{slug}");
    }
    let used: i64 = world.store().hosts().await.unwrap().iter().map(|h| h.used).sum();
    assert_eq!(used, 40, "15 old and 25 new tenants hold a slot each");
    assert_eq!(world.violations().await, Vec::<String>::new());
}
