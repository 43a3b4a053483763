//! The JSON Schema an event type's `data` must satisfy (`[events.schemas]` in the config): read
//! and compiled once when the config loads, checked on every publish of that type, and a failure
//! described as a JSON Pointer into `data` plus what failed there.
//!
//! The validator is `boon` (JSON Schema 2020-12 by default; a schema's own `$schema` may pick
//! draft 2019-09, 7, 6 or 4). It was chosen over the `jsonschema` crate for its cost and its
//! bounds: a small dependency tree (most of it already in ours), and `pattern` through the
//! `regex` crate, whose matching is linear in the input, so checking an event costs time
//! proportional to its size for a given schema (the body is capped by
//! `api.max_event_body_bytes`); `jsonschema` matches with a backtracking engine (`fancy-regex`).
//!
//! No I/O but reading the schema files at load time; `$ref`s to other files resolve relative to
//! the schema file (only `file:` URLs: nothing is fetched from the network).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

/// Largest schema file (and file a schema `$ref`s) read, in bytes.
pub const MAX_SCHEMA_FILE_BYTES: u64 = 1024 * 1024;

/// Longest description of a failure put in an answer, in characters (a `pattern` or `format`
/// failure quotes the value, which may be long).
const MAX_REASON_CHARS: usize = 300;

/// A compiled JSON Schema of one event type's `data`. Cheap to clone (shared).
#[derive(Clone)]
pub struct DataSchema(Arc<Compiled>);

struct Compiled {
    /// The schema document as written in the file (answered by `GET /v1/event-types`).
    document: Value,
    /// The file it came from.
    path: PathBuf,
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl std::fmt::Debug for DataSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DataSchema").field(&self.0.path).finish()
    }
}

/// Why a schema file cannot be used; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(String);

/// Where and how an event's `data` fails its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMismatch {
    /// JSON Pointer (RFC 6901) of the failing value inside `data`: `""` for `data` itself,
    /// `/customer/email`, `/items/0`.
    pub pointer: String,
    /// What failed there, in words (`want string, but got number`, `missing properties 'id'`).
    pub reason: String,
    /// How many other failures the schema found besides this one.
    pub others: usize,
}

impl DataSchema {
    /// Reads and compiles the schema file at `path` (absolute, or relative to the working
    /// directory). Errors: the file cannot be read or is larger than
    /// [`MAX_SCHEMA_FILE_BYTES`], it is not JSON, or it is not a valid JSON Schema (checked
    /// against its draft's meta-schema; unresolvable `$ref`s included).
    pub fn load(path: &Path) -> Result<DataSchema, SchemaError> {
        let document =
            read_json(path).map_err(|reason| SchemaError(format!("{}: {reason}", path.display())))?;
        let absolute =
            std::path::absolute(path).map_err(|err| SchemaError(format!("{}: {err}", path.display())))?;
        let url = url::Url::from_file_path(&absolute)
            .map_err(|_| SchemaError(format!("{}: not a usable file path", path.display())))?;
        DataSchema::compile(document, url.as_str(), absolute)
            .map_err(|reason| SchemaError(format!("{} is not a valid JSON Schema: {reason}", path.display())))
    }

    /// Compiles `document` as if read from `url` (tests and built-in schemas).
    fn compile(document: Value, url: &str, path: PathBuf) -> Result<DataSchema, String> {
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        // A schema that says `"format": "email"` means it: checked, as draft 7 did and most
        // validators' users turn on (2020-12 leaves it an annotation by default).
        compiler.enable_format_assertions();
        let mut loader = boon::SchemeUrlLoader::new();
        loader.register("file", Box::new(BoundedFileLoader));
        compiler.use_loader(Box::new(loader));
        compiler.add_resource(url, document.clone()).map_err(|err| one_line(&format!("{err:#}")))?;
        let mut schemas = boon::Schemas::new();
        let index = compiler.compile(url, &mut schemas).map_err(|err| one_line(&format!("{err:#}")))?;
        Ok(DataSchema(Arc::new(Compiled { document, path, schemas, index })))
    }

    /// The schema document as the file holds it.
    pub fn document(&self) -> &Value {
        &self.0.document
    }

