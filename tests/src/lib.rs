//! Test support for Relay's end-to-end tests: a private RabbitMQ node, a recording HTTP
//! receiver, direct AMQP access, a whole Relay started in-process, and a headless browser.
#![forbid(unsafe_code)]
// A test harness that cannot set up has nothing better to do than fail the test, saying why.
#![allow(clippy::expect_used)]

pub mod amqp;
pub mod api;
pub mod bench;
pub mod broker;
pub mod browser;
pub mod cluster;
pub mod ed25519_check;
pub mod freeze;
pub mod postgres;
pub mod process;
pub mod receiver;
pub mod stalls;
pub mod system;

use std::path::PathBuf;

/// Path of a workspace binary (`relay`, `consumer-api`) next to the test executable.
///
/// # Panics
/// When it has not been built (`cargo build --bins`; the test script does it).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("target directory layout");
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --bins` first",
        path.display()
    );
    path
}
