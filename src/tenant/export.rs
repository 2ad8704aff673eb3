//! `GET /api/export`: the tenant's whole database as a SQL download, for its admins, audited.
//!
//! It is D1's own export (the REST API's polling export), so it is a consistent snapshot in the
//! format a restore imports. D1 does not serve the database's queries while an export runs: that
//! is as long as the tenant's other requests wait, no longer (the dump is streamed from D1's
//! download URL to the client without being held by the Worker).

use worker::{Fetch, Response, Url};

use super::context::TenantContext;
use crate::http::ApiError;

/// Export polls before answering 503 (the client tries again; the export keeps running).
const POLLS: u32 = 20;

pub async fn export(ctx: &TenantContext) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let Some(id) = ctx.database_id() else {
        return Err(ApiError::tenant_unavailable());
    };
    let api = ctx.platform().api()?;
    let unavailable = |message: String| ApiError::Unavailable { code: "export_unavailable", message, retry_after: 5 };
    let url = api
        .export_url(id, POLLS)
        .await
        .map_err(|e| unavailable(format!("the export failed: {e}")))?
        .map_err(|reason| unavailable(format!("{reason}; retry shortly")))?;
    let url = Url::parse(&url).map_err(ApiError::internal)?;
    let download = Fetch::Url(url).send().await?;
    if download.status_code() != 200 {
        return Err(unavailable(format!("the export's download answered HTTP {}", download.status_code())));
    }
    ctx.audit("tenant.export", ctx.slug().as_str(), &serde_json::json!({ "database_id": id }))?.run().await?;
    let mut response = Response::from_body(download.body().clone())?;
    let headers = response.headers_mut();
    headers.set("Content-Type", "application/sql")?;
    headers.set("Content-Disposition", &format!("attachment; filename=\"{}.sql\"", ctx.slug()))?;
    headers.set("Cache-Control", "no-store")?;
    Ok(response)
}
