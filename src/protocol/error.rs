//! The error objects clients see (SPEC §3): a code, a message, and for `in/ack` the cid.

use serde::{Deserialize, Serialize};

/// What went wrong, as a client sees it (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{code, message}`: the error object of an `in/ack` or `in/rpc` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::NotFound, message)
    }

    pub fn too_large(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::TooLarge, message)
    }

    pub fn rate_limited(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::RateLimited, message)
    }

    pub fn internal(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::Internal, message)
    }
}

/// `in/ack` for a refused send (or any refused `out/…` publish that has no other answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct AckError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub error: ChatError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
        let e = ChatError::too_large("text is 20000 bytes; the limit is 16384");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"too_large","message":"text is 20000 bytes; the limit is 16384"}"#
        );
        assert_eq!(
            e.to_string(),
            "too_large: text is 20000 bytes; the limit is 16384"
        );
    }
}
