//! Accounts in Cassandra: the seed's `users_keyspace.users (email text PRIMARY KEY,
//! password_hash text)`, created at startup when missing.
//!
//! Registration is a lightweight transaction (`INSERT ... IF NOT EXISTS`): of two concurrent
//! registrations of one email exactly one applies, where the seed's read-then-write let both
//! succeed and the second silently replaced the first user's password.

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;

/// Where and how to reach Cassandra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CassandraConfig {
    pub contact_points: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub keyspace: String,
    pub replication_factor: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    #[error("failed to connect to Cassandra: {0}")]
    Connect(String),
    #[error("failed to create the accounts schema: {0}")]
    Schema(String),
    #[error("failed to prepare a statement: {0}")]
    Prepare(String),
    #[error("failed to {action}: {error}")]
    Query { action: &'static str, error: String },
}

/// The accounts table.
#[derive(Debug)]
pub struct UserStore {
    session: Session,
    insert: PreparedStatement,
    select: PreparedStatement,
    delete: PreparedStatement,
}

impl UserStore {
    /// Connects, creates the keyspace and table when missing, and prepares the statements.
    pub async fn connect(config: &CassandraConfig) -> Result<Self, UserStoreError> {
        let mut builder = SessionBuilder::new().known_nodes(&config.contact_points);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            builder = builder.user(user, password);
        }
        let session = builder
            .build()
            .await
            .map_err(|error| UserStoreError::Connect(error.to_string()))?;
        let keyspace = &config.keyspace;
        if !is_identifier(keyspace) {
            return Err(UserStoreError::Schema(format!(
                "{keyspace:?} is not a valid keyspace name (letters, digits and _ only)"
            )));
        }
        for statement in [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                config.replication_factor
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.users \
                 (email text PRIMARY KEY, password_hash text)"
            ),
        ] {
            session
                .query_unpaged(statement, &[])
                .await
                .map_err(|error| UserStoreError::Schema(error.to_string()))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|error| UserStoreError::Schema(error.to_string()))?;
        let prepare = |query: String| {
            let session = &session;
            async move {
                session
                    .prepare(query)
                    .await
                    .map_err(|error| UserStoreError::Prepare(error.to_string()))
            }
        };
        let insert = prepare(format!(
            "INSERT INTO {keyspace}.users (email, password_hash) VALUES (?, ?) IF NOT EXISTS"
        ))
        .await?;
        let select = prepare(format!(
            "SELECT password_hash FROM {keyspace}.users WHERE email = ?"
        ))
        .await?;
        let delete = prepare(format!(
            "DELETE FROM {keyspace}.users WHERE email = ? IF EXISTS"
        ))
        .await?;
        Ok(Self {
            session,
            insert,
            select,
            delete,
        })
    }

    /// Creates the account; `false` when the email is taken (nothing is changed then).
    pub async fn create(&self, email: &str, password_hash: &str) -> Result<bool, UserStoreError> {
        let result = self
            .session
            .execute_unpaged(&self.insert, (email, password_hash))
            .await
            .map_err(|error| query_error("insert the account", error))?;
        applied(result, "insert the account")
    }

    /// The stored hash, or `None` when there is no such account.
    pub async fn password_hash(&self, email: &str) -> Result<Option<String>, UserStoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.select, (email,))
            .await
            .map_err(|error| query_error("read the account", error))?
            .into_rows_result()
            .map_err(|error| query_error("read the account", error))?;
        let row: Option<(Option<String>,)> = rows
            .maybe_first_row()
            .map_err(|error| query_error("read the account", error))?;
        Ok(row.and_then(|(hash,)| hash))
    }

    /// Deletes the account; `false` when it did not exist.
    pub async fn delete(&self, email: &str) -> Result<bool, UserStoreError> {
        let result = self
            .session
            .execute_unpaged(&self.delete, (email,))
            .await
            .map_err(|error| query_error("delete the account", error))?;
        applied(result, "delete the account")
    }

    /// A cheap round trip for readiness.
    pub async fn ping(&self) -> Result<(), UserStoreError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", &[])
            .await
            .map(|_| ())
            .map_err(|error| query_error("ping Cassandra", error))
    }
}

/// The `[applied]` column of a lightweight transaction's result.
fn applied(
    result: scylla::response::query_result::QueryResult,
    action: &'static str,
) -> Result<bool, UserStoreError> {
    let rows = result
        .into_rows_result()
        .map_err(|error| query_error(action, error))?;
    // The first column is always `[applied]`; the others (the existing row) vary by outcome.
    let first = rows
        .rows::<scylla::value::Row>()
        .map_err(|error| query_error(action, error))?
        .next()
        .transpose()
        .map_err(|error| query_error(action, error))?;
    let applied = first
        .and_then(|row| row.columns.into_iter().next().flatten())
        .and_then(|value| value.as_boolean());
    applied.ok_or_else(|| UserStoreError::Query {
        action,
        error: "no [applied] column in the result".into(),
    })
}

fn query_error(action: &'static str, error: impl std::fmt::Display) -> UserStoreError {
    UserStoreError::Query {
        action,
        error: error.to_string(),
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_checked_before_they_reach_cql() {
        assert!(is_identifier("users_keyspace"));
        assert!(!is_identifier("users; DROP KEYSPACE system"));
        assert!(!is_identifier("1users"));
        assert!(!is_identifier(""));
    }
}
