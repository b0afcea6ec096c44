use thiserror::Error;

/// Errors from a storage backend.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The item already exists.
    #[error("already exists")]
    Conflict,
    /// The item does not exist.
    #[error("not found")]
    NotFound,
    /// The schema in the database is newer than this binary understands.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); upgrade palaver"
    )]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Highest version this binary knows.
        supported: i64,
    },
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The database cannot be reached, or every pooled connection stayed
    /// busy past the connect timeout: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The backend failed (SQL, protocol).
    #[error("database error: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // A stored value that does not decode to the expected type.
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StorageError::Corrupt(e.to_string())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StorageError::Unavailable(e.to_string()),
            _ => StorageError::Backend(e.to_string()),
        }
    }
}
