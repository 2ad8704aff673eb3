//! The storage layer's pieces on in-memory SQLite: the one migration runner and a tenant
//! database as the platform sees it (stamp, schema, role sync).

use serde::Deserialize;
use tenantry::core::migrations::{self, Migration};
use tenantry::core::roles::RoleSpec;
use tenantry::core::slug::TenantSlug;
use tenantry::fake::MemorySql;
use tenantry::sql;
use tenantry::store::control::ControlStore;
use tenantry::store::migrate::{applied, apply_pending};
use tenantry::store::sql::{Sql, Statement};
use tenantry::store::tenant_db::{prepare, sync_roles, NotReady, PrepareError, TenantDb};

const SET: &[Migration] = &[
    Migration { name: "0001_a.sql", sql: "CREATE TABLE a (x INTEGER);" },
    Migration { name: "0002_b.sql", sql: "CREATE TABLE b (y INTEGER);\nINSERT INTO a (x) VALUES (1);" },
];

#[tokio::test]
async fn applies_in_order_once_and_reports_the_version() {
    let db = MemorySql::new();
    assert_eq!(applied(&db).await.unwrap(), Vec::<String>::new(), "no ledger yet reads as empty");
    assert_eq!(apply_pending(&db, &SET[..1]).await.unwrap(), 1);
    assert_eq!(apply_pending(&db, SET).await.unwrap(), 2);
    assert_eq!(apply_pending(&db, SET).await.unwrap(), 2, "nothing left to apply");
    assert_eq!(applied(&db).await.unwrap(), vec!["0001_a.sql", "0002_b.sql"]);
    let rows: Vec<serde_json::Value> = db.all(Statement::new("SELECT x FROM a")).await.unwrap();
    assert_eq!(rows.len(), 1, "the data statement ran once");
}

#[tokio::test]
async fn a_failing_migration_leaves_the_database_at_the_last_whole_one() {
    let db = MemorySql::new();
    let bad = [SET[0], Migration { name: "0002_bad.sql", sql: "CREATE TABLE c (z);\nINSERT INTO nowhere VALUES (1);" }];
    let err = apply_pending(&db, &bad).await.unwrap_err();
    assert_eq!((err.version, err.migration.as_str()), (1, "0002_bad.sql"));
    assert!(err.message.contains("nowhere"), "{err}");
    // Table c was rolled back with its migration.
    assert_eq!(applied(&db).await.unwrap(), vec!["0001_a.sql"]);
    assert!(db.run(Statement::new("SELECT * FROM c")).await.is_err());
}

#[tokio::test]
async fn a_ledger_from_newer_code_is_refused() {
    let db = MemorySql::new();
    apply_pending(&db, SET).await.unwrap();
    let err = apply_pending(&db, &SET[..1]).await.unwrap_err();
    assert_eq!(err.migration, "0002_b.sql");
}

#[test]
fn the_control_and_tenant_sets_apply_to_a_fresh_database() {
    futures::executor::block_on(async {
        for set in [migrations::CONTROL, migrations::TENANT] {
            let db = MemorySql::new();
            assert_eq!(apply_pending(&db, set).await.unwrap(), set.len());
        }
    });
}

fn slug(s: &str) -> TenantSlug {
    TenantSlug::parse(s).unwrap()
}

async fn control() -> ControlStore<MemorySql> {
    let db = MemorySql::new();
    apply_pending(&db, migrations::CONTROL).await.unwrap();
    ControlStore::new(db)
}

#[tokio::test]
async fn a_prepared_database_opens_for_its_tenant_only() {
    let db = MemorySql::new();
    assert_eq!(prepare(&db, &slug("acme")).await.unwrap(), migrations::TENANT.len());
    assert_eq!(prepare(&db, &slug("acme")).await.unwrap(), migrations::TENANT.len(), "idempotent");
    assert_eq!(prepare(&db, &slug("globex")).await.unwrap_err(), PrepareError::StampedForAnother("acme".into()));
    let control = control().await;
    let open = TenantDb::open(db.clone(), slug("acme"), &control).await.unwrap();
    assert_eq!(open.schema().len(), migrations::TENANT.len());
    let wrong = TenantDb::open(db, slug("globex"), &control).await.err().unwrap();
    assert_eq!(wrong, NotReady::Stamped { found: Some("acme".into()) });
}

#[tokio::test]
async fn an_unprepared_database_is_not_served() {
    let control = control().await;
    assert!(matches!(
        TenantDb::open(MemorySql::new(), slug("acme"), &control).await.err().unwrap(),
        NotReady::Unreachable(_)
    ));
}

