//! JSON Schemas (draft 2020-12) for event types: checked when an event type is saved, compiled
//! once per (type, revision) into a [`SchemaCache`], and applied to an event's `data` at ingest.
//!
//! A schema must be self-contained: references to other documents (`$ref` to a URL or a file)
//! are refused, never fetched. Patterns use a linear-time regular expression engine, so a
//! schema cannot make ingest slow with a backtracking pattern; look-around and back-references
//! are refused at save.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use jsonschema::{Draft, PatternOptions, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only dialect accepted (also when `$schema` is absent).
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
/// Largest schema accepted, as compact JSON.
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;
/// Longest violation message kept (the rest is cut at a character boundary).
const MAX_MESSAGE_CHARS: usize = 240;

/// Why a schema was refused at save.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// Larger than [`MAX_SCHEMA_BYTES`].
    #[error("the schema is {0} bytes; at most {MAX_SCHEMA_BYTES} are allowed")]
    TooLarge(usize),
    /// `$schema` names another dialect.
    #[error("$schema must be absent or {DRAFT_2020_12}")]
    WrongDraft,
    /// Not a valid draft 2020-12 schema, or it cannot be compiled (an external `$ref`, a
    /// pattern the engine refuses). `pointer` locates the fault inside the schema.
    #[error("{reason} (at {pointer:?} in the schema)")]
    Invalid {
        /// JSON pointer into the schema; empty for the schema itself.
        pointer: String,
        /// What is wrong there.
        reason: String,
    },
}

/// Why an event's `data` does not satisfy its type's schema (the first violation found).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {message} ({rule})")]
pub struct Violation {
    /// JSON pointer into the event, e.g. `/data/total` (always under `/data`).
    pub pointer: String,
    /// The schema keyword that failed, e.g. `minimum`, `required`, `type`.
    pub rule: String,
    /// Human-readable reason.
    pub message: String,
}

/// A compiled schema.
pub struct CompiledSchema {
    validator: Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchema(..)")
    }
}

impl CompiledSchema {
    /// Checks and compiles a schema.
    ///
    /// # Errors
    /// A [`SchemaError`] saying why it cannot be used.
    pub fn compile(schema: &Value) -> Result<Self, SchemaError> {
        let size = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
        if size > MAX_SCHEMA_BYTES {
            return Err(SchemaError::TooLarge(size));
        }
        if let Some(dialect) = schema.get("$schema") {
            // The meta-schema's own id, with or without the empty fragment.
            if dialect.as_str().map(|d| d.trim_end_matches('#')) != Some(DRAFT_2020_12) {
                return Err(SchemaError::WrongDraft);
            }
        }
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            return Err(SchemaError::Invalid {
                pointer: e.instance_path().to_string(),
                reason: e.to_string(),
            });
        }
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .offline()
            .with_pattern_options(PatternOptions::regex())
            .build(schema)
            .map_err(|e| SchemaError::Invalid {
                pointer: e.schema_path().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self { validator })
    }

    /// Checks an event's `data`.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn check(&self, data: &Value) -> Result<(), Violation> {
        let Err(e) = self.validator.validate(data) else {
            return Ok(());
        };
        let mut message = e.to_string();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        Err(Violation {
            pointer: format!("/data{}", e.instance_path()),
            rule: e.kind().keyword().to_owned(),
            message,
        })
    }
}

/// What ingest knows of one event type.
#[derive(Debug)]
pub struct TypeRules {
    /// Revision of the catalogue entry this was built from.
    pub revision: i64,
    /// The compiled schema, when the type has one.
    pub schema: Option<CompiledSchema>,
    /// Deprecated types are still accepted, and flagged in the answer.
    pub deprecated: bool,
}

/// One event type as the catalogue announces it: in a snapshot (`GET /v1/event-types`, whose
/// entries carry more fields, ignored here) and in a `relay.control` change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDefinition {
    /// Event type name, e.g. `order.created`.
    pub name: String,
    /// The catalogue revision of the entry's last change: one sequence for every type, so a
    /// deletion and a later re-creation stay ordered.
    pub revision: i64,
    /// The JSON Schema of `data`, if any.
    #[serde(default)]
    pub schema: Option<Value>,
    /// Whether producers should stop sending it.
    #[serde(default)]
    pub deprecated: bool,
}

#[derive(Debug)]
enum Slot {
    Live(Arc<TypeRules>),
    /// Deleted at this revision: an older change arriving late must not bring it back.
    Deleted(i64),
}

impl Slot {
    fn revision(&self) -> i64 {
        match self {
            Self::Live(rules) => rules.revision,
            Self::Deleted(revision) => *revision,
        }
    }
}

/// The compiled catalogue, keyed by type name; an entry is compiled once per revision.
/// Readers take a short read lock and clone an `Arc`.
#[derive(Debug, Default)]
pub struct SchemaCache {
    types: RwLock<HashMap<String, Slot>>,
}