    /// The file the schema was read from.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Checks an event's `data` (the client's raw JSON). Its cost is bounded by the size of
    /// `data` (see the module comment). `Err` names the first failure found (the deepest
    /// value at fault, in document order) and counts the others.
    pub fn check(&self, data: &RawValue) -> Result<(), DataMismatch> {
        let value: Value = serde_json::from_str(data.get()).map_err(|_| DataMismatch {
            pointer: String::new(),
            // serde_json refuses nesting deeper than 128 levels.
            reason: "is nested too deeply to be checked against the schema (at most 128 levels)".to_owned(),
            others: 0,
        })?;
        let Err(error) = self.0.schemas.validate(&value, self.0.index) else { return Ok(()) };
        let leaves = count_leaves(&error);
        let (pointer, reason) = describe(&error);
        Err(DataMismatch { pointer, reason: truncate(&reason), others: leaves.saturating_sub(1) })
    }
}

/// The failure to report: follows the first cause down to the value at fault, except where a
/// failure is about the alternatives as a whole (`anyOf`, `oneOf`, `not`), which is reported at
/// its own place, as descending into one alternative would blame the wrong one.
fn describe(error: &boon::ValidationError<'_, '_>) -> (String, String) {
    use boon::ErrorKind;
    let pointer = error.instance_location.to_string();
    match &error.kind {
        ErrorKind::AnyOf => (pointer, "matches none of the schemas of anyOf".to_owned()),
        ErrorKind::OneOf(None) => (pointer, "matches none of the schemas of oneOf".to_owned()),
        ErrorKind::OneOf(Some((first, second))) => (
            pointer,
            format!("matches both schema {first} and schema {second} of oneOf (it must match exactly one)"),
        ),
        ErrorKind::Not => (pointer, "matches the schema of not".to_owned()),
        ErrorKind::FalseSchema => (pointer, "is not allowed here (the schema is false)".to_owned()),
        ErrorKind::PropertyName { prop } => {
            let why = error.causes.first().map(|cause| describe(cause).1).unwrap_or_default();
            (pointer, format!("property name {prop:?} is not allowed: {why}"))
        }
        _ => match error.causes.first() {
            Some(cause) => describe(cause),
            None => (pointer, error.kind.to_string()),
        },
    }
}

/// The failures at the bottom of the tree (the ones a person would fix).
fn count_leaves(error: &boon::ValidationError<'_, '_>) -> usize {
    if error.causes.is_empty() {
        1
    } else {
        error.causes.iter().map(count_leaves).sum()
    }
}

fn truncate(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_owned(),
    }
}

/// boon's errors draw a tree over several lines; a config error is one line.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Reads a JSON file of at most [`MAX_SCHEMA_FILE_BYTES`].
fn read_json(path: &Path) -> Result<Value, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read it: {err}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_SCHEMA_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read it: {err}"))?;
    if bytes.len() as u64 > MAX_SCHEMA_FILE_BYTES {
        return Err(format!("is larger than {MAX_SCHEMA_FILE_BYTES} bytes"));
    }
    serde_json::from_slice(&bytes).map_err(|err| format!("is not JSON: {err}"))
}

/// Loads the files a schema `$ref`s, with the same size limit; the only scheme registered, so
/// a `$ref` to an `http(s)` URL is a compile error rather than a network fetch.
struct BoundedFileLoader;

