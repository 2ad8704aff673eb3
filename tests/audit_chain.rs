//! The tenant audit chain on in-memory SQLite, with the real tenant and control migrations:
//! sealing (also by passes that interleave), verification pages, tampering behind the API's back,
//! and anchors in the control plane.

use serde::Deserialize;
use tenantry::core::audit_chain::{genesis, AnchorStatus, Reason};
use tenantry::core::migrations;
use tenantry::core::slug::TenantSlug;
use tenantry::fake::MemorySql;
use tenantry::sql;
use tenantry::store::audit::{plan_seal, seal, verify, Report, SEAL_BATCH};
use tenantry::store::control::ControlStore;
use tenantry::store::migrate::apply_pending;
use tenantry::store::sql::Sql;
use tenantry::store::tenant_db::prepare;

const SLUG: &str = "acme";

async fn tenant_db() -> MemorySql {
    let db = MemorySql::new();
    prepare(&db, &TenantSlug::parse(SLUG).unwrap()).await.unwrap();
    db
}

async fn insert(db: &MemorySql, n: usize) {
    for i in 0..n {
        db.run(sql!(
            "INSERT INTO audit_log (actor_id, actor_email, action, target, request_id, detail) \
             VALUES (1, 'a@acme.test', 'project.create', ?1, ?2, '{}')",
            format!("project:{i}"),
            format!("req-{i}")
        ))
        .await
        .unwrap();
    }
}

async fn check(db: &MemorySql) -> Report {
    verify(db, &genesis(SLUG), None, 5000, None).await.unwrap()
}

fn broken(report: &Report) -> Option<(i64, Reason)> {
    report.first_broken.as_ref().map(|b| (b.id, b.reason))
}

async fn unsealed(db: &MemorySql) -> i64 {
    #[derive(Deserialize)]
    struct N {
        n: i64,
    }
    db.first::<N>(sql!("SELECT count(*) AS n FROM audit_log WHERE hash IS NULL")).await.unwrap().unwrap().n
}

#[tokio::test]
async fn rows_are_sealed_in_bounded_passes_and_verify() {
    let db = tenant_db().await;
    assert!(check(&db).await.ok, "an empty log verifies");
    insert(&db, 250).await;
    let before = check(&db).await;
    assert_eq!((before.ok, before.unsealed, before.sealed_through), (true, 250, None));
    // One pass seals one batch; more passes catch up.
    assert_eq!(seal(&db, &genesis(SLUG), 1).await.unwrap(), u64::from(SEAL_BATCH));
    assert_eq!(seal(&db, &genesis(SLUG), 10).await.unwrap(), 150);
    assert_eq!(seal(&db, &genesis(SLUG), 10).await.unwrap(), 0, "nothing left");
    let after = check(&db).await;
    assert_eq!((after.ok, after.checked, after.unsealed, after.sealed_through), (true, 250, 0, Some(250)));
    assert_eq!(after.head.as_ref().map(|h| h.0), Some(250));
}

#[tokio::test]
async fn interleaved_passes_neither_conflict_nor_fork_the_chain() {
    let db = tenant_db().await;
    insert(&db, 5).await;
    seal(&db, &genesis(SLUG), 1).await.unwrap();
    insert(&db, 5).await;
    // Two passes read the same rows; one writes; more rows arrive; then the other writes.
    let (a, _) = plan_seal(&db, &genesis(SLUG)).await.unwrap();
    let (b, _) = plan_seal(&db, &genesis(SLUG)).await.unwrap();
    assert_eq!(a, b, "passes over the same rows compute the same seals");
    let changed: u64 = db.batch(b).await.unwrap().iter().map(|o| o.changes).sum();
    assert_eq!(changed, 5);
    insert(&db, 3).await;
    let changed: u64 = db.batch(a).await.unwrap().iter().map(|o| o.changes).sum();
    assert_eq!(changed, 0, "the late pass changes nothing");
    assert_eq!(seal(&db, &genesis(SLUG), 1).await.unwrap(), 3);
    let report = check(&db).await;
    assert_eq!((report.ok, report.sealed_through, report.unsealed), (true, Some(13), 0));
}

