//! Rebuild when a migration changes: `sqlx::migrate!` embeds the migration files at compile
//! time, and on stable Rust cargo does not know it read them.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
