//! What each plan allows: how many users and projects (decided in the write's own statement),
//! its rate limits (the Workers Rate Limiting bindings named here, declared in `wrangler.toml`),
//! its monthly API calls and storage (quotas, checked against metered usage), and the decision
//! to allow one more write.

use serde::{Deserialize, Serialize};

use super::lifecycle::Plan;

/// A resource a plan limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Users,
    Projects,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Projects => "projects",
        }
    }
}

/// `None` means unlimited.
pub fn limit(plan: Plan, resource: Resource) -> Option<u32> {
    match (plan, resource) {
        (Plan::Free, Resource::Users) => Some(5),
        (Plan::Free, Resource::Projects) => Some(3),
        (Plan::Pro, Resource::Users) => Some(100),
        (Plan::Pro, Resource::Projects) => Some(50),
        (Plan::Enterprise, _) => None,
    }
}

/// Refusal to add one more `resource`: names the plan and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {plan} plan allows {limit} {resource}; this tenant has {current}")]
pub struct LimitReached {
    pub plan: &'static str,
    pub resource: &'static str,
    pub limit: u32,
    pub current: u64,
}

/// May a tenant on `plan` that has `current` of `resource` add one more?
pub fn check_add(plan: Plan, resource: Resource, current: u64) -> Result<(), LimitReached> {
    match limit(plan, resource) {
        Some(limit) if current >= u64::from(limit) => {
            Err(LimitReached { plan: plan.as_str(), resource: resource.as_str(), limit, current })
        }
        _ => Ok(()),
    }
}

/// The rate limits, each a Rate Limiting binding of the main Worker (`[[ratelimits]]` in
/// `wrangler.toml`, where its `limit` and `period` are set: a binding's limit is fixed). A test
/// checks `wrangler.toml` declares exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Every request to a tenant, keyed by tenant: the binding of the tenant's plan.
    Tenant(Plan),
    /// Writes (POST, PATCH, PUT, DELETE) keyed by tenant and user.
    UserWrites,
    /// Sign-in attempts keyed by tenant and client IP.
    LoginIp,
    /// Sign-in attempts keyed by tenant and email.
    LoginEmail,
}

impl RateLimit {
    pub const ALL: [RateLimit; 6] = [
        Self::Tenant(Plan::Free),
        Self::Tenant(Plan::Pro),
        Self::Tenant(Plan::Enterprise),
        Self::UserWrites,
        Self::LoginIp,
        Self::LoginEmail,
    ];

    /// The binding's name.
    pub fn binding(self) -> &'static str {
        match self {
            Self::Tenant(Plan::Free) => "RATE_LIMIT_FREE",
            Self::Tenant(Plan::Pro) => "RATE_LIMIT_PRO",
            Self::Tenant(Plan::Enterprise) => "RATE_LIMIT_ENTERPRISE",
            Self::UserWrites => "RATE_LIMIT_WRITES",
            Self::LoginIp => "RATE_LIMIT_LOGIN_IP",
            Self::LoginEmail => "RATE_LIMIT_LOGIN_EMAIL",
        }
    }

    /// Requests allowed per period, and the period in seconds (10 or 60, the binding's choices).
    pub fn allowance(self) -> (u32, u32) {
        match self {
            Self::Tenant(Plan::Free) => (1_200, 60),
            Self::Tenant(Plan::Pro) => (12_000, 60),
            Self::Tenant(Plan::Enterprise) => (600_000, 60),
            Self::UserWrites => (300, 60),
            Self::LoginIp => (300, 60),
            Self::LoginEmail => (60, 60),
        }
    }

    /// The name a refusal gives the limit (the JSON error's `limit`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tenant(_) => "tenant_requests",
            Self::UserWrites => "user_writes",
            Self::LoginIp => "login_per_ip",
            Self::LoginEmail => "login_per_email",
        }
    }

    /// The key this limit counts `subject` under within tenant `slug`.
    pub fn key(self, slug: &str, subject: &str) -> String {
        match self {
            Self::Tenant(_) => format!("t:{slug}"),
            Self::UserWrites => format!("w:{slug}:{subject}"),
            Self::LoginIp => format!("ip:{slug}:{subject}"),
            Self::LoginEmail => format!("e:{slug}:{}", subject.to_lowercase()),
        }
    }
}

