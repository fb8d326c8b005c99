//! Payload filters: which events of a matching type a subscription actually wants, such as
//! "only orders over 100 EUR". A filter is a JSON object, checked once when it is saved and
//! compiled into a small tree that the dispatcher evaluates per delivery, after the type match.
//!
//! ```json
//! {"data.total": {"$gte": 100}, "data.currency": "EUR", "$or": [{"type": "order.created"}, {"data.vip": true}]}
//! ```
//!
//! - The members of an object must all hold (an implicit `$and`); `{}` matches every event.
//! - A member's key is a path: `type`, `consumer`, `data`, or `data.` followed by field names
//!   separated by dots; a segment of digits also indexes an array (`data.items.0.sku`).
//! - A member's value is a literal (`$eq`) or an object of operators, all of which must hold:
//!   `$eq $ne $in $nin $gt $gte $lt $lte $exists $prefix`.
//! - `$and` and `$or` take a non-empty array of filters, `$not` one filter.
//!
//! Rules: values compare as JSON (numbers by value, `1` equals `1.0`; no conversion between
//! strings and numbers). `$gt $gte $lt $lte` take a number or a string (strings compare by
//! bytes, so RFC 3339 UTC times order correctly) and are false when the value is missing or of
//! the other kind. `$ne` and `$nin` hold when the value is missing. `$prefix` takes a string.
//! Size is bounded ([`MAX_FILTER_BYTES`], [`MAX_DEPTH`], [`MAX_CONDITIONS`], [`MAX_IN`]) so a
//! hostile filter cannot make delivery slow.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Largest filter accepted, as compact JSON.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest nesting of `$and`, `$or` and `$not`.
pub const MAX_DEPTH: usize = 6;
/// Most conditions (path tests) in one filter.
pub const MAX_CONDITIONS: usize = 32;
/// Most values in one `$in` or `$nin`.
pub const MAX_IN: usize = 64;
/// Most segments in one path (`data.a.b` has three).
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 256;

/// Why a filter was refused: where in the filter, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (at {at})")]
pub struct FilterError {
    /// Location in the filter, e.g. `$or[1].data.total.$gt`; `filter` for the whole filter.
    pub at: String,
    /// What is wrong there.
    pub reason: String,
}

/// What a filter sees of an event.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The event type.
    pub event_type: &'a str,
    /// The consumer the event names, if any.
    pub consumer: Option<&'a str>,
    /// The event's `data`.
    pub data: &'a Value,
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadFilter {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Test(Path, Op),
}

#[derive(Debug, Clone, PartialEq)]
enum Root {
    Type,
    Consumer,
    Data,
}

#[derive(Debug, Clone, PartialEq)]
struct Path {
    root: Root,
    /// Field names under `data`, each with its array index when it is all digits.
    segments: Vec<(String, Option<usize>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Cmp(Ordering, bool, Bound),
    Exists(bool),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Bound {
    Number(Number),
    String(String),
}

/// A value found at a path: `type` and `consumer` are strings outside the JSON of `data`.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    Str(&'a str),
    Json(&'a Value),
}

impl PayloadFilter {
    /// Checks and compiles a filter.
    ///
    /// # Errors
    /// A [`FilterError`] naming the path or operator at fault.
    pub fn parse(filter: &Value) -> Result<Self, FilterError> {
        let size = serde_json::to_vec(filter).map_or(usize::MAX, |v| v.len());
        if size > MAX_FILTER_BYTES {
            return Err(FilterError {
                at: String::from("filter"),
                reason: format!("is {size} bytes; at most {MAX_FILTER_BYTES} are allowed"),
            });
        }
        let mut parser = Parser { conditions: 0 };
        let root = parser.filter(filter, "", 0)?;
        Ok(Self { root })
    }

    /// Whether the event passes the filter.
    pub fn matches(&self, subject: &Subject<'_>) -> bool {
        self.root.eval(subject)
    }
}

struct Parser {
    conditions: usize,
}

fn at(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_owned()
    } else if part.starts_with('[') {
        format!("{prefix}{part}")
    } else {
        format!("{prefix}.{part}")
    }
}

fn fail<T>(at: impl Into<String>, reason: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError {
        at: at.into(),
        reason: reason.into(),
    })
}

const COMPARISONS: &str = "$eq, $ne, $in, $nin, $gt, $gte, $lt, $lte, $exists, $prefix";

