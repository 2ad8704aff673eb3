//! Scheduled backups, natively: the fan-out over many virtual days against the retention policy,
//! and a pass killed after each of its writes. The restores need D1 import and Time Travel, which
//! the in-memory Cloudflare does not model: they are tested end to end
//! (`tests/e2e/backups.test.mjs`, `tests/e2e/restore-crash.test.mjs`).

use std::time::Duration;

use futures::future::{select, Either};
use tenantry::control::lifecycle::Progress;
use tenantry::core::digest::sha256_hex;
use tenantry::core::lifecycle::TenantStatus;
use tenantry::fake::World;

const DAY: Duration = Duration::from_secs(86_400);
const DAY_MS: i64 = 86_400_000;

async fn active(world: &World, slugs: &[&str]) {
    for slug in slugs {
        let op = world.request_create(slug).await;
        let mut progress = world.invocation().run(&op).await.unwrap();
        while progress != Progress::Finished {
            progress = world.invocation().run(&op).await.unwrap();
        }
        assert_eq!(world.store().tenant(slug).await.unwrap().unwrap().status, TenantStatus::Active);
    }
}

/// Every backup row names an object that holds exactly what was verified; with `no_strays`, no
/// object of the tenant is without a row either.
async fn intact(world: &World, slug: &str, no_strays: bool) -> usize {
    let rows = world.store().backups_of(slug, None).await.unwrap();
    for row in &rows {
        let bytes = world.backups.get(&row.object_key).unwrap_or_else(|| panic!("{} has no object", row.object_key));
        assert_eq!((bytes.len() as i64, sha256_hex(&bytes)), (row.bytes, row.sha256.clone()), "{}", row.object_key);
    }
    if no_strays {
        let objects = world.backups.keys().into_iter().filter(|k| k.starts_with(&format!("{slug}/"))).count();
        assert_eq!(objects, rows.len(), "objects of {slug} without a row");
    }
    rows.len()
}

#[tokio::test(start_paused = true)]
async fn ten_weeks_of_daily_backups_keep_the_retention_policy_and_every_kept_backup_is_intact() {
    let world = World::new(3).await;
    active(&world, &["acme", "globex", "initech"]).await;
    let mut taken = 0;
    for _day in 0..70 {
        tokio::time::sleep(DAY + Duration::from_secs(60)).await;
        let lc = world.invocation();
        let pass = lc.backup_pass(25, 2, lc.now_ms() as i64 - DAY_MS, None).await.unwrap();
        assert!(pass.failed.is_empty(), "{:?}", pass.failed);
        assert_eq!(pass.remaining, 0);
        taken += pass.succeeded;
    }
    // The virtual clock starts before the rows' real creation time: the first day is not due.
    assert!(taken >= 3 * 68, "{taken} backups taken");
    let now = 1_795_392_000_000 + 70 * (DAY_MS + 60_000);
    for slug in ["acme", "globex", "initech"] {
        let rows = world.store().backups_of(slug, Some("scheduled")).await.unwrap();
        // The default policy (daily=7, weekly=8): the last 7 days' (7 or 8 backups), plus the
        // newest of each of the 8 weeks counted back from this one (some of them among the daily).
        assert!((13..=16).contains(&rows.len()), "{slug} keeps {} backups", rows.len());
        let daily = rows.iter().filter(|b| b.taken_at >= now - 7 * DAY_MS).count();
        assert!((7..=8).contains(&daily), "{slug}: {daily} in the last 7 days");
        let oldest = rows.iter().map(|b| b.taken_at).min().unwrap();
        assert!(now - oldest < 9 * 7 * DAY_MS, "{slug} keeps one from {} days ago", (now - oldest) / DAY_MS);
        assert_eq!(intact(&world, slug, true).await, rows.len());
    }
    assert_eq!(world.violations().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_backup_pass_killed_after_each_of_its_writes_leaves_only_verified_backups_and_strays_are_swept() {
    let world = World::new(5).await;
    let slugs = ["acme", "globex", "initech"];
    active(&world, &slugs).await;
    tokio::time::sleep(2 * DAY).await;
    let mut crashes = 0;
    for k in 1.. {
        world.crash.arm(k);
        let lc = world.invocation();
        let pass = std::pin::pin!(lc.backup_pass(25, 2, lc.now_ms() as i64, None));
        let crashed = std::pin::pin!(world.crash.wait());
        let died = matches!(select(pass, crashed).await, Either::Right(_));
        world.crash.disarm();
        for slug in slugs {
            intact(&world, slug, false).await;
        }
        if !died {
            break;
        }
        crashes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A pass writes per tenant an object, then its row and the tenant's place in one batch: 3
    // tenants, 6 writes (more once there is something to prune).
    assert!(crashes >= 6, "crashed after {crashes} writes only");
    // Objects stored by a pass that died before recording them are swept by the tenant's next
    // backup once they are an hour old.
    tokio::time::sleep(Duration::from_secs(3_700)).await;
    let lc = world.invocation();
    let pass = lc.backup_pass(25, 2, lc.now_ms() as i64, None).await.unwrap();
    assert_eq!(pass.succeeded, 3);
    for slug in slugs {
        assert!(intact(&world, slug, true).await >= 1);
    }
    assert_eq!(world.violations().await, Vec::<String>::new());
}
