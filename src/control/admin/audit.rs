//! `GET /v1/tenants/{slug}/audit/verify`: the operator's verification of a tenant's audit chain.
//!
//! It opens the tenant's database as the request path does (through its binding, checked to be
//! stamped for the tenant and at this Worker's schema), seals what is unsealed, verifies a page,
//! checks the anchor the last verification recorded, and, when the page reached the end of the
//! log with nothing broken, records the head it verified as the new anchor in the control plane
//! (`audit_anchors`), out of the tenant database's reach.

use serde_json::json;
use worker::{Env, Request, Response};

use super::not_found;
use crate::core::audit_chain;
use crate::core::lifecycle::TenantStatus;
use crate::core::names::BindingName;
use crate::core::slug::TenantSlug;
use crate::edge;
use crate::http::{self, ApiError};
use crate::store::audit;
use crate::store::ports::Home;
use crate::store::tenant_db::{NotReady, TenantDb};

/// Passes of sealing before a verification (as the tenant's own endpoint).
const VERIFY_PASSES: u32 = 10;

pub(super) async fn verify(req: &Request, env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let (limit, cursor) = http::page_params(req, 1_000, 5_000)?;
    let control = edge::control(env)?;
    let record = control.tenant_record(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    if !matches!(record.status, TenantStatus::Active | TenantStatus::Suspended) {
        return Err(ApiError::Conflict {
            code: "tenant_not_in_service",
            message: format!(
                "tenant `{slug}` is {}; only a tenant in service has an audit log to verify",
                record.status
            ),
        });
    }
    if record.restoring.is_some() {
        return Err(ApiError::Unavailable {
            code: "tenant_restoring",
            message: format!("tenant `{slug}` is being restored; verify its audit log once the restore is done"),
            retry_after: 10,
        });
    }
    let database_id = record.database_id.clone().ok_or_else(ApiError::tenant_unavailable)?;
    let (began, anchor) = control.audit_anchor(slug.as_str()).await?;
    let binding = BindingName::for_tenant(slug);
    let db = edge::tenant_binding(env, Home::of(record.host.as_deref()), &binding).ok_or_else(|| {
        ApiError::tenant_unavailable().inspect_log(&format!("audit verify: tenant {slug} has no binding {binding}"))
    })?;
    let tenant = TenantDb::open(db, slug.clone(), &control).await.map_err(|e| match e {
        NotReady::Stamped { .. } => ApiError::internal(format!("audit verify of {slug}: {e}")),
        e => ApiError::tenant_unavailable().inspect_log(&format!("audit verify of {slug}: {e}")),
    })?;
    let genesis = audit_chain::genesis(slug.as_str());
    audit::seal(tenant.db(), &genesis, VERIFY_PASSES).await?;
    let report = audit::verify(tenant.db(), &genesis, cursor, limit, anchor.as_ref()).await?;
    let mut anchored = None;
    if let Some((last_id, hash)) = &report.head {
        if control.record_audit_anchor(slug.as_str(), &database_id, *last_id, hash, &began).await? {
            anchored = Some(json!({ "last_id": last_id, "hash": hash }));
        }
    }
    let mut body = serde_json::to_value(&report).map_err(ApiError::internal)?;
    if let Some(fields) = body.as_object_mut() {
        fields.insert("tenant".into(), json!(slug.as_str()));
        fields.insert("anchored".into(), anchored.unwrap_or_default());
    }
    http::json(200, &body)
}
