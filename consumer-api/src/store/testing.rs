//! Stores for tests: a fresh SQLite file, and a fresh database on the PostgreSQL named by
//! `RELAY_TEST_POSTGRES_URL` (started by `deploy/local/test.sh`). Without that variable the
//! PostgreSQL half fails: the store tests never silently skip a backend.

use sqlx::{AnyConnection, Connection};

use super::Store;

/// The variable naming the test PostgreSQL (its admin database).
pub const POSTGRES_URL_VAR: &str = "RELAY_TEST_POSTGRES_URL";

/// A store in a fresh SQLite file.
pub async fn sqlite() -> Store {
    let dir = std::env::temp_dir().join(format!(
        "consumer-api-store-{}",
        relay_shared::ids::new_id("t")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Store::open(&format!("sqlite://{}", dir.join("relay.db").display()))
        .await
        .unwrap()
}

/// A URL of a fresh, empty database on the test PostgreSQL.
///
/// # Panics
/// When `RELAY_TEST_POSTGRES_URL` is not set or the server cannot be reached.
pub async fn fresh_postgres_url() -> String {
    let admin = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VAR} is not set: run the tests through deploy/local/test.sh, which starts PostgreSQL")
    });
    sqlx::any::install_default_drivers();
    let name = relay_shared::ids::new_id("relay_t").to_lowercase();
    let mut conn = AnyConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A store on a fresh PostgreSQL database.
pub async fn postgres() -> Store {
    Store::open(&fresh_postgres_url().await).await.unwrap()
}

/// One fresh store per backend.
pub async fn each_backend() -> Vec<(&'static str, Store)> {
    vec![("sqlite", sqlite().await), ("postgres", postgres().await)]
}
