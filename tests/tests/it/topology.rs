//! The first start on a broker creates the topology and waits `amqp.new_topology_settle`
//! before taking traffic (a quorum queue killed within about 2 s of its creation can come back
//! empty); later starts find it and do not wait.

use std::time::{Duration, Instant};

use tests::system::{Options, System};

use crate::shared_amqp_url;

#[tokio::test]
async fn a_new_topology_settles_before_traffic_and_an_existing_one_does_not_wait() {
    let prefix = format!(
        "settle{}.",
        relay_shared::ids::new_id("")
            .to_lowercase()
            .replace('_', "")
    );
    let started = Instant::now();
    let first = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__AMQP__PREFIX", &prefix)
            .set("RELAY__AMQP__NEW_TOPOLOGY_SETTLE", "2s"),
    )
    .await;
    let first_ready = started.elapsed();
    assert!(
        first_ready >= Duration::from_secs(2),
        "ready {first_ready:?} after creating the topology, before the 2 s settle"
    );
    first.stop().await;

    // The topology exists now: a wait of a minute would exceed System's 30 s readiness bound.
    let second = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__AMQP__PREFIX", &prefix)
            .set("RELAY__AMQP__NEW_TOPOLOGY_SETTLE", "60s"),
    )
    .await;
    second.stop().await;
}
