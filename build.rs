//! Marks test builds that have a PostgreSQL to run the store suite against
//! (`KTRDR_OPS_TEST_DATABASE_URL`); without one, those tests show as ignored, with the reason.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=KTRDR_OPS_TEST_DATABASE_URL");
    // sqlx::migrate! embeds these files.
    println!("cargo::rerun-if-changed=migrations");
    if std::env::var_os("KTRDR_OPS_TEST_DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
