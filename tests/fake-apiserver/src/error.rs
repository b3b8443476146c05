//! `Status` errors: the API server's failure objects and their HTTP codes.

use serde_json::{Value, json};

/// A failed API operation, rendered as a Kubernetes `Status` object (`kind: Status`,
/// `status: Failure`) with the matching HTTP code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (404, 409, 400, 422, 410, 429, 500, ...).
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `BadRequest`,
    /// `Invalid`, `Expired`, `TooManyRequests`, `InternalError`, ...).
    pub reason: String,
    /// Human-readable message, worded like the real API server's where it matters.
    pub message: String,
    /// Optional `details` object (name, group, kind, causes).
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with an explicit code and reason.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, kind_plural: &str, group: &str, name: &str) -> Self {
        let mut d = json!({ "name": name, "kind": kind_plural });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    /// `404 NotFound`: `services "x" not found`.
    pub fn not_found(plural: &str, group: &str, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(plural, group), name),
        )
        .with_details(plural, group, name)
    }

    /// `404 NotFound` for an unknown URL / resource type.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// `409 AlreadyExists`.
    pub fn already_exists(plural: &str, group: &str, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(plural, group), name),
        )
        .with_details(plural, group, name)
    }

    /// `409 Conflict` for a stale `resourceVersion` (optimistic concurrency).
    pub fn conflict(plural: &str, group: &str, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(plural, group),
                name
            ),
        )
        .with_details(plural, group, name)
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// `422 Invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(422, "Invalid", message)
    }

    /// `410 Expired` (too old resourceVersion or continue token).
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// `415 UnsupportedMediaType`.
    pub fn unsupported_media_type(ct: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"
            ),
        )
    }

    /// An injected fault: 429 `TooManyRequests` or any other code (500 → `InternalError`).
    pub fn injected(code: u16) -> Self {
        match code {
            429 => ApiError::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later (injected fault)",
            ),
            500 => ApiError::new(
                500,
                "InternalError",
                "an error on the server (\"injected fault\") has prevented the request from succeeding",
            ),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected fault)",
            ),
            504 => ApiError::new(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted (injected fault)",
            ),
            c => ApiError::new(c, "InternalError", format!("injected fault with code {c}")),
        }
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Result alias used throughout the crate.
pub type ApiResult<T> = Result<T, ApiError>;