impl Parser {
    fn filter(&mut self, value: &Value, loc: &str, depth: usize) -> Result<Node, FilterError> {
        let here = if loc.is_empty() { "filter" } else { loc };
        let Value::Object(members) = value else {
            return fail(here, "must be a JSON object");
        };
        if depth > MAX_DEPTH {
            return fail(
                here,
                format!("nests $and, $or and $not deeper than {MAX_DEPTH} levels"),
            );
        }
        let mut all = Vec::with_capacity(members.len());
        for (key, member) in members {
            let loc = at(loc, key);
            all.push(match key.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = member else {
                        return fail(loc, "must be an array of filters");
                    };
                    if items.is_empty() {
                        return fail(loc, "must not be empty");
                    }
                    let nodes = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.filter(item, &at(&loc, &format!("[{i}]")), depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "$and" {
                        Node::All(nodes)
                    } else {
                        Node::Any(nodes)
                    }
                }
                "$not" => Node::Not(Box::new(self.filter(member, &loc, depth + 1)?)),
                op if op.starts_with('$') => {
                    return fail(
                        loc,
                        format!(
                            "unknown operator {op}: a filter's members are paths (type, consumer, \
                             data.…) or $and, $or, $not; {COMPARISONS} go inside a path, as in \
                             {{\"data.total\": {{\"$gt\": 100}}}}"
                        ),
                    );
                }
                path => self.conditions(path, member, &loc)?,
            });
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Node::All(all)
        })
    }

    fn conditions(&mut self, path: &str, value: &Value, loc: &str) -> Result<Node, FilterError> {
        let path = parse_path(path, loc)?;
        let ops: Vec<(String, &Value)> = match value {
            Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
                if let Some(k) = ops.keys().find(|k| !k.starts_with('$')) {
                    return fail(
                        at(loc, k),
                        "operators and fields cannot be mixed; compare a whole object with $eq",
                    );
                }
                ops.iter().map(|(k, v)| (k.clone(), v)).collect()
            }
            Value::Object(ops) if ops.is_empty() => {
                return fail(loc, format!("needs an operator ({COMPARISONS}) or a value"));
            }
            literal => vec![(String::from("$eq"), literal)],
        };
        let mut tests = Vec::with_capacity(ops.len());
        for (name, operand) in ops {
            self.conditions += 1;
            if self.conditions > MAX_CONDITIONS {
                return fail(
                    loc,
                    format!("more than {MAX_CONDITIONS} conditions in one filter"),
                );
            }
            let loc = at(loc, &name);
            let op = parse_op(&name, operand, &loc)?;
            check_operand_fits_root(&path, &op, &loc)?;
            tests.push(Node::Test(path.clone(), op));
        }
        Ok(if tests.len() == 1 {
            tests.remove(0)
        } else {
            Node::All(tests)
        })
    }
}

fn parse_path(path: &str, loc: &str) -> Result<Path, FilterError> {
    if path.len() > MAX_PATH_LEN {
        return fail(loc, format!("path is longer than {MAX_PATH_LEN} bytes"));
    }
    let mut parts = path.split('.');
    let root = match parts.next() {
        Some("type") => Root::Type,
        Some("consumer") => Root::Consumer,
        Some("data") => Root::Data,
        _ => {
            return fail(
                loc,
                "unknown path: a path is type, consumer, data, or data.<field>[.<field>…]",
            );
        }
    };
    let segments: Vec<(String, Option<usize>)> = parts
        .map(|s| {
            // `usize::from_str` also takes "+1"; only plain digits index an array.
            let index = if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok()
            } else {
                None
            };
            (s.to_owned(), index)
        })
        .collect();
    if root != Root::Data && !segments.is_empty() {
        return fail(loc, "type and consumer are strings and have no fields");
    }
    if segments.iter().any(|(s, _)| s.is_empty()) {
        return fail(loc, "path has an empty segment");
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return fail(
            loc,
            format!("path has more than {MAX_PATH_SEGMENTS} segments"),
        );
    }
    Ok(Path { root, segments })
}

