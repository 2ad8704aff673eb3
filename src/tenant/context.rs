//! What every tenant handler receives: the tenant, its database, the authenticated user and the
//! request id. There is no other way for handler code to reach a tenant database.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, D1Result, Response};

use super::TenantDb;
use crate::core::audit_chain::Anchor;
use crate::core::lifecycle::Plan;
use crate::core::plans::{self, Resource};
use crate::core::slug::TenantSlug;
use crate::core::token::Role;
use crate::http::{self, ApiError};
use crate::store::control::TenantRecord;

/// The authenticated user, as the tenant database has them now (not as the token said).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthUser {
    pub id: i64,
    pub email: String,
    pub role: String,
}

pub struct TenantContext {
    tenant: TenantDb,
    record: TenantRecord,
    user: AuthUser,
    request_id: String,
    /// The request's URL, parsed once by the router.
    url: worker::Url,
    platform: Platform,
    /// An audit statement was made for this request: its rows are sealed after the response.
    audited: Cell<bool>,
}

/// Read-only access to what the platform defines for every tenant (default settings), without
/// exposing the control-plane database itself.
/// (The binding is opened when a handler asks, not on every request.)
pub struct Platform(worker::Env);

impl Platform {
    pub(super) fn new(env: worker::Env) -> Self {
        Self(env)
    }

    /// The control plane's default settings, `{key: value}` (one control-plane query).
    pub async fn settings_defaults(&self) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
        Ok(crate::edge::control(&self.0)?.settings_defaults().await?)
    }

    /// The operator's anchor of this tenant's audit chain, if any (one control-plane query).
    pub async fn audit_anchor(&self, slug: &TenantSlug) -> Result<Option<Anchor>, ApiError> {
        Ok(crate::edge::control(&self.0)?.audit_anchor(slug.as_str()).await?.1)
    }

    /// The Cloudflare API client of this deployment (the export endpoint's).
    pub fn api(&self) -> Result<crate::cloudflare::Client<crate::cloudflare::fetch::FetchTransport>, ApiError> {
        Ok(crate::edge::api_client(&self.0)?.0)
    }
}

impl TenantContext {
    pub(super) fn new(
        tenant: TenantDb,
        record: TenantRecord,
        user: AuthUser,
        request_id: &str,
        url: worker::Url,
        platform: Platform,
    ) -> Self {
        Self { tenant, record, user, request_id: request_id.to_owned(), url, platform, audited: Cell::new(false) }
    }

    /// The request's URL.
    pub fn url(&self) -> &worker::Url {
        &self.url
    }

    /// What the platform defines for every tenant.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// This tenant's database, and only this tenant's.
    pub fn db(&self) -> &D1Database {
        self.tenant.db()
    }

    pub fn slug(&self) -> &TenantSlug {
        self.tenant.slug()
    }

    pub fn plan(&self) -> Plan {
        self.record.plan
    }

    pub fn schema(&self) -> &[String] {
        self.tenant.schema()
    }

    /// The id of the tenant's database (as the control plane names it).
    pub fn database_id(&self) -> Option<&str> {
        self.record.database_id.as_deref()
    }

    /// Forgets user `id` from this isolate's user cache: call after changing or deleting them.
    pub fn forget_user(&self, id: i64) {
        if let Some(db) = &self.record.database_id {
            users::forget(db, id);
        }
    }

    pub fn user(&self) -> &AuthUser {
        &self.user
    }

