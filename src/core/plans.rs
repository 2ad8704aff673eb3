//! What each plan allows, and the decision to allow one more.

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

#[cfg(test)]
mod tests {
    use super::*;

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
