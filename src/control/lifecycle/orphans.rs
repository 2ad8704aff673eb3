//! The orphan scan: databases with our prefix that no tenant owns.

use super::*;

impl Lifecycle<'_> {
    /// Databases with our prefix that no tenant owns. Removed when `ORPHAN_POLICY=remove`.
    pub async fn orphans(&self) -> Result<(Vec<String>, Vec<String>), StepError> {
        let owned = store::owned_database_names(&self.db).await?;
        let control = DatabaseName::control_plane(&self.prefix);
        let orphans: Vec<_> = self
            .api
            .list_databases(self.prefix.as_str())
            .await?
            .into_iter()
            .filter(|d| {
                d.name.starts_with(self.prefix.as_str()) && d.name != control.as_str() && !owned.contains(&d.name)
            })
            .collect();
        let mut removed = Vec::new();
        if self.remove_orphans {
            for db in &orphans {
                self.api.delete_database(&db.uuid).await?;
                store::audit(
                    &self.db,
                    "reconciler",
                    "orphan.removed",
                    None,
                    &self.holder,
                    &json!({ "database": db.name, "id": db.uuid }),
                )
                .await?;
                removed.push(db.name.clone());
            }
        }
        Ok((orphans.into_iter().map(|d| d.name).collect(), removed))
    }
}
