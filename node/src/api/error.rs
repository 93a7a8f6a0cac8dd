//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param",
//! "code"}}`, with the HTTP status a client of OpenAI's API expects.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cactus_protocol::messages::InvalidMessage;
use cactus_protocol::{TaskError, TaskErrorKind};

/// Seconds a client is told to wait when there is no capacity.
const RETRY_AFTER_S: u32 = 1;

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
        }
    }

    /// A malformed or invalid field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// A body or prompt over its cap.
    pub fn too_large(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_owned),
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                message,
            )
        }
    }

    /// Too many requests in flight at this router.
    pub fn overloaded() -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too many requests in flight at this router; retry shortly",
            )
        }
    }

    /// A request without a valid API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        }
    }

    /// Nothing at that path.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The field named, if any.
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }
}

impl From<InvalidMessage> for ApiError {
    fn from(e: InvalidMessage) -> Self {
        let param = match &e {
            InvalidMessage::EmptyPrompt => "prompt",
            InvalidMessage::PromptTooLarge(_) => {
                return Self::too_large(Some("prompt"), e.to_string());
            }
            InvalidMessage::MaxTokens(_) => "max_tokens",
            InvalidMessage::Temperature(_) => "temperature",
            InvalidMessage::TopP(_) => "top_p",
            InvalidMessage::Sampling { field, .. }
            | InvalidMessage::TooMany { field, .. }
            | InvalidMessage::FieldTooLong { field, .. } => field,
            InvalidMessage::EmptyStop => "stop",
            _ => "request",
        };
        Self::invalid(param, e.to_string())
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        let (status, kind, code) = match e.kind {
            TaskErrorKind::NoSuchModel => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            TaskErrorKind::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("no_capacity"),
            ),
            TaskErrorKind::PromptTooLong => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("context_length_exceeded"),
            ),
            TaskErrorKind::InvalidRequest => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None)
            }
            TaskErrorKind::Cancelled => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                Some("deadline_exceeded"),
            ),
            TaskErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
            TaskErrorKind::PaymentRequired => (
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
            _ => (StatusCode::BAD_GATEWAY, "server_error", None),
        };
        Self {
            code,
            ..Self::new(status, kind, e.message)
        }
    }
}

impl ApiError {
    /// The error object: `{"message", "type", "param", "code"}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.body() });
        let mut r = (self.status, axum::Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        r
    }
}