impl boon::UrlLoader for BoundedFileLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        let path = url::Url::parse(url)?.to_file_path().map_err(|_| format!("{url} is not a file path"))?;
        Ok(read_json(&path).map_err(|reason| format!("{}: {reason}", path.display()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(document: Value) -> DataSchema {
        DataSchema::compile(document, "file:///schemas/test.json", PathBuf::from("/schemas/test.json"))
            .unwrap()
    }

    fn check(schema: &DataSchema, data: &str) -> Result<(), DataMismatch> {
        schema.check(&RawValue::from_string(data.to_owned()).unwrap())
    }

    fn message_schema() -> DataSchema {
        schema(json!({
            "type": "object",
            "required": ["conversationId", "text"],
            "properties": {
                "conversationId": {"type": "string"},
                "text": {"type": "string", "maxLength": 10},
                "sender": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
                "channel": {"anyOf": [{"const": "email"}, {"const": "chat"}]},
                "a/b": {"type": "integer"}
            }
        }))
    }

    #[test]
    fn valid_data_passes() {
        let schema = message_schema();
        assert_eq!(check(&schema, r#"{"conversationId": "c_1", "text": "hi", "tags": ["a"]}"#), Ok(()));
    }

    #[test]
    fn a_failure_names_its_json_pointer_and_reason() {
        let schema = message_schema();
        let cases = [
            (r#"{"text": "hi"}"#, "", "missing properties 'conversationId'"),
            (r#"{"conversationId": 1, "text": "hi"}"#, "/conversationId", "want string, but got number"),
            (
                r#"{"conversationId": "c", "text": "hi", "tags": ["ok", "NO"]}"#,
                "/tags/1",
                "does not match pattern",
            ),
            (
                r#"{"conversationId": "c", "text": "hi", "sender": {"email": "nope"}}"#,
                "/sender/email",
                "is not valid email",
            ),
            (
                r#"{"conversationId": "c", "text": "hi", "channel": "fax"}"#,
                "/channel",
                "none of the schemas of anyOf",
            ),
            (r#"{"conversationId": "c", "text": "hi", "a/b": "x"}"#, "/a~1b", "want integer"),
        ];
        for (data, pointer, reason) in cases {
            let mismatch = check(&schema, data).unwrap_err();
            assert_eq!(mismatch.pointer, pointer, "{data}: {mismatch:?}");
            assert!(mismatch.reason.contains(reason), "{data}: {mismatch:?}");
        }
    }

    #[test]
    fn other_failures_are_counted() {
        let mismatch = check(&message_schema(), r#"{"text": 5}"#).unwrap_err();
        assert_eq!(mismatch.others, 1, "{mismatch:?}");
    }

    #[test]
    fn a_long_reason_is_cut() {
        let long = "X".repeat(5000);
        let mismatch = check(
            &message_schema(),
            &format!(r#"{{"conversationId": "c", "text": "hi", "tags": ["{long}"]}}"#),
        )
        .unwrap_err();
        assert!(mismatch.reason.chars().count() <= MAX_REASON_CHARS + 1, "{}", mismatch.reason.len());
    }

    #[test]
    fn too_deep_data_is_refused_not_overflowed() {
        let schema = schema(json!({"type": "object"}));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        // Whether serde_json already refuses this depth as raw JSON or only when the schema
        // check parses it, the answer is an error, never a stack overflow.
        if let Ok(raw) = RawValue::from_string(deep) {
            assert!(schema.check(&raw).is_err());
        }
    }

    #[test]
    fn an_invalid_schema_is_refused_at_compile_time() {
        for document in [
            json!({"type": "objekt"}),
            json!({"minLength": -1}),
            json!({"$ref": "https://example.com/remote.json"}),
            json!({"$ref": "#/$defs/missing"}),
            json!({"pattern": "("}),
        ] {
            let result =
                DataSchema::compile(document.clone(), "file:///schemas/bad.json", PathBuf::from("/x"));
            let Err(reason) = result else { panic!("{document} compiled") };
            assert!(!reason.contains('\n'), "{reason}");
        }
    }

    #[test]
    fn load_names_the_file_in_every_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = DataSchema::load(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.json") && err.contains("cannot read"), "{err}");
        let not_json = dir.path().join("broken.json");
        std::fs::write(&not_json, "{ nope").unwrap();
        let err = DataSchema::load(&not_json).unwrap_err().to_string();
        assert!(err.contains("broken.json") && err.contains("is not JSON"), "{err}");
        let invalid = dir.path().join("invalid.json");
        std::fs::write(&invalid, r#"{"type": 12}"#).unwrap();
        let err = DataSchema::load(&invalid).unwrap_err().to_string();
        assert!(err.contains("invalid.json is not a valid JSON Schema"), "{err}");
        let big = dir.path().join("big.json");
        std::fs::write(
            &big,
            format!("{{\"description\": \"{}\"}}", "x".repeat(MAX_SCHEMA_FILE_BYTES as usize)),
        )
        .unwrap();
        let err = DataSchema::load(&big).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn a_ref_to_a_sibling_file_resolves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id.json"), r#"{"type": "string", "minLength": 3}"#).unwrap();
        let main = dir.path().join("main.json");
        std::fs::write(&main, r#"{"type": "object", "properties": {"id": {"$ref": "id.json"}}}"#).unwrap();
        let schema = DataSchema::load(&main).unwrap();
        assert_eq!(schema.document()["type"], "object");
        assert_eq!(check(&schema, r#"{"id": "abc"}"#), Ok(()));
        assert_eq!(check(&schema, r#"{"id": "a"}"#).unwrap_err().pointer, "/id");
    }
}