fn parse_op(name: &str, operand: &Value, loc: &str) -> Result<Op, FilterError> {
    let bound = || match operand {
        Value::Number(n) => Ok(Bound::Number(n.clone())),
        Value::String(s) => Ok(Bound::String(s.clone())),
        _ => fail(loc, format!("{name} takes a number or a string")),
    };
    let list = || match operand {
        Value::Array(items) if items.is_empty() => fail(loc, format!("{name} must not be empty")),
        Value::Array(items) if items.len() > MAX_IN => fail(
            loc,
            format!("{name} has {} values; at most {MAX_IN}", items.len()),
        ),
        Value::Array(items) => Ok(items.clone()),
        _ => fail(loc, format!("{name} takes an array")),
    };
    Ok(match name {
        "$eq" => Op::Eq(operand.clone()),
        "$ne" => Op::Ne(operand.clone()),
        "$in" => Op::In(list()?),
        "$nin" => Op::Nin(list()?),
        "$gt" => Op::Cmp(Ordering::Greater, false, bound()?),
        "$gte" => Op::Cmp(Ordering::Greater, true, bound()?),
        "$lt" => Op::Cmp(Ordering::Less, false, bound()?),
        "$lte" => Op::Cmp(Ordering::Less, true, bound()?),
        "$exists" => match operand {
            Value::Bool(b) => Op::Exists(*b),
            _ => return fail(loc, "$exists takes true or false"),
        },
        "$prefix" => match operand {
            Value::String(s) => Op::Prefix(s.clone()),
            _ => return fail(loc, "$prefix takes a string"),
        },
        "$and" | "$or" | "$not" => {
            return fail(
                loc,
                format!(
                    "{name} combines filters and belongs outside a path, as in {{\"{name}\": …}}"
                ),
            );
        }
        other => {
            return fail(
                loc,
                format!("unknown operator {other}; use one of {COMPARISONS}"),
            );
        }
    })
}

/// `type` and `consumer` are strings: a number or object compared with them can never match,
/// which is a mistake worth refusing at save.
fn check_operand_fits_root(path: &Path, op: &Op, loc: &str) -> Result<(), FilterError> {
    if path.root == Root::Data {
        return Ok(());
    }
    let string_like = |v: &Value| v.is_string() || (path.root == Root::Consumer && v.is_null());
    let ok = match op {
        Op::Eq(v) | Op::Ne(v) => string_like(v),
        Op::In(vs) | Op::Nin(vs) => vs.iter().all(string_like),
        Op::Cmp(_, _, b) => matches!(b, Bound::String(_)),
        Op::Exists(_) | Op::Prefix(_) => true,
    };
    if ok {
        Ok(())
    } else {
        fail(
            loc,
            "type and consumer are strings; compare them with strings",
        )
    }
}

impl Node {
    fn eval(&self, subject: &Subject<'_>) -> bool {
        match self {
            Self::All(nodes) => nodes.iter().all(|n| n.eval(subject)),
            Self::Any(nodes) => nodes.iter().any(|n| n.eval(subject)),
            Self::Not(node) => !node.eval(subject),
            Self::Test(path, op) => op.holds(path.resolve(subject)),
        }
    }
}

impl Path {
    fn resolve<'a>(&self, subject: &Subject<'a>) -> Option<Found<'a>> {
        match self.root {
            Root::Type => Some(Found::Str(subject.event_type)),
            Root::Consumer => subject.consumer.map(Found::Str),
            Root::Data => {
                let mut value = subject.data;
                for (name, index) in &self.segments {
                    value = match value {
                        Value::Object(map) => map.get(name)?,
                        Value::Array(items) => items.get((*index)?)?,
                        _ => return None,
                    };
                }
                Some(Found::Json(value))
            }
        }
    }
}

impl Op {
    fn holds(&self, found: Option<Found<'_>>) -> bool {
        match self {
            Self::Eq(v) => found.is_some_and(|f| equals(f, v)),
            Self::Ne(v) => !found.is_some_and(|f| equals(f, v)),
            Self::In(vs) => found.is_some_and(|f| vs.iter().any(|v| equals(f, v))),
            Self::Nin(vs) => !found.is_some_and(|f| vs.iter().any(|v| equals(f, v))),
            Self::Cmp(side, inclusive, bound) => found
                .and_then(|f| compare(f, bound))
                .is_some_and(|o| o == *side || (*inclusive && o == Ordering::Equal)),
            Self::Exists(wanted) => found.is_some() == *wanted,
            Self::Prefix(prefix) => match found {
                Some(Found::Str(s)) => s.starts_with(prefix.as_str()),
                Some(Found::Json(Value::String(s))) => s.starts_with(prefix.as_str()),
                _ => false,
            },
        }
    }
}

fn equals(found: Found<'_>, expected: &Value) -> bool {
    match found {
        Found::Str(s) => expected.as_str() == Some(s),
        Found::Json(v) => json_equals(v, expected),
    }
}

/// JSON equality with numbers compared by value, so `1` equals `1.0`.
fn json_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equals(a, b))
        }
        (Value::Object(x), Value::Object(y)) => objects_equal(x, y),
        _ => a == b,
    }
}