#[tokio::test]
async fn rows_written_before_the_migration_are_sealed_by_the_first_pass() {
    let db = MemorySql::new();
    apply_pending(&db, &migrations::TENANT[..4]).await.unwrap();
    db.run(sql!("INSERT INTO tenant_meta (key, value) VALUES ('slug', ?1)", SLUG)).await.unwrap();
    db.run(sql!(
        "INSERT INTO audit_log (actor_id, actor_email, action, target, request_id) VALUES (NULL, NULL, 'login.failed', 'email:x', 'r1'), \
         (1, 'a@acme.test', 'login', 'user:1', 'r2')"
    ))
    .await
    .unwrap();
    apply_pending(&db, migrations::TENANT).await.unwrap();
    assert_eq!(unsealed(&db).await, 2);
    seal(&db, &genesis(SLUG), 1).await.unwrap();
    assert_eq!(unsealed(&db).await, 0);
    assert!(check(&db).await.ok);
}

#[tokio::test]
async fn tampering_behind_the_api_is_found_at_its_row() {
    // (what, the tampering, rows written after it, where and why the chain breaks)
    let cases: &[(&str, &str, usize, (i64, Reason))] = &[
        ("edit", "UPDATE audit_log SET detail = '{\"forged\":1}' WHERE id = 5", 2, (5, Reason::ContentChanged)),
        ("delete", "DELETE FROM audit_log WHERE id = 7", 2, (7, Reason::RowsMissing)),
        ("delete the newest", "DELETE FROM audit_log WHERE id >= 9", 0, (9, Reason::TailMissing)),
        ("delete the newest, then more rows", "DELETE FROM audit_log WHERE id >= 9", 2, (9, Reason::RowsMissing)),
        ("move", "UPDATE audit_log SET id = 100 WHERE id = 4", 2, (4, Reason::RowsMissing)),
        (
            "unseal to reseal",
            "UPDATE audit_log SET hash = NULL, prev_hash = NULL, action = 'x' WHERE id = 3",
            2,
            (3, Reason::HashRemoved),
        ),
    ];
    for (name, tamper, more, expected) in cases {
        let db = tenant_db().await;
        insert(&db, 10).await;
        seal(&db, &genesis(SLUG), 1).await.unwrap();
        db.run(sql!(*tamper)).await.unwrap();
        // Sealing goes on for new rows and never re-seals a tampered one.
        insert(&db, *more).await;
        seal(&db, &genesis(SLUG), 1).await.unwrap();
        assert_eq!(broken(&check(&db).await), Some(*expected), "{name}");
    }
}

