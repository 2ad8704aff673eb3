//! Embeds the SQL migrations under `migrations/{control,tenant}/` into the Worker.
//!
//! Each directory becomes a `&[Migration]` constant, ordered by the numeric prefix of the file name
//! (the order wrangler's `d1 migrations apply` uses), so the Worker knows exactly which migrations a
//! database must have applied without reading the file system at run time.

use std::{env, fs, path::Path};

fn main() {
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("migrations.rs");
    let mut code = String::new();
    for (constant, dir) in [("CONTROL", "migrations/control"), ("TENANT", "migrations/tenant")] {
        println!("cargo:rerun-if-changed={dir}");
        let mut files: Vec<(u64, String)> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .map(|entry| entry.expect("directory entry").file_name().into_string().expect("UTF-8 file name"))
            .filter(|name| name.ends_with(".sql"))
            .map(|name| {
                let number = name
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|digits| digits.parse().ok())
                    .unwrap_or_else(|| panic!("{dir}/{name}: a migration file name must start with its number"));
                (number, name)
            })
            .collect();
        files.sort();
        for pair in files.windows(2) {
            assert!(pair[0].0 != pair[1].0, "{dir}: two migrations share number {}", pair[0].0);
        }
        code.push_str(&format!(
            "/// Migrations embedded from `{dir}/`, in apply order.\npub const {constant}: &[Migration] = &[\n"
        ));
        for (_, name) in &files {
            let path = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join(dir).join(name);
            println!("cargo:rerun-if-changed={}", path.display());
            code.push_str(&format!(
                "    Migration {{ name: {name:?}, sql: include_str!({:?}) }},\n",
                path.display().to_string()
            ));
        }
        code.push_str("];\n");
    }
    fs::write(out, code).expect("writing migrations.rs");
}
