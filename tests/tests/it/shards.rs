//! Sharded ingress (`amqp.ingress_shards`): events spread evenly over the shards by a hash of
//! their ordering key, every event of one key on one shard, and dispatchers consume them all.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::{Value, json};
use tests::{
    amqp,
    receiver::Receiver,
    system::{Options, System},
};

use crate::{pull::publish_all, shared_amqp_url};

/// Events published per key-less round and keys × events per key in the keyed round.
const UNKEYED: usize = 4000;
const KEYS: usize = 100;
const PER_KEY: usize = 10;

/// Takes every message waiting in the ingress shards: (ordering key or id, shard index).
async fn drain_shards(relay: &System, url: &str) -> Vec<(String, usize)> {
    let topology = relay_shared::topology::Topology::from_settings(&relay.settings.amqp);
    let mut placed = Vec::new();
    for (shard, queue) in topology.ingress_queues().iter().enumerate() {
        for message in amqp::drain(url, queue).await {
            let body: Value = serde_json::from_slice(&message.body).unwrap();
            let key = body["ordering_key"]
                .as_str()
                .or(body["id"].as_str())
                .unwrap();
            placed.push((key.to_owned(), shard));
        }
    }
    placed
}

#[tokio::test]
async fn events_spread_evenly_over_four_shards_and_each_key_keeps_its_shard() {
    // No dispatcher: the events stay in their shards to be counted.
    let mut options = Options::new(shared_amqp_url()).set("RELAY__AMQP__INGRESS_SHARDS", "4");
    options.dispatchers = 0;
    let relay = System::start_with(options).await;
    check_spread_and_keys(&relay, &shared_amqp_url(), 4).await;
    relay.stop().await;
}

/// Publishes events without a key and checks they spread within ±15 % over the `shards`
/// shards, then keyed events and checks every key is on one shard; `relay` runs no
/// dispatcher, `url` reaches the broker.
pub(crate) async fn check_spread_and_keys(relay: &System, url: &str, shards: usize) {
    // Without an ordering key the event id is the key: spread evenly.
    let unkeyed: Vec<Value> = (0..UNKEYED)
        .map(|i| json!({"type": "shard.test", "data": {"i": i}}))
        .collect();
    publish_all(relay, &unkeyed).await;
    let placed = drain_shards(relay, url).await;
    assert_eq!(placed.len(), UNKEYED, "every accepted event is in a shard");
    let mut per_shard = vec![0usize; shards];
    for (_, shard) in &placed {
        per_shard[*shard] += 1;
    }
    let even = UNKEYED / shards;
    eprintln!("FIGURE shards={shards} events={UNKEYED} per_shard={per_shard:?}");
    for (shard, n) in per_shard.iter().enumerate() {
        // ±15 %: 5.5 standard deviations of a fair split of 4,000 random ids in 4.
        assert!(
            n.abs_diff(even) * 100 <= even * 15,
            "shard {shard} holds {n} of {UNKEYED}, not within 15 % of {even}: {per_shard:?}"
        );
    }

    // With an ordering key, every event of a key lands on one shard, whatever the order of
    // publishing.
    let keyed: Vec<Value> = (0..PER_KEY)
        .flat_map(|n| {
            (0..KEYS).map(move |k| {
                json!({"type": "shard.test", "ordering_key": format!("key-{k}"), "data": {"n": n}})
            })
        })
        .collect();
    publish_all(relay, &keyed).await;
    let placed = drain_shards(relay, url).await;
    assert_eq!(placed.len(), KEYS * PER_KEY);
    let mut shards_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (key, shard) in placed {
        shards_of.entry(key).or_default().insert(shard);
    }
    assert_eq!(shards_of.len(), KEYS);
    for (key, on) in &shards_of {
        assert_eq!(on.len(), 1, "key {key} landed on shards {on:?}");
    }
    let used: BTreeSet<usize> = shards_of.values().flatten().copied().collect();
    assert_eq!(used.len(), shards, "100 keys use every shard: {used:?}");
}

#[tokio::test]
async fn dispatchers_consume_every_shard() {
    let relay =
        System::start_with(Options::new(shared_amqp_url()).set("RELAY__AMQP__INGRESS_SHARDS", "3"))
            .await;
    let receiver = Receiver::start().await;
    relay.subscribe(&receiver.url(), &["shard.*"], None).await;
    // 60 keys use all three shards (checked above for four); each event is delivered once.
    let events: Vec<Value> = (0..60)
        .map(|k| json!({"type": "shard.test", "ordering_key": format!("k{k}")}))
        .collect();
    publish_all(&relay, &events).await;
    let got = receiver.wait_for(60, Duration::from_secs(60)).await;
    let keys: BTreeSet<String> = got
        .iter()
        .map(|r| r.json()["ordering_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 60, "one delivery per event");
    relay.stop().await;
}
