//! The sagas' one error type, apart from the HTTP one: the admin API maps it to a response.

use crate::cloudflare::CfError;
use crate::http::ApiError;
use crate::store::ports::BackupError;
use crate::store::sql::SqlError;

/// Why a step (or the runner around it) failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The Cloudflare API, after the client's retries.
    #[error("{0}")]
    Cloudflare(#[from] CfError),
    /// The control plane's database.
    #[error("control plane: {0}")]
    Store(#[from] SqlError),
    /// A tenant's own database (over the REST API, or its binding).
    #[error("tenant database: {0}")]
    TenantDatabase(SqlError),
    #[error("{0}")]
    Backups(#[from] BackupError),
    /// Trying again cannot help (a database stamped for another tenant, a seed without its
    /// password hash, ...).
    #[error("{0}")]
    Permanent(String),
}

impl LifecycleError {
    /// Whether trying again later may succeed: the operation then stays open.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Cloudflare(e) => e.is_transient(),
            // Control-plane D1 or R2 trouble: worth trying again later.
            Self::Store(_) | Self::Backups(_) => true,
            Self::TenantDatabase(e) => e.unreachable,
            Self::Permanent(_) => false,
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Store(e) => ApiError::internal(format!("control plane: {e}")),
            other => ApiError::Unavailable {
                code: "cloudflare_api_unavailable",
                message: "the Cloudflare API could not be reached; retry shortly".into(),
                retry_after: 10,
            }
            .inspect_log(&other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_permanent() {
        let server = CfError::Server { endpoint: "d1.create", status: 500, code: 7500, message: String::new() };
        assert!(LifecycleError::from(server).is_transient());
        assert!(!LifecycleError::from(CfError::DatabaseLimit { endpoint: "d1.create" }).is_transient());
        assert!(LifecycleError::Store(SqlError::new("busy")).is_transient());
        assert!(LifecycleError::Backups(BackupError("r2".into())).is_transient());
        assert!(!LifecycleError::Permanent("stamped for another tenant".into()).is_transient());
        assert_eq!(ApiError::from(LifecycleError::Permanent("x".into())).status(), 503);
        assert_eq!(ApiError::from(LifecycleError::Store(SqlError::new("x"))).status(), 500);
    }
}
