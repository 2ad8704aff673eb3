//! The orphan scan: databases with our prefix that no tenant owns, and host scripts no host row
//! names.

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

    /// Scripts of the hosts' namespace named like our hosts (`{script}-host-NNNN`) with no host
    /// row: left by a control plane restored from an older state, or by hand. Scripts named
    /// otherwise are not ours (a namespace may be shared) and are never touched. With
    /// `ORPHAN_POLICY=remove` an orphan script holding no binding is deleted; one still holding
    /// bindings is only reported (a tenant may be served through it).
    pub async fn orphan_scripts(&self) -> Result<(Vec<String>, Vec<String>)> {
        let Some(hosts) = &self.settings.hosts else { return Ok((Vec::new(), Vec::new())) };
        let known: std::collections::HashSet<String> = self.store.hosts().await?.into_iter().map(|h| h.name).collect();
        let script = &self.settings.script;
        let orphans: Vec<String> = self
            .api
            .list_namespace_scripts(&hosts.namespace)
            .await?
            .into_iter()
            .filter(|name| crate::store::host::seq_of(script, name).is_some() && !known.contains(name))
            .collect();
        let mut removed = Vec::new();
        if self.settings.remove_orphans {
            for name in &orphans {
                let settings = self.api.get_script_settings(Some(&hosts.namespace), name).await?;
                if settings.bindings.iter().any(|b| b["type"] == "d1") {
                    continue;
                }
                self.api.delete_namespace_script(&hosts.namespace, name).await?;
                let detail = json!({ "script": name });
                self.store.audit("reconciler", "orphan_script.removed", None, &self.settings.holder, &detail).await?;
                removed.push(name.clone());
            }
        }
        Ok((orphans, removed))
    }
}
