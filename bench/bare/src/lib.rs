//! The bare Worker of `npm run bench`: what serving `GET /api/projects` costs with no tenancy at
//! all. One static D1 binding (`DB`), no routing, no lookup, no authentication; the same query and
//! the same JSON as tenantry's handler (`src/tenant/projects.rs`), so the difference between the
//! two is exactly what tenantry adds.

use serde::{Deserialize, Serialize};
use worker::{event, Context, Env, Request, Response, Result};

#[derive(Serialize, Deserialize)]
struct Project {
    id: i64,
    name: String,
    description: String,
    created_by: Option<i64>,
    created_at: String,
    updated_at: String,
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    // `?limit=`, as tenantry reads it: 1 to 100, 50 when absent.
    let limit = req
        .url()?
        .query_pairs()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .filter(|n| (1..=100).contains(n))
        .unwrap_or(50);
    let db = env.d1("DB")?;
    let mut rows: Vec<Project> = db
        .prepare(
            "SELECT id, name, description, created_by, created_at, updated_at FROM projects \
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(&[0.into(), (limit + 1).into()])?
        .all()
        .await?
        .results()?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|p| p.id)
    } else {
        None
    };
    Response::from_json(&serde_json::json!({ "projects": rows, "next_cursor": next }))
}
