//! Which subscriptions a new event goes to: the directory's match on type and consumer, then
//! each matched subscription's payload filter over the event's `data`, which is parsed once
//! per event (shared with the schema check), and only when a matched subscription has one.
//!
//! Relay's own events (`relay.*`) are addressed by [`operational::reaches`]: an operator's
//! subscription (no consumer) receives every consumer's, a tenant's only its own.

use std::sync::Arc;

use relay_shared::{envelope::Envelope, operational, payload_filter::Subject};

use super::directory::{Directory, Route};
use crate::event_data::EventData;

/// The enabled subscriptions `envelope` is delivered to.
pub fn routes(directory: &Directory, envelope: &Envelope, data: &EventData<'_>) -> Vec<Arc<Route>> {
    let event_type = envelope.event_type.as_str();
    let consumer = envelope.consumer.as_deref();
    let mut routes = if operational::is_reserved(event_type) {
        let mut every = directory.matching(event_type, None);
        every.retain(|route| operational::reaches(consumer, route.consumer.as_deref()));
        every
    } else {
        directory.matching(event_type, consumer)
    };
    routes.retain(|route| {
        route.payload_filter.as_ref().is_none_or(|filter| {
            filter.matches(&Subject {
                event_type,
                consumer,
                data: data.value(),
            })
        })
    });
    routes
}

#[cfg(test)]
mod tests {
    use relay_shared::{
        control::ControlMessage,
        envelope::{IncomingEvent, parse_json},
        subscription::DirectoryEntry,
    };
    use serde_json::{Value, json};
    use time::OffsetDateTime;

    use super::*;

    fn directory(entries: &[(&str, &str, Option<&str>, Option<Value>)]) -> Directory {
        let d = Directory::default();
        for (id, filter, consumer, payload) in entries {
            d.apply(ControlMessage::Upsert {
                subscription: DirectoryEntry {
                    id: (*id).into(),
                    url: "http://127.0.0.1:1/hook".into(),
                    event_types: vec![(*filter).into()],
                    consumer: consumer.map(str::to_owned),
                    enabled: true,
                    secrets: vec!["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()],
                    revision: 1,
                    filter: payload.clone(),
                    ..DirectoryEntry::default()
                },
            });
        }
        d
    }

    fn envelope(event_type: &str, consumer: Option<&str>, data: Value) -> Envelope {
        let mut body = json!({"type": event_type, "data": data});
        if let Some(c) = consumer {
            body["consumer"] = json!(c);
        }
        parse_json::<IncomingEvent>(body.to_string().as_bytes())
            .unwrap()
            .normalise(OffsetDateTime::now_utc(), || String::from("evt_1"))
            .unwrap()
    }

    fn ids(d: &Directory, e: &Envelope) -> Vec<String> {
        let mut ids: Vec<String> = routes(d, e, &EventData::new(e))
            .iter()
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn payload_filters_apply_after_the_type_match() {
        let d = directory(&[
            ("all", "order.*", None, None),
            (
                "big",
                "order.*",
                None,
                Some(json!({"data.total": {"$gt": 100}})),
            ),
            (
                "eur",
                "order.*",
                None,
                Some(json!({"data.currency": "EUR"})),
            ),
            (
                "acme",
                "order.*",
                Some("acme"),
                Some(json!({"consumer": "acme"})),
            ),
            ("invoices", "invoice.*", None, Some(json!({}))),
        ]);
        let small = envelope(
            "order.created",
            None,
            json!({"total": 5, "currency": "EUR"}),
        );
        assert_eq!(ids(&d, &small), ["all", "eur"]);
        let big = envelope("order.created", Some("acme"), json!({"total": 500}));
        assert_eq!(ids(&d, &big), ["acme"]);
        let big = envelope("order.created", None, json!({"total": 500}));
        assert_eq!(ids(&d, &big), ["all", "big"]);
    }

    #[test]
    fn data_is_parsed_once_and_only_for_a_filter() {
        let d = directory(&[
            ("a", "order.*", None, Some(json!({"data.n": 1}))),
            ("b", "order.*", None, Some(json!({"data.n": {"$gte": 1}}))),
            ("plain", "invoice.*", None, None),
        ]);
        let order = envelope("order.created", None, json!({"n": 1}));
        let data = EventData::new(&order);
        assert_eq!(routes(&d, &order, &data).len(), 2);
        assert!(data.is_parsed());
        let invoice = envelope("invoice.paid", None, json!({"n": 1}));
        let data = EventData::new(&invoice);
        assert_eq!(routes(&d, &invoice, &data).len(), 1);
        assert!(!data.is_parsed(), "no filter, no parse");
    }

    #[test]
    fn operational_events_reach_operators_and_their_own_tenant_only() {
        let d = directory(&[
            ("operator", "relay.#", None, None),
            ("acme", "relay.#", Some("acme"), None),
            ("globex", "relay.#", Some("globex"), None),
            ("orders", "order.*", None, None),
        ]);
        let about_acme = envelope("relay.endpoint.disabled", Some("acme"), json!({}));
        assert_eq!(ids(&d, &about_acme), ["acme", "operator"]);
        let about_operator = envelope("relay.endpoint.disabled", None, json!({}));
        assert_eq!(ids(&d, &about_operator), ["operator"]);
        // Ordinary events keep the ordinary rule.
        let ordinary = envelope("order.created", Some("acme"), json!({}));
        assert!(ids(&d, &ordinary).is_empty());
    }
}
