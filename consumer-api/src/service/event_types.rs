//! The event-type catalogue: names, descriptions, a JSON Schema (draft 2020-12) of `data`,
//! examples and a deprecation flag. The admin manages it; every key reads it (producers and
//! consumers learn payloads from it, ingest and dispatchers load the schemas from it). Relay's
//! own `relay.*` types are listed as built-in and cannot be changed.
//!
//! A schema is compiled when it is saved (an invalid one is refused, naming the pointer in the
//! schema), and every example must satisfy it. Every committed change is announced on
//! `relay.control`, so ingest and the dispatchers apply it within a second.

use axum::http::StatusCode;
use relay_shared::{
    control::ControlMessage,
    event_schema::{CompiledSchema, SchemaError, TypeDefinition},
    filter::validate_event_type,
    operational,
    problem::Problem,
};
use serde::Deserialize;
use serde_json::Value;

use super::{Caller, Page, PageRequest, Service};
use crate::{
    clock::now,
    error::{ApiError, FieldError},
    store::event_types::{EventType, EventTypePatch},
    validation::Nullable,
};

/// The longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1000;
/// Most examples of one type.
pub const MAX_EXAMPLES: usize = 10;

/// A new event type (`POST /v1/event-types`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventType {
    /// Dot-separated segments of `a-z 0-9 _ -`, at most 255 bytes; not under `relay.`.
    #[schema(
        pattern = "^(?!relay\\.)[a-z0-9_-]+(\\.[a-z0-9_-]+)*$",
        max_length = 255
    )]
    pub name: String,
    /// What it means, at most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// JSON Schema (draft 2020-12) of `data`; self-contained (no remote `$ref`). One that
    /// does not compile is refused with 422.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Example `data`, each valid against the schema (else 422); at most 10.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>, max_items = 10)]
    pub examples: Option<Vec<Value>>,
    /// Producers should stop sending it; it is still accepted, and the answer says so.
    #[serde(default)]
    pub deprecated: Option<bool>,
}

/// A change to an event type (`PATCH /v1/event-types/{name}`): absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeChanges {
    /// New description, at most 1000 characters; `null` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 1000)]
    pub description: Nullable<String>,
    /// New schema; `null` removes it (then any `data` is accepted).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Nullable<Value>,
    /// New examples (at most 10), checked against the (new or current) schema; `null`
    /// clears them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>, max_items = 10)]
    pub examples: Nullable<Vec<Value>>,
    /// Deprecate or un-deprecate; `null` is refused.
    #[serde(default)]
    #[schema(value_type = bool)]
    pub deprecated: Nullable<bool>,
}

/// An event type as the API shows it: a stored one or a built-in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    /// The type.
    pub event_type: EventType,
    /// One of Relay's own `relay.*` types (read-only).
    pub builtin: bool,
}

/// One page of the catalogue, with the catalogue revision it reflects at least.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CataloguePage {
    /// The page.
    pub page: Page<CatalogueEntry>,
    /// Every change up to this revision is reflected.
    pub revision: i64,
}

fn builtins() -> Vec<CatalogueEntry> {
    operational::builtin_types()
        .into_iter()
        .map(|t| CatalogueEntry {
            event_type: EventType {
                name: t.name.to_owned(),
                description: Some(t.description.to_owned()),
                schema: Some(t.schema),
                examples: vec![t.example],
                deprecated: t.deprecated,
                revision: 0,
                created_at: String::new(),
                updated_at: String::new(),
            },
            builtin: true,
        })
        .collect()
}

fn schema_field(e: SchemaError) -> FieldError {
    match e {
        SchemaError::Invalid { pointer, reason } => {
            FieldError::new(format!("schema{pointer}"), reason)
        }
        other => FieldError::new("schema", other.to_string()),
    }
}

