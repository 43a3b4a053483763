//! HTML form posts (`application/x-www-form-urlencoded`) turned into the JSON API's own request
//! bodies, so the portal is validated by exactly the API's code and answers its error texts.
//! Field names are the API's (`name`, `url`, `events`, `headers`, `maxRetries`,
//! `retryDelaySeconds`, `rateLimitPerSecond`); only the shapes HTML cannot send are translated here: repeated
//! `events` checkboxes, and custom headers as `Name: value` lines.

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::webhooks::{CreateBody, Integer, PatchBody};

/// A parsed form: every (name, value) pair in order.
#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// The first value of a field, empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).unwrap_or("")
    }

    /// Every value of a repeated field.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(key, _)| key == name).map(|(_, value)| value.clone()).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(key, _)| key == name)
    }
}

/// The editable fields of a subscription form, as typed (kept to show the form again with an
/// error, so nothing typed is lost).
#[derive(Debug, Default, Clone)]
pub struct SubscriptionFields {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    /// `Name: value` lines.
    pub headers: String,
    pub max_retries: String,
    pub retry_delay_seconds: String,
    /// Empty: no limit.
    pub rate_limit_per_second: String,
    pub is_paused: bool,
}

impl SubscriptionFields {
    pub fn from_form(form: &Form) -> SubscriptionFields {
        SubscriptionFields {
            name: form.get("name").to_owned(),
            url: form.get("url").trim().to_owned(),
            events: form.all("events"),
            headers: form.get("headers").to_owned(),
            max_retries: form.get("maxRetries").trim().to_owned(),
            retry_delay_seconds: form.get("retryDelaySeconds").trim().to_owned(),
            rate_limit_per_second: form.get("rateLimitPerSecond").trim().to_owned(),
            is_paused: form.has("isPaused"),
        }
    }

    /// The body of `POST /v1/webhooks` these fields make.
    pub(crate) fn create_body(&self) -> Result<CreateBody, ApiError> {
        Ok(CreateBody {
            name: self.name.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            headers: Some(parse_headers(&self.headers)?),
            max_retries: Some(integer(&self.max_retries, 5)),
            retry_delay_seconds: Some(integer(&self.retry_delay_seconds, 30)),
            is_active: None,
            is_paused: Some(self.is_paused),
            rate_limit_per_second: optional_integer(&self.rate_limit_per_second),
        })
    }

    /// The body of `PATCH /v1/webhooks/:id` that sets every editable field.
    pub(crate) fn patch_body(&self) -> Result<PatchBody, ApiError> {
        Ok(PatchBody {
            name: Some(self.name.clone()),
            url: Some(self.url.clone()),
            events: Some(self.events.clone()),
            headers: Some(parse_headers(&self.headers)?),
            max_retries: Some(integer(&self.max_retries, 5)),
            retry_delay_seconds: Some(integer(&self.retry_delay_seconds, 30)),
            // An emptied field removes the limit.
            rate_limit_per_second: Some(optional_integer(&self.rate_limit_per_second)),
            ..PatchBody::default()
        })
    }
}

/// A number field: empty is the API default; text that is not a whole number becomes a value
/// outside every range, so the API's own range check names the field and its bounds.
fn integer(text: &str, default: i64) -> Integer {
    if text.is_empty() {
        return Integer(default);
    }
    Integer(text.parse::<i64>().unwrap_or(i64::MIN))
}

/// An optional number field: empty is `null` (none); otherwise as [`integer`].
fn optional_integer(text: &str) -> Option<Integer> {
    (!text.is_empty()).then(|| integer(text, 0))
}

/// `Name: value` lines (blank lines skipped) into the API's `headers` object. Whitespace around
/// the value is dropped, as HTTP does; everything else is the API's validation.
fn parse_headers(text: &str) -> Result<Map<String, Value>, ApiError> {
    let mut headers = Map::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ApiError::validation(format!(
                "headers: line {} is not \"Name: value\" (one custom header per line)",
                index + 1
            )));
        };
        let name = name.trim();
        if headers.contains_key(name) {
            return Err(ApiError::validation(format!("headers: {name:?} is given twice")));
        }
        headers.insert(name.to_owned(), Value::String(value.trim().to_owned()));
    }
    Ok(headers)
}

/// Custom headers as the `Name: value` lines of the form.
pub fn headers_text(headers: &[(String, String)]) -> String {
    headers.iter().map(|(name, value)| format!("{name}: {value}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_api_bodies() {
        let form = Form::parse(
            b"name=a+b&url=https%3A%2F%2Fx.example&events=message.sent&events=sla.breached&headers=X-One%3A+1%0D%0A%0D%0AX-Two%3A2&maxRetries=&retryDelaySeconds=7",
        );
        let body = SubscriptionFields::from_form(&form).create_body().unwrap();
        assert_eq!(body.name, "a b");
        assert_eq!(body.events, ["message.sent", "sla.breached"]);
        let headers = body.headers.unwrap();
        assert_eq!(headers["X-One"], "1");
        assert_eq!(headers["X-Two"], "2");
        assert_eq!(body.max_retries.map(|value| value.0), Some(5));
        assert_eq!(body.retry_delay_seconds.map(|value| value.0), Some(7));
        assert_eq!(body.is_paused, Some(false));
        assert!(body.rate_limit_per_second.is_none(), "an empty rate limit is none");
        let limited = SubscriptionFields::from_form(&Form::parse(b"rateLimitPerSecond=+50+"));
        assert_eq!(limited.create_body().unwrap().rate_limit_per_second.map(|value| value.0), Some(50));
        assert_eq!(
            limited.patch_body().unwrap().rate_limit_per_second.map(|value| value.map(|v| v.0)),
            Some(Some(50))
        );
        let cleared = SubscriptionFields::from_form(&Form::parse(b"rateLimitPerSecond="));
        assert!(
            matches!(cleared.patch_body().unwrap().rate_limit_per_second, Some(None)),
            "emptied: removed"
        );
    }

    #[test]
    fn bad_header_lines_are_named() {
        let error = parse_headers("X-Ok: 1\nno colon here").unwrap_err();
        assert!(error.message.contains("line 2"), "{}", error.message);
        let error = parse_headers("X-A: 1\nX-A: 2").unwrap_err();
        assert!(error.message.contains("given twice"), "{}", error.message);
    }

    #[test]
    fn non_numbers_fail_the_range_check() {
        assert_eq!(integer("abc", 5).0, i64::MIN);
        assert_eq!(integer("", 5).0, 5);
        assert_eq!(integer("12", 5).0, 12);
    }
}