/// A plan's monthly API calls and storage; `None` is unlimited. A tenant may carry its own
/// (`quotas` on the admin API), field by field over its plan's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_calls_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
}

impl Quotas {
    pub fn of(plan: Plan) -> Quotas {
        const MB: u64 = 1_000_000;
        match plan {
            Plan::Free => Quotas { api_calls_per_month: Some(100_000), storage_bytes: Some(100 * MB) },
            Plan::Pro => Quotas { api_calls_per_month: Some(5_000_000), storage_bytes: Some(2_000 * MB) },
            Plan::Enterprise => Quotas { api_calls_per_month: None, storage_bytes: None },
        }
    }

    /// `plan`'s quotas with the tenant's own (`overrides`, JSON) over them, field by field.
    pub fn effective(plan: Plan, overrides: Option<&str>) -> Quotas {
        let base = Self::of(plan);
        let Some(own) = overrides.and_then(|o| serde_json::from_str::<Quotas>(o).ok()) else { return base };
        Quotas {
            api_calls_per_month: own.api_calls_per_month.or(base.api_calls_per_month),
            storage_bytes: own.storage_bytes.or(base.storage_bytes),
        }
    }
}

/// What a write asks for, as quotas see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// POST, PUT, PATCH: may add data.
    Grow,
    /// DELETE: frees storage, so it is allowed past the storage quota.
    Shrink,
}

/// Why a write is refused by the plan's term or quotas (402).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    #[error("this tenant's plan expired at {at}; reads still work, writes need a renewed plan")]
    PlanExpired { at: String },
    #[error("this tenant has used its {limit} API calls for {month}; reads still work until the month ends")]
    ApiCalls { limit: u64, used: u64, month: String },
    #[error(
        "this tenant's database holds {used} bytes, over its {limit} bytes of storage; delete data or change plan"
    )]
    Storage { limit: u64, used: u64 },
}

impl QuotaRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::PlanExpired { .. } => "plan_expired",
            Self::ApiCalls { .. } => "api_call_quota_exceeded",
            Self::Storage { .. } => "storage_quota_exceeded",
        }
    }
}

/// What quotas know of a tenant when a write comes in.
#[derive(Debug, Clone, Default)]
pub struct Standing<'a> {
    /// Milliseconds since the epoch, when the plan ends (`None`: it does not).
    pub plan_expires_ms: Option<f64>,
    pub plan_expires_at: Option<&'a str>,
    /// API calls counted this month (control plane plus this isolate's unflushed).
    pub month_requests: u64,
    pub month: &'a str,
    /// The database's size as last metered.
    pub size_bytes: Option<u64>,
}