fn objects_equal(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len()
        && x.iter()
            .all(|(k, a)| y.get(k).is_some_and(|b| json_equals(a, b)))
}

fn compare(found: Found<'_>, bound: &Bound) -> Option<Ordering> {
    match (found, bound) {
        (Found::Str(s), Bound::String(b)) => Some(s.cmp(b.as_str())),
        (Found::Json(Value::String(s)), Bound::String(b)) => Some(s.as_str().cmp(b.as_str())),
        (Found::Json(Value::Number(n)), Bound::Number(b)) => compare_numbers(n, b),
        _ => None,
    }
}

/// Integers compare exactly (beyond 2^53 too); anything else as `f64`.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order() -> Value {
        json!({
            "total": 150,
            "price": 99.5,
            "currency": "EUR",
            "vip": false,
            "note": null,
            "customer": {"id": "c_1", "tier": "gold", "since": "2024-03-01T00:00:00Z"},
            "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
            "tags": ["new", "eu"],
            "big": 9_007_199_254_740_993_u64,
        })
    }

    fn check(filter: Value, event_type: &str, consumer: Option<&str>, data: &Value) -> bool {
        let compiled = PayloadFilter::parse(&filter)
            .unwrap_or_else(|e| panic!("filter {filter} refused: {e}"));
        compiled.matches(&Subject {
            event_type,
            consumer,
            data,
        })
    }

    #[test]
    fn payloads_times_filters() {
        let order = order();
        let other = json!({"total": "150", "currency": "USD", "items": []});
        let scalar = json!(42);
        let null = Value::Null;
        // (filter, expected for: order/acme, order/no consumer, other, scalar data, null data)
        let table: Vec<(Value, [bool; 5])> = vec![
            (json!({}), [true, true, true, true, true]),
            (
                json!({"data.total": {"$gt": 100}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.total": {"$gte": 150}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.total": {"$gt": 150}}),
                [false, false, false, false, false],
            ),
            (
                json!({"data.total": {"$lt": 150.5, "$gt": 149}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.total": {"$lte": 150.0}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.total": 150.0}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.total": "150"}),
                [false, false, true, false, false],
            ),
            (
                json!({"data.price": {"$lt": 100}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.currency": "EUR"}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.currency": {"$ne": "EUR"}}),
                [false, false, true, true, true],
            ),
            (
                json!({"data.currency": {"$in": ["EUR", "GBP"]}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.currency": {"$nin": ["EUR", "GBP"]}}),
                [false, false, true, true, true],
            ),
            (
                json!({"data.vip": false}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.note": null}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.note": {"$exists": true}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.vip": {"$exists": false}}),
                [false, false, true, true, true],
            ),
            (
                json!({"data.customer.tier": "gold"}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.customer.since": {"$gte": "2024-01-01T00:00:00Z"}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.customer.id": {"$prefix": "c_"}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.items.1.sku": "B-7"}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.items.0": {"$eq": {"qty": 2.0, "sku": "A-1"}}}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.items.2": {"$exists": true}}),
                [false, false, false, false, false],
            ),
            (
                json!({"data.tags": ["new", "eu"]}),
                [true, true, false, false, false],
            ),
            (
                json!({"data.big": {"$gt": 9_007_199_254_740_992_u64}}),
                [true, true, false, false, false],
            ),
            (json!({"data": 42}), [false, false, false, true, false]),
            (
                json!({"data": {"$exists": true}}),
                [true, true, true, true, true],
            ),
            (
                json!({"data.total.x": {"$exists": true}}),
                [false, false, false, false, false],
            ),
            (
                json!({"type": "order.created"}),
                [true, true, true, true, true],
            ),
            (
                json!({"type": {"$prefix": "invoice."}}),
                [false, false, false, false, false],
            ),
            (json!({"consumer": "acme"}), [true, false, true, true, true]),
            (
                json!({"consumer": {"$exists": false}}),
                [false, true, false, false, false],
            ),
            (
                json!({"consumer": {"$ne": "acme"}}),
                [false, true, false, false, false],
            ),
            (
                json!({"$or": [{"data.currency": "USD"}, {"data.total": {"$gt": 100}}]}),
                [true, true, true, false, false],
            ),
            (
                json!({"$and": [{"data.currency": "EUR"}, {"data.vip": true}]}),
                [false, false, false, false, false],
            ),
            (
                json!({"$not": {"data.currency": "EUR"}}),
                [false, false, true, true, true],
            ),
            (
                json!({"data.currency": "EUR", "$not": {"$or": [{"data.vip": true}, {"data.total": {"$lt": 10}}]}}),
                [true, true, false, false, false],
            ),
        ];
        for (filter, expected) in table {
            let got = [
                check(filter.clone(), "order.created", Some("acme"), &order),
                check(filter.clone(), "order.created", None, &order),
                check(filter.clone(), "order.created", Some("acme"), &other),
                check(filter.clone(), "order.created", Some("acme"), &scalar),
                check(filter.clone(), "order.created", Some("acme"), &null),
            ];
            assert_eq!(got, expected, "filter {filter}");
        }
    }

    fn refused(filter: Value) -> FilterError {
        PayloadFilter::parse(&filter).expect_err(&format!("{filter} accepted"))
    }

    #[test]
    fn mistakes_are_refused_naming_where() {
        let cases = [
            (json!([]), "filter", "must be a JSON object"),
            (json!({"total": 1}), "total", "unknown path"),
            (json!({"data.": 1}), "data.", "empty segment"),
            (json!({"type.x": "a"}), "type.x", "no fields"),
            (json!({"type": 5}), "type.$eq", "strings"),
            (
                json!({"consumer": {"$in": ["a", 1]}}),
                "consumer.$in",
                "strings",
            ),
            (json!({"$gt": 5}), "$gt", "unknown operator $gt"),
            (
                json!({"data.total": {"$gt": true}}),
                "data.total.$gt",
                "number or a string",
            ),
            (
                json!({"data.total": {"$regex": "x"}}),
                "data.total.$regex",
                "unknown operator $regex",
            ),
            (
                json!({"data.total": {"$or": []}}),
                "data.total.$or",
                "outside a path",
            ),
            (
                json!({"data.total": {"$gt": 1, "x": 2}}),
                "data.total.x",
                "cannot be mixed",
            ),
            (json!({"data.total": {}}), "data.total", "needs an operator"),
            (
                json!({"data.total": {"$in": 5}}),
                "data.total.$in",
                "takes an array",
            ),
            (
                json!({"data.total": {"$in": []}}),
                "data.total.$in",
                "must not be empty",
            ),
            (
                json!({"data.x": {"$exists": 1}}),
                "data.x.$exists",
                "true or false",
            ),
            (
                json!({"data.x": {"$prefix": 1}}),
                "data.x.$prefix",
                "takes a string",
            ),
            (json!({"$or": {}}), "$or", "array of filters"),
            (json!({"$and": []}), "$and", "must not be empty"),
            (json!({"$or": [{"data.a": 1}, 5]}), "$or[1]", "JSON object"),
            (
                json!({"$not": {"$or": [{"data.a": {"$bad": 1}}]}}),
                "$not.$or[0].data.a.$bad",
                "unknown operator",
            ),
        ];
        for (filter, at, reason) in cases {
            let e = refused(filter.clone());
            assert_eq!(e.at, at, "{filter}: {e}");
            assert!(e.reason.contains(reason), "{filter}: {e}");
        }
    }

    #[test]
    fn hostile_filters_are_refused() {
        // Deep nesting.
        let mut deep = json!({"data.a": 1});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"$not": deep});
        }
        assert!(refused(deep).reason.contains("deeper than"));
        // A huge $in.
        let many: Vec<u32> = (0..=u32::try_from(MAX_IN).unwrap()).collect();
        assert!(
            refused(json!({"data.a": {"$in": many}}))
                .reason
                .contains("at most")
        );
        // Too many conditions, each small.
        let wide: Map<String, Value> = (0..=MAX_CONDITIONS)
            .map(|i| (format!("data.f{i}"), json!(i)))
            .collect();
        assert!(refused(Value::Object(wide)).reason.contains("conditions"));
        // Too large overall.
        let long = "x".repeat(MAX_FILTER_BYTES);
        assert!(refused(json!({"data.a": long})).reason.contains("bytes"));
        // A long path.
        let path = format!("data{}", ".a".repeat(MAX_PATH_SEGMENTS + 1));
        assert!(refused(json!({ path: 1 })).reason.contains("segments"));
        // Within every bound is accepted.
        let mut ok = json!({"data.a": {"$in": (0..MAX_IN).collect::<Vec<_>>()}});
        for _ in 0..MAX_DEPTH {
            ok = json!({"$not": ok});
        }
        assert!(PayloadFilter::parse(&ok).is_ok());
    }
}