impl SchemaCache {
    /// The rules for a type; `None` when the catalogue does not know it (then anything goes).
    pub fn get(&self, name: &str) -> Option<Arc<TypeRules>> {
        let types = self
            .types
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match types.get(name)? {
            Slot::Live(rules) => Some(rules.clone()),
            Slot::Deleted(_) => None,
        }
    }

    /// Applies one change. Older than what is held: ignored (`Ok(false)`). The same revision
    /// is not compiled again.
    ///
    /// # Errors
    /// A [`SchemaError`] when the schema does not compile (the entry is then left as it was).
    pub fn apply(&self, definition: &TypeDefinition) -> Result<bool, SchemaError> {
        if self
            .held_revision(&definition.name)
            .is_some_and(|held| held >= definition.revision)
        {
            return Ok(false);
        }
        // Compiled outside the lock: readers never wait on a compilation.
        let rules = compile_rules(definition)?;
        let mut types = self
            .types
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match types.get(&definition.name) {
            Some(slot) if slot.revision() >= definition.revision => Ok(false),
            _ => {
                types.insert(definition.name.clone(), Slot::Live(Arc::new(rules)));
                Ok(true)
            }
        }
    }

    /// Forgets a type deleted at `revision`, unless a newer revision is held.
    pub fn remove(&self, name: &str, revision: i64) {
        let mut types = self
            .types
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if types
            .get(name)
            .is_none_or(|slot| slot.revision() < revision)
        {
            types.insert(name.to_owned(), Slot::Deleted(revision));
        }
    }

    /// Replaces the whole catalogue with a snapshot read at catalogue revision `as_of`: every
    /// held entry (or deletion) newer than `as_of` was announced after the snapshot began and
    /// is kept; compiled entries whose revision did not change are reused. Entries that do not
    /// compile are skipped and returned with their error (they compiled when saved, so this
    /// means the validator changed between versions).
    pub fn replace_all(
        &self,
        snapshot: &[TypeDefinition],
        as_of: i64,
    ) -> Vec<(String, SchemaError)> {
        let mut failed = Vec::new();
        let mut next = HashMap::with_capacity(snapshot.len());
        for definition in snapshot {
            let kept = self
                .get(&definition.name)
                .filter(|rules| rules.revision == definition.revision);
            match kept.map_or_else(|| compile_rules(definition).map(Arc::new), Ok) {
                Ok(rules) => {
                    next.insert(definition.name.clone(), Slot::Live(rules));
                }
                Err(e) => failed.push((definition.name.clone(), e)),
            }
        }
        let mut types = self
            .types
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, slot) in types.drain() {
            let newer = next
                .get(&name)
                .is_none_or(|taken: &Slot| taken.revision() < slot.revision());
            if slot.revision() > as_of && newer {
                next.insert(name, slot);
            }
        }
        *types = next;
        failed
    }

    /// Types known (live), for a readiness or metrics figure.
    pub fn len(&self) -> usize {
        let types = self
            .types
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        types
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count()
    }

    /// Whether no type is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn held_revision(&self, name: &str) -> Option<i64> {
        let types = self
            .types
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        types.get(name).map(Slot::revision)
    }
}