/// May a write of `kind` go ahead at `now`? Reads are never asked: they are kept past every quota.
pub fn check_write(quotas: Quotas, standing: &Standing<'_>, kind: WriteKind, now: f64) -> Result<(), QuotaRefusal> {
    if let Some(end) = standing.plan_expires_ms {
        if now >= end {
            return Err(QuotaRefusal::PlanExpired { at: standing.plan_expires_at.unwrap_or_default().to_owned() });
        }
    }
    if let Some(limit) = quotas.api_calls_per_month {
        if standing.month_requests >= limit {
            return Err(QuotaRefusal::ApiCalls { limit, used: standing.month_requests, month: standing.month.into() });
        }
    }
    if let (Some(limit), Some(used), WriteKind::Grow) = (quotas.storage_bytes, standing.size_bytes, kind) {
        if used >= limit {
            return Err(QuotaRefusal::Storage { limit, used });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrangler_toml_declares_every_rate_limit_as_documented() {
        let toml = include_str!("../../wrangler.toml");
        let blocks: Vec<&str> = toml.split("[[ratelimits]]").skip(1).collect();
        assert_eq!(blocks.len(), RateLimit::ALL.len());
        for limit in RateLimit::ALL {
            let (n, period) = limit.allowance();
            let block = blocks
                .iter()
                .find(|b| b.contains(&format!("name = \"{}\"", limit.binding())))
                .unwrap_or_else(|| panic!("wrangler.toml has no [[ratelimits]] named {}", limit.binding()));
            assert!(
                block.contains(&format!("simple = {{ limit = {n}, period = {period} }}")),
                "{} in wrangler.toml is not {n} per {period} s",
                limit.binding()
            );
            assert!([10, 60].contains(&period));
        }
    }

    #[test]
    fn rate_limit_keys_are_per_tenant() {
        assert_eq!(RateLimit::Tenant(Plan::Pro).key("acme", "ignored"), "t:acme");
        assert_eq!(RateLimit::UserWrites.key("acme", "7"), "w:acme:7");
        assert_eq!(RateLimit::LoginEmail.key("acme", "Ann@X.test"), "e:acme:ann@x.test");
        assert_ne!(RateLimit::LoginIp.key("acme", "1.2.3.4"), RateLimit::LoginIp.key("globex", "1.2.3.4"));
    }

    #[test]
    fn quotas_decide_writes() {
        let free = Quotas::of(Plan::Free);
        let month = "2026-11";
        let ok = Standing { month, ..Standing::default() };
        assert_eq!(check_write(free, &ok, WriteKind::Grow, 0.0), Ok(()));
        let expired = Standing { plan_expires_ms: Some(1_000.0), plan_expires_at: Some("then"), ..ok.clone() };
        assert_eq!(check_write(free, &expired, WriteKind::Grow, 999.0), Ok(()));
        let e = check_write(free, &expired, WriteKind::Shrink, 1_000.0).unwrap_err();
        assert_eq!(e.code(), "plan_expired");
        let busy = Standing { month_requests: 100_000, ..ok.clone() };
        assert_eq!(check_write(free, &busy, WriteKind::Shrink, 0.0).unwrap_err().code(), "api_call_quota_exceeded");
        let below = Standing { month_requests: 99_999, ..ok.clone() };
        assert_eq!(check_write(free, &below, WriteKind::Grow, 0.0), Ok(()));
        let full = Standing { size_bytes: Some(100_000_000), ..ok.clone() };
        assert_eq!(check_write(free, &full, WriteKind::Grow, 0.0).unwrap_err().code(), "storage_quota_exceeded");
        assert_eq!(check_write(free, &full, WriteKind::Shrink, 0.0), Ok(()), "deleting is how one gets back under");
        let enterprise = Quotas::of(Plan::Enterprise);
        let huge = Standing { month_requests: u64::MAX, size_bytes: Some(u64::MAX), ..ok };
        assert_eq!(check_write(enterprise, &huge, WriteKind::Grow, 0.0), Ok(()));
    }

    #[test]
    fn a_tenant_s_own_quotas_override_its_plan_s_field_by_field() {
        let q = Quotas::effective(Plan::Free, Some(r#"{"api_calls_per_month": 5}"#));
        assert_eq!(q.api_calls_per_month, Some(5));
        assert_eq!(q.storage_bytes, Quotas::of(Plan::Free).storage_bytes);
        assert_eq!(Quotas::effective(Plan::Pro, None), Quotas::of(Plan::Pro));
        assert_eq!(Quotas::effective(Plan::Pro, Some("not json")), Quotas::of(Plan::Pro));
    }

    #[test]
    fn limits_table() {
        let cases = [
            (Plan::Free, Resource::Users, 4, true),
            (Plan::Free, Resource::Users, 5, false),
            (Plan::Free, Resource::Projects, 2, true),
            (Plan::Free, Resource::Projects, 3, false),
            (Plan::Pro, Resource::Users, 99, true),
            (Plan::Pro, Resource::Users, 100, false),
            (Plan::Pro, Resource::Projects, 49, true),
            (Plan::Pro, Resource::Projects, 50, false),
            (Plan::Enterprise, Resource::Users, 1_000_000, true),
            (Plan::Enterprise, Resource::Projects, u64::MAX, true),
        ];
        for (plan, resource, current, allowed) in cases {
            assert_eq!(check_add(plan, resource, current).is_ok(), allowed, "{plan:?} {resource:?} {current}");
        }
    }

    #[test]
    fn the_refusal_names_the_limit() {
        let e = check_add(Plan::Free, Resource::Projects, 3).unwrap_err();
        assert_eq!(e.to_string(), "the free plan allows 3 projects; this tenant has 3");
        assert_eq!((e.resource, e.limit), ("projects", 3));
    }
}
