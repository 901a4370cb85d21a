//! Errors of one request: SQLite's or already classified, mapped to `StoreError` at the
//! request boundary so the driver's type never leaves this backend.

use super::*;

/// Internal error of one request: either SQLite's or an already classified one. Converted
/// to [`StoreError`] at the request boundary so the driver's type never leaves this backend.
pub(super) enum Fail {
    Sql(rusqlite::Error),
    Store(StoreError),
}

pub(super) type DbResult<T> = Result<T, Fail>;

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> StoreError {
        match f {
            Fail::Store(e) => e,
            Fail::Sql(e) => {
                let kind = match &e {
                    rusqlite::Error::SqliteFailure(err, _) => match err.code {
                        // Only reached after `busy_timeout` expired.
                        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                            StoreErrorKind::Timeout
                        }
                        ErrorCode::ConstraintViolation => StoreErrorKind::Conflict,
                        ErrorCode::CannotOpen
                        | ErrorCode::ReadOnly
                        | ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::PermissionDenied
                        | ErrorCode::NotADatabase
                        | ErrorCode::DatabaseCorrupt
                        | ErrorCode::FileLockingProtocolFailed
                        | ErrorCode::NoLargeFileSupport => StoreErrorKind::Unavailable,
                        _ => StoreErrorKind::Internal,
                    },
                    rusqlite::Error::QueryReturnedNoRows => StoreErrorKind::NotFound,
                    _ => StoreErrorKind::Internal,
                };
                StoreError::with_source(kind, "sqlite", e)
            }
        }
    }
}

pub(super) fn fail(kind: StoreErrorKind, message: impl Into<String>) -> Fail {
    Fail::Store(StoreError::new(kind, message))
}

pub(super) fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, "store is closed")
}