fn compile_rules(definition: &TypeDefinition) -> Result<TypeRules, SchemaError> {
    Ok(TypeRules {
        revision: definition.revision,
        schema: definition
            .schema
            .as_ref()
            .map(CompiledSchema::compile)
            .transpose()?,
        deprecated: definition.deprecated,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order_schema() -> Value {
        json!({
            "$schema": DRAFT_2020_12,
            "type": "object",
            "required": ["order", "total"],
            "properties": {
                "order": {"type": "integer"},
                "total": {"type": "number", "minimum": 0},
                "items": {"type": "array", "items": {"$ref": "#/$defs/item"}}
            },
            "$defs": {"item": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string", "pattern": "^[A-Z]-[0-9]+$"}}}}
        })
    }

    #[test]
    fn valid_data_passes_and_violations_name_pointer_and_rule() {
        let schema = CompiledSchema::compile(&order_schema()).unwrap();
        assert!(schema.check(&json!({"order": 1, "total": 9.5})).is_ok());
        let cases = [
            (json!({"order": 1, "total": -1}), "/data/total", "minimum"),
            (json!({"order": "1", "total": 1}), "/data/order", "type"),
            (json!({"order": 1}), "/data", "required"),
            (json!([1]), "/data", "type"),
            (
                json!({"order": 1, "total": 1, "items": [{"sku": "A-1"}, {"sku": "a1"}]}),
                "/data/items/1/sku",
                "pattern",
            ),
        ];
        for (data, pointer, rule) in cases {
            let v = schema.check(&data).unwrap_err();
            assert_eq!(
                (v.pointer.as_str(), v.rule.as_str()),
                (pointer, rule),
                "{data}: {v}"
            );
            assert!(!v.message.is_empty());
        }
        let long = "x".repeat(10_000);
        let v = schema
            .check(&json!({"order": long, "total": 1}))
            .unwrap_err();
        assert!(v.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn bad_schemas_are_refused_at_save() {
        assert!(matches!(
            CompiledSchema::compile(&json!({"type": "integr"})).unwrap_err(),
            SchemaError::Invalid { pointer, .. } if pointer == "/type"
        ));
        assert_eq!(
            CompiledSchema::compile(&json!({"$schema": "http://json-schema.org/draft-07/schema#"}))
                .unwrap_err(),
            SchemaError::WrongDraft
        );
        assert!(CompiledSchema::compile(&json!({"$schema": format!("{DRAFT_2020_12}#")})).is_ok());
        // Remote and file references are never fetched.
        for remote in ["https://example.com/schema.json", "file:///etc/passwd"] {
            let e = CompiledSchema::compile(&json!({"$ref": remote})).unwrap_err();
            assert!(matches!(e, SchemaError::Invalid { .. }), "{remote}: {e}");
        }
        // A back-reference needs a backtracking engine: refused, not run at ingest.
        let e = CompiledSchema::compile(&json!({"pattern": "^(a+)\\1$"})).unwrap_err();
        assert!(matches!(e, SchemaError::Invalid { .. }), "{e}");
        let huge = json!({"description": "x".repeat(MAX_SCHEMA_BYTES)});
        assert!(matches!(
            CompiledSchema::compile(&huge).unwrap_err(),
            SchemaError::TooLarge(_)
        ));
        // Boolean schemas are schemas.
        assert!(CompiledSchema::compile(&json!(true)).is_ok());
    }

    fn definition(name: &str, revision: i64, schema: Option<Value>) -> TypeDefinition {
        TypeDefinition {
            name: name.to_owned(),
            revision,
            schema,
            deprecated: false,
        }
    }

    #[test]
    fn the_cache_follows_revisions_and_ignores_stale_changes() {
        let cache = SchemaCache::default();
        assert!(cache.get("order.created").is_none());
        assert!(
            cache
                .apply(&definition("order.created", 2, Some(order_schema())))
                .unwrap()
        );
        let first = cache.get("order.created").unwrap();
        assert!(first.schema.is_some());
        // Same or older revision: nothing changes, nothing is compiled.
        assert!(!cache.apply(&definition("order.created", 2, None)).unwrap());
        assert!(!cache.apply(&definition("order.created", 1, None)).unwrap());
        assert!(Arc::ptr_eq(&first, &cache.get("order.created").unwrap()));
        // A newer one replaces it; an invalid one is refused and leaves it.
        assert!(cache.apply(&definition("order.created", 3, None)).unwrap());
        assert!(cache.get("order.created").unwrap().schema.is_none());
        assert!(
            cache
                .apply(&definition("order.created", 4, Some(json!({"type": 5}))))
                .is_err()
        );
        assert_eq!(cache.get("order.created").unwrap().revision, 3);
        // A deletion sticks against older changes arriving late.
        cache.remove("order.created", 5);
        assert!(cache.get("order.created").is_none());
        assert!(!cache.apply(&definition("order.created", 4, None)).unwrap());
        assert!(cache.get("order.created").is_none());
        assert!(cache.apply(&definition("order.created", 6, None)).unwrap());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_snapshot_replaces_everything_and_reuses_unchanged_entries() {
        let cache = SchemaCache::default();
        cache
            .apply(&definition("a", 1, Some(order_schema())))
            .unwrap();
        cache.apply(&definition("gone", 2, None)).unwrap();
        let a = cache.get("a").unwrap();
        let failed = cache.replace_all(
            &[
                definition("a", 1, Some(order_schema())),
                definition("b", 4, None),
                definition("broken", 3, Some(json!({"type": 5}))),
            ],
            4,
        );
        assert_eq!(failed.len(), 1);
        assert!(Arc::ptr_eq(&a, &cache.get("a").unwrap()));
        assert!(cache.get("b").is_some() && cache.get("gone").is_none());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn changes_announced_while_a_snapshot_was_read_survive_it() {
        let cache = SchemaCache::default();
        cache.apply(&definition("a", 1, None)).unwrap();
        cache.apply(&definition("b", 2, None)).unwrap();
        // The snapshot is read as of revision 3; meanwhile "a" changes (5), "c" appears (6)
        // and "b" is deleted (7).
        cache
            .apply(&definition("a", 5, Some(order_schema())))
            .unwrap();
        cache.apply(&definition("c", 6, None)).unwrap();
        cache.remove("b", 7);
        cache.replace_all(&[definition("a", 1, None), definition("b", 2, None)], 3);
        assert_eq!(cache.get("a").unwrap().revision, 5);
        assert!(cache.get("b").is_none());
        assert!(cache.get("c").is_some());
        // A later snapshot that includes them all wins as usual.
        cache.replace_all(&[definition("a", 5, None), definition("c", 6, None)], 7);
        assert_eq!(cache.len(), 2);
    }
}