#[tokio::test]
async fn role_sync_keeps_the_tenants_own_roles() {
    let db = MemorySql::new();
    prepare(&db, &slug("acme")).await.unwrap();
    db.run(sql!("INSERT INTO roles (name, description, permissions, is_system) VALUES ('auditor', 'ours', '[]', 0)"))
        .await
        .unwrap();
    let role = |name: &str| RoleSpec { name: name.into(), description: "platform".into(), permissions: vec![] };
    sync_roles(&db, &[role("auditor"), role("billing")]).await.unwrap();
    #[derive(Deserialize, Debug, PartialEq)]
    struct Row {
        name: String,
        description: String,
    }
    let rows: Vec<Row> = db
        .all(sql!("SELECT name, description FROM roles WHERE name IN ('auditor', 'billing') ORDER BY name"))
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            Row { name: "auditor".into(), description: "ours".into() },
            Row { name: "billing".into(), description: "platform".into() }
        ]
    );
    sync_roles(&db, &[]).await.unwrap();
    let left: Vec<Row> =
        db.all(sql!("SELECT name, description FROM roles WHERE name IN ('auditor', 'billing')")).await.unwrap();
    assert_eq!(left.len(), 1, "only the platform's role went");
}

/// Usage from several isolates, flushed in any order (one failing and put back, one arriving
/// after the month turned), adds up exactly: per day, per month, and on the tenant's running
/// month, which a late flush of the month before never resets.
#[tokio::test]
async fn usage_flushes_add_up_across_isolates_days_and_months() {
    use tenantry::core::usage::{Counters, UsageBuffer};
    let control = control().await;
    control
        .sql()
        .run(sql!("INSERT INTO tenants (slug, display_name, status, database_name, binding_name) VALUES ('acme', 'A', 'active', 'tenantry-acme', 'TENANT_ACME')"))
        .await
        .unwrap();
    // 2026-11-30T23:59:59Z and a second later (December).
    let nov = 1_796_083_199_000.0;
    let dec = nov + 1_000.0;
    let req = |rows_read: u64, size: Option<u64>| Counters {
        requests: 1,
        rows_read,
        size_bytes: size,
        ..Counters::default()
    };
    let (mut a, mut b, mut c) = (UsageBuffer::new(), UsageBuffer::new(), UsageBuffer::new());
    for i in 0..30 {
        a.record("acme", nov - 60_000.0 + f64::from(i), &req(2, Some(1_000)));
    }
    for i in 0..20 {
        b.record("acme", dec + f64::from(i), &req(3, Some(2_000)));
    }
    c.record("acme", nov, &req(1, None));
    c.record("acme", dec, &Counters { limited: 1, ..Counters::default() });

    // b flushes December first; a's first flush fails and is put back; c (both months) and a land.
    let from_b = b.take(dec);
    control.record_usage(&from_b).await.unwrap();
    assert!(!b.flushed(from_b, true, dec));
    let from_a = a.take(dec);
    assert!(a.flushed(from_a, false, dec), "put back and scheduled again");
    let from_c = c.take(dec);
    control.record_usage(&from_c).await.unwrap();
    let from_a = a.take(dec + 10_000.0);
    assert_eq!(from_a.len(), 1);
    control.record_usage(&from_a).await.unwrap();

    let days = control.usage_days("acme", "2026-11-01", "2026-12-31").await.unwrap();
    let view: Vec<(String, i64, i64, i64, Option<i64>)> =
        days.iter().map(|d| (d.period.clone(), d.requests, d.rate_limited, d.rows_read, d.size_bytes)).collect();
    assert_eq!(
        view,
        [("2026-11-30".to_owned(), 31, 0, 61, Some(1_000)), ("2026-12-01".to_owned(), 20, 1, 60, Some(2_000))]
    );
    let months = control.usage_months("acme", "2026-11-01", "2026-12-31").await.unwrap();
    assert_eq!(
        months.iter().map(|m| (m.period.as_str(), m.requests)).collect::<Vec<_>>(),
        [("2026-11", 31), ("2026-12", 20)]
    );
    let t = control.tenant("acme").await.unwrap().unwrap();
    assert_eq!(
        (t.terms.usage_month.as_deref(), t.terms.month_requests),
        (Some("2026-12"), 20),
        "November's late counts stay in November"
    );
    let (tenants, totals) = control.fleet_usage("2026-12").await.unwrap();
    assert_eq!((tenants, totals.requests, totals.rate_limited), (1, 20, 1));
}
