//! The one error every domain returns for bad input: which field, what is wrong with it in words
//! a person understands, and what would be allowed. The API turns it into a 422.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
    /// What the field accepts, when it can be listed (e.g. the timeframes).
    pub allowed: Option<Box<Value>>,
    /// A stable error code, `VALIDATION_ERROR` unless the domain names a sharper one.
    pub code: &'static str,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into(), allowed: None, code: "VALIDATION_ERROR" }
    }

    pub fn allowed(mut self, allowed: impl Into<Value>) -> Self {
        self.allowed = Some(Box::new(allowed.into()));
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}
