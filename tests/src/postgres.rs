//! The test PostgreSQL: `deploy/local/test.sh` starts a private cluster and exports its URL
//! as `RELAY_TEST_POSTGRES_URL`. Tests that need it fail (never skip) without it.

use sqlx::{AnyConnection, Connection};

/// The variable naming the test PostgreSQL (its admin database).
pub const POSTGRES_URL_VAR: &str = "RELAY_TEST_POSTGRES_URL";

/// The URL of a fresh, empty database on the test PostgreSQL.
///
/// # Panics
/// When `RELAY_TEST_POSTGRES_URL` is not set or the server cannot be reached.
pub async fn fresh_database() -> String {
    let admin = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VAR} is not set: run the tests through deploy/local/test.sh, which starts PostgreSQL")
    });
    sqlx::any::install_default_drivers();
    let name = relay_shared::ids::new_id("relay_e2e").to_lowercase();
    let mut conn = AnyConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin).expect("a valid RELAY_TEST_POSTGRES_URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}