    pub fn is_admin(&self) -> bool {
        Role::parse(&self.user.role) == Some(Role::Admin)
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden { code: "admin_required", message: "only a tenant admin can do this".into() })
        }
    }

    /// The row with `id` from `select` (`SELECT <columns> FROM <table>`), or `missing()`.
    pub async fn find_by_id<T: serde::de::DeserializeOwned>(
        &self,
        select: &str,
        id: i64,
        missing: fn() -> ApiError,
    ) -> Result<T, ApiError> {
        self.db()
            .prepare(format!("{select} WHERE id = ?1"))
            .bind(&[JsValue::from(id as f64)])?
            .first::<T>(None)
            .await?
            .ok_or_else(missing)
    }

    /// One page of a keyset-paginated read (`?limit=&cursor=`, 50 rows unless asked, at most
    /// `max`; the cursor is the last row's id). `select` is `SELECT <columns> FROM <table>`; rows
    /// come by id, oldest first or, with `newest_first`, newest first.
    pub async fn page<T: serde::de::DeserializeOwned>(
        &self,
        select: &str,
        max: u32,
        newest_first: bool,
        id: impl Fn(&T) -> i64,
    ) -> Result<(Vec<T>, Option<i64>), ApiError> {
        let (limit, cursor) = http::page_params_in(&self.url, 50, max)?;
        let (after, order, start) = if newest_first { ("<", "DESC", i64::MAX) } else { (">", "ASC", 0) };
        let rows: Vec<T> = self
            .db()
            .prepare(format!("{select} WHERE id {after} ?1 ORDER BY id {order} LIMIT ?2"))
            .bind(&[JsValue::from(cursor.unwrap_or(start) as f64), JsValue::from(limit + 1)])?
            .all()
            .await?
            .results()?;
        Ok(http::split_page(rows, limit, id))
    }

    /// The `n` column of a `SELECT count(*) AS n ...` on this tenant's database.
    pub async fn count(&self, sql: &str) -> Result<u64, ApiError> {
        #[derive(Deserialize)]
        struct N {
            n: u64,
        }
        Ok(self.db().prepare(sql).first::<N>(None).await?.map_or(0, |r| r.n))
    }

    /// The 403 for a create that the plan's limit on `resource` refused (decided by the insert
    /// itself), naming the limit and the count now.
    pub async fn plan_limit_reached(&self, resource: Resource) -> Result<ApiError, ApiError> {
        // A limited resource's name is its table's.
        let current = self.count(&format!("SELECT count(*) AS n FROM {}", resource.as_str())).await?;
        let plan = self.plan();
        let reached = plans::check_add(plan, resource, current).err().unwrap_or(plans::LimitReached {
            // Room again by now (a delete since): the refusal stands for the moment it was made.
            plan: plan.as_str(),
            resource: resource.as_str(),
            limit: plans::limit(plan, resource).unwrap_or(u32::MAX),
            current,
        });
        Ok(ApiError::Forbidden { code: "plan_limit_reached", message: reached.to_string() })
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Whether this request made an audit statement (its rows wait to be sealed).
    pub fn audited(&self) -> bool {
        self.audited.get()
    }

    /// An audit row for `action` on `target`, to run in the same batch as the change it records.
    pub fn audit(
        &self,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<D1PreparedStatement, ApiError> {
        self.audited.set(true);
        audit_statement(self.db(), Some(&self.user), action, target, &self.request_id, detail)
    }

    /// An audit row written only if the statement just before it in the same batch changed a
    /// row (SQLite's `changes()`, which D1 keeps across the statements of a batch). A write whose
    /// rule refused it, or whose row is gone, leaves no audit row.
    pub fn audit_if_changed(
        &self,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<D1PreparedStatement, ApiError> {
        self.audited.set(true);
        let [actor_id, actor_email, action, target, request_id, detail] =
            audit_values(Some(&self.user), action, target, &self.request_id, detail);
        Ok(self.db().prepare(format!("{AUDIT_INSERT} SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE changes() > 0")).bind(&[
            actor_id,
            actor_email,
            action,
            target,
            request_id,
            detail,
        ])?)
    }

    /// An audit row for each row `rows` selects (`FROM <table> WHERE <rule>`, taking `params` as
    /// ?1, ?2, ...), its detail the SQL expression `detail` over that row. Put it just before the
    /// statement that deletes those rows under the same rule, in the same batch: both see the same
    /// state, so the row is written exactly when the deletion happens and can still say what was
    /// deleted.
    pub fn audit_rows(
        &self,
        action: &str,
        target: &str,
        detail: &str,
        rows: &str,
        params: &[JsValue],
    ) -> Result<D1PreparedStatement, ApiError> {
        self.audited.set(true);
        let [actor_id, actor_email, action, target, request_id, _] =
            audit_values(Some(&self.user), action, target, &self.request_id, &serde_json::Value::Null);
        let n = params.len();
        let sql = format!(
            "{AUDIT_INSERT} SELECT ?{}, ?{}, ?{}, ?{}, ?{}, {detail} {rows}",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5
        );
        let mut values = params.to_vec();
        values.extend([actor_id, actor_email, action, target, request_id]);
        Ok(self.db().prepare(sql).bind(&values)?)
    }
}

/// The row a batch's statement `index` returned (`... RETURNING`), if it returned one: a
/// conditional write that its rule refused returns none.
pub fn returned<T: serde::de::DeserializeOwned>(results: &[D1Result], index: usize) -> Result<Option<T>, ApiError> {
    let Some(result) = results.get(index) else {
        return Err(ApiError::internal(format!("the batch has no result {index}")));
    };
    Ok(result.results::<T>()?.pop())
}

const AUDIT_INSERT: &str = "INSERT INTO audit_log (actor_id, actor_email, action, target, request_id, detail)";

/// The six values of an audit row, in `AUDIT_INSERT`'s order.
fn audit_values(
    actor: Option<&AuthUser>,
    action: &str,
    target: &str,
    request_id: &str,
    detail: &serde_json::Value,
) -> [JsValue; 6] {
    [
        actor.map_or(JsValue::NULL, |a| JsValue::from(a.id as f64)),
        actor.map_or(JsValue::NULL, |a| JsValue::from_str(&a.email)),
        JsValue::from_str(action),
        JsValue::from_str(target),
        JsValue::from_str(request_id),
        JsValue::from_str(&detail.to_string()),
    ]
}

pub(super) fn audit_statement(
    db: &D1Database,
    actor: Option<&AuthUser>,
    action: &str,
    target: &str,
    request_id: &str,
    detail: &serde_json::Value,
) -> Result<D1PreparedStatement, ApiError> {
    Ok(db
        .prepare(format!("{AUDIT_INSERT} VALUES (?1, ?2, ?3, ?4, ?5, ?6)"))
        .bind(&audit_values(actor, action, target, request_id, detail))?)
}

#[derive(Serialize, Deserialize)]
struct AuditRow {
    id: i64,
    at: String,
    actor_id: Option<i64>,
    actor_email: Option<String>,
    action: String,
    target: Option<String>,
    request_id: String,
    detail: String,
    hash: Option<String>,
}

/// `GET /api/audit-log?limit=&cursor=` (admins): newest first, each entry with its chain hash
/// (`null` until sealed), which a client may keep to check the log against later.
pub async fn audit_log(ctx: &TenantContext) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let select = "SELECT id, at, actor_id, actor_email, action, target, request_id, detail, hash FROM audit_log";
    let (rows, next) = ctx.page(select, 200, true, |r: &AuditRow| r.id).await?;
    let entries: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id, "at": r.at, "actor": { "id": r.actor_id, "email": r.actor_email }, "action": r.action,
                "target": r.target, "request_id": r.request_id,
                "detail": serde_json::from_str::<serde_json::Value>(&r.detail).unwrap_or_default(), "hash": r.hash,
            })
        })
        .collect();
    http::json(200, &serde_json::json!({ "entries": entries, "next_cursor": next }))
}

/// This isolate's cache of authenticated users, keyed by (tenant database id, user id), so an
/// entry can only ever answer for that exact database.
pub(super) mod users {
    use std::cell::RefCell;

    use super::AuthUser;
    use crate::core::cache::TtlCache;
    use crate::store::directory;

    /// How long a user read from a tenant database is trusted by this isolate (the tenant
    /// lookup's window).
    pub const TTL_MS: f64 = directory::TTL_MS;

    type Key = (String, i64);

    thread_local! {
        static USERS: RefCell<TtlCache<Key, AuthUser>> = RefCell::new(TtlCache::new(directory::CAPACITY, TTL_MS));
    }

    pub fn get(key: &Key, now: f64) -> Option<AuthUser> {
        USERS.with(|c| c.borrow_mut().get(key, now))
    }

    pub fn insert(key: Key, user: AuthUser, now: f64) {
        USERS.with(|c| c.borrow_mut().insert(key, user, now));
    }

    /// Forgets a user (after changing or deleting them).
    pub fn forget(database_id: &str, user_id: i64) {
        USERS.with(|c| c.borrow_mut().remove(&(database_id.to_owned(), user_id)));
    }
}
