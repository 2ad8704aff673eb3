//! The orphan scan: databases with our prefix that no tenant owns.

use super::*;

impl<P: Platform> Lifecycle<P> {
    /// Databases with our prefix that no tenant owns. Removed when `ORPHAN_POLICY=remove`.
    pub async fn orphans(&self) -> Result<(Vec<String>, Vec<String>)> {
        let owned: std::collections::HashSet<String> = self.store.owned_database_names().await?.into_iter().collect();
        let prefix = &self.settings.prefix;
        let control = DatabaseName::control_plane(prefix);
        let orphans: Vec<_> = self
            .api
            .list_databases(prefix.as_str())
            .await?
            .into_iter()
            .filter(|d| d.name.starts_with(prefix.as_str()) && d.name != control.as_str() && !owned.contains(&d.name))
            .collect();
        let mut removed = Vec::new();
        if self.settings.remove_orphans {
            for db in &orphans {
                self.api.delete_database(&db.uuid).await?;
                let detail = json!({ "database": db.name, "id": db.uuid });
                self.store.audit("reconciler", "orphan.removed", None, &self.settings.holder, &detail).await?;
                removed.push(db.name.clone());
            }
        }
        Ok((orphans.into_iter().map(|d| d.name).collect(), removed))
    }
}
