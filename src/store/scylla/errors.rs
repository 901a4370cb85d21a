//! Driver errors → [`StoreErrorKind`]. The driver's types stop here.

use crate::store::{StoreError, StoreErrorKind};
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, PagerExecutionError, PrepareError,
    RequestAttemptError,
};

/// What a server-side error means to the chat layer.
pub fn kind_of_db_error(e: &DbError) -> StoreErrorKind {
    match e {
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => StoreErrorKind::Timeout,
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::RateLimitReached { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. } => StoreErrorKind::Unavailable,
        DbError::AlreadyExists { .. } => StoreErrorKind::Conflict,
        _ => StoreErrorKind::Internal,
    }
}

pub fn kind_of_attempt_error(e: &RequestAttemptError) -> StoreErrorKind {
    match e {
        RequestAttemptError::DbError(db, _) => kind_of_db_error(db),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Internal,
    }
}

pub fn kind_of_execution_error(e: &ExecutionError) -> StoreErrorKind {
    match e {
        ExecutionError::RequestTimeout(_) => StoreErrorKind::Timeout,
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => {
            StoreErrorKind::Unavailable
        }
        ExecutionError::LastAttemptError(a) => kind_of_attempt_error(a),
        ExecutionError::PrepareError(p) => kind_of_prepare_error(p),
        _ => StoreErrorKind::Internal,
    }
}

pub fn kind_of_prepare_error(e: &PrepareError) -> StoreErrorKind {
    match e {
        PrepareError::ConnectionPoolError(_) => StoreErrorKind::Unavailable,
        PrepareError::AllAttemptsFailed { first_attempt } => kind_of_attempt_error(first_attempt),
        _ => StoreErrorKind::Internal,
    }
}

fn kind_of_pager_error(e: &PagerExecutionError) -> StoreErrorKind {
    match e {
        PagerExecutionError::PrepareError(p) => kind_of_prepare_error(p),
        PagerExecutionError::NextPageError(_) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Internal,
    }
}

fn kind_of_session_error(e: &NewSessionError) -> StoreErrorKind {
    match e {
        NewSessionError::FailedToResolveAnyHostname(_) | NewSessionError::EmptyKnownNodesList => {
            StoreErrorKind::Unavailable
        }
        NewSessionError::MetadataError(scylla::errors::MetadataError::ConnectionPoolError(_)) => {
            StoreErrorKind::Unavailable
        }
        _ => StoreErrorKind::Internal,
    }
}

/// Conversions with the operation named, so logs say what failed.
pub trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, ExecutionError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::with_source(kind_of_execution_error(&e), what, e))
    }
}

impl<T> Context<T> for Result<T, PrepareError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::with_source(kind_of_prepare_error(&e), what, e))
    }
}

impl<T> Context<T> for Result<T, PagerExecutionError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::with_source(kind_of_pager_error(&e), what, e))
    }
}

impl<T> Context<T> for Result<T, NewSessionError> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::with_source(kind_of_session_error(&e), what, e))
    }
}

/// Decoding errors (unexpected column types, nulls, result shapes): the schema and the code
/// disagree, which no retry fixes.
macro_rules! internal_context {
    ($($t:ty),*) => {$(
        impl<T> Context<T> for Result<T, $t> {
            fn ctx(self, what: &str) -> Result<T, StoreError> {
                self.map_err(|e| StoreError::with_source(StoreErrorKind::Internal, what, e))
            }
        }
    )*};
}

internal_context!(
    scylla::errors::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::MaybeFirstRowError,
    scylla::errors::FirstRowError,
    scylla::errors::SingleRowError,
    scylla::errors::NextRowError,
    scylla::errors::TypeCheckError,
    scylla::errors::DeserializationError,
    scylla::errors::UseKeyspaceError,
    scylla::errors::SchemaAgreementError
);

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::statement::Consistency;
    use std::time::Duration;

    #[test]
    fn timeouts_map_to_timeout() {
        assert_eq!(
            kind_of_execution_error(&ExecutionError::RequestTimeout(Duration::from_secs(1))),
            StoreErrorKind::Timeout
        );
        let db = DbError::WriteTimeout {
            consistency: Consistency::LocalQuorum,
            received: 1,
            required: 2,
            write_type: scylla::errors::WriteType::Simple,
        };
        assert_eq!(kind_of_db_error(&db), StoreErrorKind::Timeout);
        let e = ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, "t".into()));
        assert_eq!(kind_of_execution_error(&e), StoreErrorKind::Timeout);
    }

    #[test]
    fn unavailability_maps_to_unavailable() {
        let db = DbError::Unavailable {
            consistency: Consistency::LocalQuorum,
            required: 2,
            alive: 1,
        };
        assert_eq!(kind_of_db_error(&db), StoreErrorKind::Unavailable);
        assert_eq!(
            kind_of_db_error(&DbError::Overloaded),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            kind_of_execution_error(&ExecutionError::EmptyPlan),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            kind_of_attempt_error(&RequestAttemptError::UnableToAllocStreamId),
            StoreErrorKind::Unavailable
        );
    }

    #[test]
    fn schema_and_syntax_errors_are_internal() {
        assert_eq!(
            kind_of_db_error(&DbError::SyntaxError),
            StoreErrorKind::Internal
        );
        assert_eq!(
            kind_of_db_error(&DbError::Invalid),
            StoreErrorKind::Internal
        );
        assert_eq!(
            kind_of_db_error(&DbError::Unauthorized),
            StoreErrorKind::Internal
        );
    }

    #[test]
    fn context_keeps_the_source_and_names_the_operation() {
        let r: Result<(), ExecutionError> = Err(ExecutionError::EmptyPlan);
        let e = r.ctx("append_message: insert").expect_err("error");
        assert_eq!(e.kind, StoreErrorKind::Unavailable);
        assert_eq!(e.message, "append_message: insert");
        assert!(e.source.is_some());
    }
}
