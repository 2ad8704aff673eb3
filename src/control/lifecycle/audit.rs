//! The scheduled anchoring of tenants' audit chains: each cron pass takes the next few active
//! tenants (by slug, from where the last pass stopped, so the whole fleet comes round in turn),
//! seals their unsealed audit rows, verifies the rows written since their anchor (from the anchor
//! on: the anchored row must still hold the anchored hash), and moves the anchor to the head it
//! verified. A broken chain is logged and its anchor left where it was; the operator's
//! `GET /v1/tenants/{slug}/audit/verify` says where and why.

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::{home, Lifecycle, LifecycleError, Result};
use crate::core::audit_chain::{self, Broken};
use crate::core::lifecycle::TenantStatus;
use crate::core::slug::TenantSlug;
use crate::log;
use crate::store::audit;
use crate::store::control::TenantRow;
use crate::store::ports::Platform;

/// Tenants a scheduled pass anchors.
pub const ANCHORS_PER_PASS: u32 = 25;
/// Rows verified per tenant per pass (the rest waits for the next pass: the anchor stays).
const ROWS_PER_TENANT: u32 = 5_000;
/// Sealing passes per tenant first.
const SEAL_PASSES: u32 = 5;

/// What an anchoring pass did.
#[derive(Debug, Default, Serialize)]
pub struct AnchorPass {
    pub anchored: u32,
    /// Tenants whose chain is broken: the slug and the first broken link.
    pub broken: Vec<(String, Broken)>,
    /// Tenants that could not be checked now (their database unreachable, ...).
    pub failed: u32,
    /// The pass stopped before the end of the fleet; the next one continues.
    pub more: bool,
}

enum Outcome {
    Anchored,
    Broken(Broken),
}

impl<P: Platform> Lifecycle<P> {
    /// Anchors up to `limit` active tenants' audit chains after the last pass's cursor,
    /// `concurrency` at a time, and moves the cursor on (back to the start at the end of the
    /// fleet).
    pub async fn anchor_pass(&self, limit: u32, concurrency: usize) -> Result<AnchorPass> {
        let cursor = self.store.platform_value("audit_anchor_cursor").await?.unwrap_or_default();
        let mut tenants = self.store.list_tenants(Some(TenantStatus::Active), &cursor, limit + 1).await?;
        let more = tenants.len() > limit as usize;
        tenants.truncate(limit as usize);
        let next = if more { tenants.last().map(|t| t.slug.clone()) } else { None };
        let outcomes: Vec<(String, Result<Outcome>)> =
            stream::iter(tenants.iter().map(|t| async move { (t.slug.clone(), self.anchor_one(t).await) }))
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        let mut pass = AnchorPass { more, ..AnchorPass::default() };
        for (slug, outcome) in outcomes {
            match outcome {
                Ok(Outcome::Anchored) => pass.anchored += 1,
                Ok(Outcome::Broken(broken)) => {
                    log::error(&format!(
                        "tenant {slug}: its audit chain is broken at row {} ({:?}): {}",
                        broken.id, broken.reason, broken.message
                    ));
                    pass.broken.push((slug, broken));
                }
                Err(e) => {
                    log::warn(&format!(
                        "tenant {slug}: anchoring its audit chain failed (the next round retries): {e}"
                    ));
                    pass.failed += 1;
                }
            }
        }
        self.store.set_platform_value("audit_anchor_cursor", next.as_deref()).await?;
        Ok(pass)
    }

    /// Seals, verifies from the anchor on, and records the new head (or the same anchor again,
    /// when nothing was written since). A tenant being restored is skipped (its anchor is not
    /// recorded while a restore runs anyway).
    async fn anchor_one(&self, tenant: &TenantRow) -> Result<Outcome> {
        let (Some(database_id), None) = (&tenant.database_id, &tenant.restoring) else {
            return Ok(Outcome::Anchored);
        };
        let slug = TenantSlug::parse(&tenant.slug).map_err(|e| LifecycleError::Permanent(e.to_string()))?;
        let db = self
            .tenant_database(home(tenant), &slug)
            .ok_or_else(|| LifecycleError::Permanent(format!("tenant {slug} is not bound here")))?;
        let (began, anchor) = self.store.audit_anchor(slug.as_str()).await?;
        let genesis = audit_chain::genesis(slug.as_str());
        audit::seal(&db, &genesis, SEAL_PASSES).await.map_err(LifecycleError::TenantDatabase)?;
        // From the anchored row on, unless a restore since then makes the log start anew.
        let cursor = anchor.as_ref().filter(|a| !a.restored_since).map(|a| a.last_id);
        let report = audit::verify(&db, &genesis, cursor, ROWS_PER_TENANT, anchor.as_ref())
            .await
            .map_err(LifecycleError::TenantDatabase)?;
        if let Some(broken) = report.first_broken {
            return Ok(Outcome::Broken(broken));
        }
        // The page's last good row: the whole log when it fitted, else as far as this pass got.
        let head = report.page_head.or_else(|| anchor.filter(|a| !a.restored_since).map(|a| (a.last_id, a.hash)));
        if let Some((last_id, hash)) = head {
            self.store.record_audit_anchor(slug.as_str(), database_id, last_id, &hash, &began).await?;
        }
        Ok(Outcome::Anchored)
    }
}