fn check_description(description: Option<&String>) -> Result<(), FieldError> {
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN) {
        return Err(FieldError::new(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(())
}

/// At most [`MAX_EXAMPLES`] examples.
fn check_example_count(examples: &[Value]) -> Result<(), FieldError> {
    if examples.len() > MAX_EXAMPLES {
        return Err(FieldError::new(
            "examples",
            format!("at most {MAX_EXAMPLES} examples"),
        ));
    }
    Ok(())
}

/// Compiles the schema (if any) and checks every example against it. Either may fail only
/// for what it means (the document allows any object), so callers answer 422.
fn check_schema_and_examples(schema: Option<&Value>, examples: &[Value]) -> Result<(), FieldError> {
    // The document says objects, as every event of the catalogue's own types carries.
    if let Some(i) = examples.iter().position(|e| !e.is_object()) {
        return Err(FieldError::new(
            format!("examples[{i}]"),
            "an example must be a JSON object (an event's data)",
        ));
    }
    let Some(schema) = schema else {
        return Ok(());
    };
    // `true` and `false` are JSON Schemas too, but the document (and what a reader of the
    // catalogue expects) says an object: `null` is the way to accept any `data`.
    if !schema.is_object() {
        return Err(FieldError::new(
            "schema",
            "schema must be a JSON object (a JSON Schema); null accepts any data",
        ));
    }
    let compiled = CompiledSchema::compile(schema).map_err(schema_field)?;
    for (i, example) in examples.iter().enumerate() {
        if let Err(v) = compiled.check(example) {
            // The pointer is under /data; an example is the data itself.
            let at = v.pointer.strip_prefix("/data").unwrap_or(&v.pointer);
            return Err(FieldError::new(
                format!("examples[{i}]{at}"),
                format!(
                    "the example does not satisfy the schema: {} ({})",
                    v.message, v.rule
                ),
            ));
        }
    }
    Ok(())
}

fn definition(t: &EventType) -> TypeDefinition {
    TypeDefinition {
        name: t.name.clone(),
        revision: t.revision,
        schema: t.schema.clone(),
        deprecated: t.deprecated,
    }
}

/// A name under `relay.` names one of Relay's own types: malformed as a new name (the
/// document rules it out: 400), forbidden to change (it exists, and is Relay's: 403).
fn refuse_builtin(name: &str, status: StatusCode) -> Result<(), ApiError> {
    if operational::is_reserved(name) {
        let reason = format!(
            "types under {:?} are Relay's own and cannot be changed",
            operational::RESERVED_PREFIX
        );
        return Err(if status == StatusCode::FORBIDDEN {
            ApiError::Rejected(
                Problem::new(status, "forbidden", "Relay's own type", reason).with_field("name"),
            )
        } else {
            FieldError::new("name", reason).into()
        });
    }
    Ok(())
}

impl Service {
    /// Adds an event type (admin) and announces it.
    ///
    /// # Errors
    /// 403 for another caller, a [`FieldError`] (name, description, number of examples), 422
    /// for a schema that does not compile (with the pointer at fault) or an example that
    /// fails it, 409 when the name is taken, or a store failure.
    pub async fn create_event_type(
        &self,
        caller: &Caller,
        new: NewEventType,
    ) -> Result<CatalogueEntry, ApiError> {
        caller.require_admin()?;
        validate_event_type(&new.name).map_err(|e| FieldError::new("name", e.to_string()))?;
        refuse_builtin(&new.name, StatusCode::BAD_REQUEST)?;
        check_description(new.description.as_ref())?;
        let examples = new.examples.unwrap_or_default();
        check_example_count(&examples)?;
        check_schema_and_examples(new.schema.as_ref(), &examples)
            .map_err(ApiError::unprocessable)?;
        let at = now();
        let stored = self
            .store
            .create_event_type(&EventType {
                name: new.name,
                description: new.description,
                schema: new.schema,
                examples,
                deprecated: new.deprecated.unwrap_or(false),
                revision: 0,
                created_at: at.clone(),
                updated_at: at,
            })
            .await?;
        tracing::info!(event_type = %stored.name, revision = stored.revision, "event type created");
        self.control
            .notify(ControlMessage::EventType {
                event_type: definition(&stored),
            })
            .await;
        Ok(CatalogueEntry {
            event_type: stored,
            builtin: false,
        })
    }

    /// One page of the catalogue in name order, built-in types included; any caller.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_event_types(
        &self,
        _caller: &Caller,
        page: &PageRequest,
    ) -> Result<CataloguePage, ApiError> {
        let (stored, revision) = self.store.list_event_types(&page.after, page.limit).await?;
        let mut entries: Vec<CatalogueEntry> = stored
            .into_iter()
            .map(|event_type| CatalogueEntry {
                event_type,
                builtin: false,
            })
            .chain(
                builtins()
                    .into_iter()
                    .filter(|b| b.event_type.name.as_str() > page.after.as_str()),
            )
            .collect();
        entries.sort_by(|a, b| a.event_type.name.cmp(&b.event_type.name));
        entries.truncate(page.limit as usize + 1);
        Ok(CataloguePage {
            page: Page::from_rows(entries, page.limit, &page.after, |e| {
                e.event_type.name.clone()
            }),
            revision,
        })
    }

    /// One event type; any caller.
    ///
    /// # Errors
    /// 404 or a store failure.
    pub async fn event_type(
        &self,
        _caller: &Caller,
        name: &str,
    ) -> Result<CatalogueEntry, ApiError> {
        if let Some(builtin) = builtins().into_iter().find(|b| b.event_type.name == name) {
            return Ok(builtin);
        }
        Ok(CatalogueEntry {
            event_type: self.store.get_event_type(name).await?,
            builtin: false,
        })
    }

    /// Changes an event type (admin) and announces it.
    ///
    /// # Errors
    /// 403, a [`FieldError`], 404, or a store failure.
    pub async fn update_event_type(
        &self,
        caller: &Caller,
        name: &str,
        changes: EventTypeChanges,
    ) -> Result<CatalogueEntry, ApiError> {
        caller.require_admin()?;
        refuse_builtin(name, StatusCode::FORBIDDEN)?;
        let patch = EventTypePatch {
            description: changes.description.clearable(),
            schema: changes.schema.clearable(),
            examples: changes.examples.clearable().map(Option::unwrap_or_default),
            deprecated: changes.deprecated.required("deprecated")?,
        };
        if let Some(Some(description)) = &patch.description {
            check_description(Some(description))?;
        }
        if patch.schema.is_some() || patch.examples.is_some() {
            // Whatever the type will hold must still fit together.
            let current = self.store.get_event_type(name).await?;
            let schema = patch.schema.clone().unwrap_or(current.schema);
            let examples = patch.examples.clone().unwrap_or(current.examples);
            check_example_count(&examples)?;
            check_schema_and_examples(schema.as_ref(), &examples)
                .map_err(ApiError::unprocessable)?;
        }
        let stored = self.store.update_event_type(name, &patch, &now()).await?;
        tracing::info!(event_type = %stored.name, revision = stored.revision, "event type changed");
        self.control
            .notify(ControlMessage::EventType {
                event_type: definition(&stored),
            })
            .await;
        Ok(CatalogueEntry {
            event_type: stored,
            builtin: false,
        })
    }

    /// Deletes an event type (admin) and announces it; events of that type are then accepted
    /// without a schema.
    ///
    /// # Errors
    /// 403, 400 for a built-in type, 404, or a store failure.
    pub async fn delete_event_type(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        refuse_builtin(name, StatusCode::FORBIDDEN)?;
        let revision = self.store.delete_event_type(name).await?;
        tracing::info!(event_type = %name, revision, "event type deleted");
        self.control
            .notify(ControlMessage::EventTypeDeleted {
                name: name.to_owned(),
                revision,
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schemas_and_examples_are_checked_together() {
        let schema = json!({"type": "object", "properties": {"total": {"type": "number"}}});
        assert!(check_schema_and_examples(Some(&schema), &[json!({"total": 1})]).is_ok());
        let e = check_schema_and_examples(Some(&schema), &[json!({}), json!({"total": "x"})])
            .unwrap_err();
        assert_eq!(e.field, "examples[1]/total");
        let e = check_schema_and_examples(None, &[json!([null, null])]).unwrap_err();
        assert_eq!(e.field, "examples[0]");
        let e = check_schema_and_examples(Some(&json!(false)), &[]).unwrap_err();
        assert_eq!(e.field, "schema");
        let e = check_schema_and_examples(Some(&json!({"type": "nope"})), &[]).unwrap_err();
        assert_eq!(e.field, "schema/type");
        let e = check_example_count(&vec![json!(1); MAX_EXAMPLES + 1]).unwrap_err();
        assert_eq!(e.field, "examples");
    }

    #[test]
    fn builtin_types_are_listed_and_reserved() {
        let names: Vec<String> = builtins().into_iter().map(|b| b.event_type.name).collect();
        for name in [
            operational::ENDPOINT_DISABLED,
            operational::ENDPOINT_RECOVERED,
            operational::MESSAGE_EXHAUSTED,
            operational::SUBSCRIPTION_DISABLED,
        ] {
            assert!(names.iter().any(|n| n == name), "{name}");
            assert!(refuse_builtin(name, StatusCode::FORBIDDEN).is_err());
        }
        assert!(refuse_builtin("order.created", StatusCode::BAD_REQUEST).is_ok());
    }
}
