//! The OpenAPI 3 document of the API.
pub fn document() -> serde_json::Value {
    serde_json::json!({})
}