#[tokio::test]
async fn pages_continue_from_their_cursor() {
    let db = tenant_db().await;
    insert(&db, 10).await;
    seal(&db, &genesis(SLUG), 1).await.unwrap();
    let mut cursor = None;
    let mut pages = Vec::new();
    loop {
        let page = verify(&db, &genesis(SLUG), cursor, 4, None).await.unwrap();
        assert!(page.ok);
        pages.push((page.checked, page.next_cursor, page.head.is_some()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, vec![(4, Some(4), false), (4, Some(8), false), (2, None, true)]);
    // After a broken link the cursor goes on from where the walk stopped.
    db.run(sql!("UPDATE audit_log SET action = 'x' WHERE id = 2")).await.unwrap();
    let first = verify(&db, &genesis(SLUG), None, 4, None).await.unwrap();
    assert_eq!((broken(&first), first.next_cursor), (Some((2, Reason::ContentChanged)), Some(2)));
    let rest = verify(&db, &genesis(SLUG), first.next_cursor, 100, None).await.unwrap();
    assert_eq!((rest.ok, rest.checked, rest.next_cursor), (true, 8, None));
}

/// A control plane with tenant `acme` in service on database `db-1`.
async fn control() -> ControlStore<MemorySql> {
    let db = MemorySql::new();
    apply_pending(&db, migrations::CONTROL).await.unwrap();
    db.run(sql!(
        "INSERT INTO tenants (slug, display_name, status, database_name, database_id, binding_name) \
         VALUES ('acme', 'Acme', 'active', 'tenantry-acme', 'db-1', 'TENANT_ACME')"
    ))
    .await
    .unwrap();
    ControlStore::new(db)
}

#[tokio::test]
async fn an_anchor_catches_a_rewritten_tail_and_a_restore_explains_a_moved_head() {
    let db = tenant_db().await;
    let store = control().await;
    insert(&db, 8).await;
    seal(&db, &genesis(SLUG), 1).await.unwrap();
    let (began, none) = store.audit_anchor(SLUG).await.unwrap();
    assert!(none.is_none());
    let head = check(&db).await.head.unwrap();
    assert!(store.record_audit_anchor(SLUG, "db-1", head.0, &head.1, &began).await.unwrap());
    let (_, anchor) = store.audit_anchor(SLUG).await.unwrap();
    let anchor = anchor.unwrap();
    assert_eq!((anchor.last_id, anchor.restored_since), (8, false));
    let held = verify(&db, &genesis(SLUG), None, 5000, Some(&anchor)).await.unwrap();
    assert_eq!((held.ok, held.anchor.map(|a| a.status)), (true, Some(AnchorStatus::Held)));

    // Row 5 edited, then every hash from it on recomputed: the chain alone verifies, the anchor
    // does not.
    db.run(sql!("UPDATE audit_log SET detail = '{\"forged\":1}' WHERE id = 5")).await.unwrap();
    db.run(sql!("UPDATE audit_log SET hash = NULL, prev_hash = NULL WHERE id >= 5")).await.unwrap();
    seal(&db, &genesis(SLUG), 1).await.unwrap();
    assert!(check(&db).await.ok);
    let rewritten = verify(&db, &genesis(SLUG), None, 5000, Some(&anchor)).await.unwrap();
    assert_eq!(broken(&rewritten), Some((8, Reason::AnchorMismatch)));
    assert_eq!(rewritten.anchor.map(|a| a.status), Some(AnchorStatus::Broken));
    assert!(rewritten.head.is_none(), "a broken log is never anchored");

    // A restore that finished after the anchor explains a head that moved.
    store
        .sql()
        .run(sql!(
            "INSERT INTO operations (id, tenant_slug, kind, state, finished_at) \
             VALUES ('op-r', 'acme', 'restore_point_in_time', 'succeeded', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 second'))"
        ))
        .await
        .unwrap();
    let (_, after) = store.audit_anchor(SLUG).await.unwrap();
    let after = after.unwrap();
    assert!(after.restored_since);
    let report = verify(&db, &genesis(SLUG), None, 5000, Some(&after)).await.unwrap();
    assert_eq!((report.ok, report.anchor.map(|a| a.status)), (true, Some(AnchorStatus::AfterRestore)));
    // ... and an anchor begun before that restore finished is not recorded.
    let head = report.head.unwrap();
    assert!(!store.record_audit_anchor(SLUG, "db-1", head.0, &head.1, &began).await.unwrap());
    // One begun after it is.
    let (now, _) = store.audit_anchor(SLUG).await.unwrap();
    store.sql().run(sql!("UPDATE operations SET finished_at = ?1 WHERE id = 'op-r'", began.as_str())).await.unwrap();
    assert!(store.record_audit_anchor(SLUG, "db-1", head.0, &head.1, &now).await.unwrap());
}

#[tokio::test]
async fn no_anchor_is_recorded_while_a_restore_runs_or_for_another_database() {
    let db = tenant_db().await;
    let store = control().await;
    insert(&db, 3).await;
    seal(&db, &genesis(SLUG), 1).await.unwrap();
    let head = check(&db).await.head.unwrap();
    let (began, _) = store.audit_anchor(SLUG).await.unwrap();
    assert!(!store.record_audit_anchor(SLUG, "db-old", head.0, &head.1, &began).await.unwrap());
    store.sql().run(sql!("UPDATE tenants SET restoring = 'op-x' WHERE slug = 'acme'")).await.unwrap();
    assert!(!store.record_audit_anchor(SLUG, "db-1", head.0, &head.1, &began).await.unwrap());
    store.sql().run(sql!("UPDATE tenants SET restoring = NULL WHERE slug = 'acme'")).await.unwrap();
    store
        .sql()
        .run(sql!(
            "INSERT INTO operations (id, tenant_slug, kind, state) VALUES ('op-b', 'acme', 'restore_backup', 'running')"
        ))
        .await
        .unwrap();
    assert!(!store.record_audit_anchor(SLUG, "db-1", head.0, &head.1, &began).await.unwrap());
    store.sql().run(sql!("UPDATE operations SET state = 'failed' WHERE id = 'op-b'")).await.unwrap();
    assert!(store.record_audit_anchor(SLUG, "db-1", head.0, &head.1, &began).await.unwrap());
}

/// Tenant `slug`'s database as a new invocation reaches it.
async fn database_of(world: &tenantry::fake::World, slug: &str) -> MemorySql {
    use tenantry::core::names::BindingName;
    use tenantry::store::ports::{Bindings, Home};
    let record = world.store().tenant_record(slug).await.unwrap().unwrap();
    let parsed = TenantSlug::parse(slug).unwrap();
    world.invocation().bindings.database(Home::of(record.host.as_deref()), &BindingName::for_tenant(&parsed)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_scheduled_pass_anchors_every_tenant_in_turn_and_reports_a_broken_chain() {
    let world = tenantry::fake::World::with_hosts(7, 10).await;
    let slugs: Vec<String> = (0..4).map(|i| format!("anchor-{i}")).collect();
    for slug in &slugs {
        let op = world.request_create(slug).await;
        world.invocation().run(&op).await.unwrap();
    }
    world.converge(5).await;
    for (i, slug) in slugs.iter().enumerate() {
        insert(&database_of(&world, slug).await, 3 + i).await;
    }
    // Passes of 3 tenants: the first anchors 3, the second the last one (and comes round again).
    let first = world.invocation().anchor_pass(3, 2).await.unwrap();
    assert_eq!((first.anchored, first.broken.len(), first.failed, first.more), (3, 0, 0, true));
    let second = world.invocation().anchor_pass(3, 2).await.unwrap();
    assert_eq!((second.anchored, second.more), (1, false));
    for (i, slug) in slugs.iter().enumerate() {
        let (_, anchor) = world.store().audit_anchor(slug).await.unwrap();
        assert_eq!(anchor.map(|a| a.last_id), Some(3 + i as i64), "{slug}: every row sealed and anchored");
    }

    // New rows: the next round verifies from the anchor on and moves it.
    let db = database_of(&world, "anchor-0").await;
    insert(&db, 2).await;
    // A tail rewritten with its hashes on another tenant: found against its anchor.
    let other = database_of(&world, "anchor-1").await;
    other.run(sql!("UPDATE audit_log SET detail = '{\"forged\":1}' WHERE id = 2")).await.unwrap();
    other.run(sql!("UPDATE audit_log SET hash = NULL, prev_hash = NULL WHERE id >= 2")).await.unwrap();
    let round = world.invocation().anchor_pass(10, 2).await.unwrap();
    assert_eq!(round.anchored, 3);
    assert_eq!(round.broken.len(), 1);
    assert_eq!(
        (round.broken[0].0.as_str(), round.broken[0].1.id, round.broken[0].1.reason),
        ("anchor-1", 4, Reason::AnchorMismatch)
    );
    let (_, moved) = world.store().audit_anchor("anchor-0").await.unwrap();
    assert_eq!(moved.map(|a| a.last_id), Some(5));
    let (_, kept) = world.store().audit_anchor("anchor-1").await.unwrap();
    assert_eq!(kept.map(|a| a.last_id), Some(4), "a broken chain's anchor stays");
}
