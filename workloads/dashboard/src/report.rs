//! The answer of `GET /metrics`: reading it from Redis, and building the JSON from what was read.
//!
//! Reading and building are separate so that every decision about stored data (a missing key, a
//! value that is not an integer) is a pure function with unit tests, and the Redis part is only
//! the reads. The reads are `GET` and `HGET` and nothing else: the dashboard is a read-only view
//! and must never create, change or expire a key, not even one it was asked about and found
//! missing.

use pipeline_contract::keys::Keys;
use pipeline_contract::notification_fields;
use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::problem::AppError;
use crate::query::MetricsQuery;

/// How much of a malformed stored value goes into the log, so one huge value cannot flood it.
const MAX_LOGGED_VALUE_CHARS: usize = 64;

/// The JSON body of a successful `GET /metrics`. Fields the query did not ask for, or whose key
/// does not exist, are left out rather than sent as `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsReport {
    /// Orders the processor has applied; 0 before the first one.
    pub processed_orders_count: i64,
    /// The stock of the requested SKU. Signed: an integer in Redis may be negative, and hiding
    /// that would hide an oversell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_level: Option<i64>,
    /// The requested order's notification status, verbatim as the notifier stored it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_status: Option<String>,
}

/// One value as Redis returned it, with the key it came from (to name it in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub key: String,
    /// `None` when the key (or the hash field) does not exist.
    pub value: Option<Vec<u8>>,
}

/// Everything one request read. The optional readings are `None` when the query did not ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readings {
    pub processed_count: Reading,
    pub inventory: Option<Reading>,
    pub notification_status: Option<Reading>,
}

impl MetricsReport {
    /// Builds the answer from raw readings. A value the pipeline would never store there is an
    /// error naming the key (logged, never sent), not a guess.
    pub fn from_readings(readings: Readings) -> Result<Self, AppError> {
        let processed_orders_count = integer(&readings.processed_count)?.unwrap_or(0);
        let inventory_level = match &readings.inventory {
            Some(reading) => integer(reading)?,
            None => None,
        };
        let notification_status = match &readings.notification_status {
            Some(reading) => text(reading)?,
            None => None,
        };
        Ok(Self {
            processed_orders_count,
            inventory_level,
            notification_status,
        })
    }
}

fn integer(reading: &Reading) -> Result<Option<i64>, AppError> {
    let Some(bytes) = &reading.value else {
        return Ok(None);
    };
    // Strict: Redis itself (INCRBY, DECRBY) refuses anything but a plain decimal i64, so a
    // lenient parse would report a number the pipeline cannot work with.
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| bad_data(reading, "is not an integer"))
}

fn text(reading: &Reading) -> Result<Option<String>, AppError> {
    let Some(bytes) = &reading.value else {
        return Ok(None);
    };
    String::from_utf8(bytes.clone())
        .map(Some)
        .map_err(|_| bad_data(reading, "is not UTF-8 text"))
}

fn bad_data(reading: &Reading, problem: &str) -> AppError {
    let value = String::from_utf8_lossy(reading.value.as_deref().unwrap_or_default());
    let shown: String = value.chars().take(MAX_LOGGED_VALUE_CHARS).collect();
    AppError::BadData {
        key: reading.key.clone(),
        problem: format!("value {shown:?} {problem}"),
    }
}

/// Reads what `query` asks for. The (at most three) reads go out together on the one multiplexed
/// connection, so a request costs one round trip.
pub async fn read(
    redis: &ConnectionManager,
    keys: &Keys,
    query: &MetricsQuery,
) -> Result<Readings, AppError> {
    let processed = get(redis.clone(), keys.processed_count());
    let inventory = async {
        match &query.sku {
            Some(sku) => get(redis.clone(), keys.inventory(sku)).await.map(Some),
            None => Ok(None),
        }
    };
    let notification = async {
        match &query.order_id {
            Some(order_id) => hget(
                redis.clone(),
                keys.notification(order_id),
                notification_fields::STATUS,
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    };
    let (processed_count, inventory, notification_status) =
        tokio::try_join!(processed, inventory, notification)?;
    Ok(Readings {
        processed_count,
        inventory,
        notification_status,
    })
}

async fn get(mut redis: ConnectionManager, key: String) -> Result<Reading, AppError> {
    let value = redis::cmd("GET")
        .arg(&key)
        .query_async::<Option<Vec<u8>>>(&mut redis)
        .await
        .map_err(|error| classify(error, &key))?;
    Ok(Reading { key, value })
}

async fn hget(mut redis: ConnectionManager, key: String, field: &str) -> Result<Reading, AppError> {
    let value = redis::cmd("HGET")
        .arg(&key)
        .arg(field)
        .query_async::<Option<Vec<u8>>>(&mut redis)
        .await
        .map_err(|error| classify(error, &key))?;
    Ok(Reading { key, value })
}

/// Tells data problems (which an operator must fix, so retrying is pointless) from Redis being
/// unreachable (which a retry may get past).
fn classify(error: redis::RedisError, key: &str) -> AppError {
    let wrong_type =
        error.code() == Some("WRONGTYPE") || error.kind() == redis::ErrorKind::UnexpectedReturnType;
    if wrong_type {
        AppError::BadData {
            key: key.to_owned(),
            problem: format!("the key holds another type than expected: {error}"),
        }
    } else {
        AppError::Unavailable {
            action: format!("reading {key}"),
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reading(key: &str, value: Option<&str>) -> Reading {
        Reading {
            key: key.to_owned(),
            value: value.map(|text| text.as_bytes().to_vec()),
        }
    }

    fn readings(
        processed: Option<&str>,
        inventory: Option<Option<&str>>,
        status: Option<Option<&str>>,
    ) -> Readings {
        Readings {
            processed_count: reading("orders.processed.count", processed),
            inventory: inventory.map(|value| reading("inventory:mag-safe-phone-case", value)),
            notification_status: status.map(|value| reading("notifications:order123", value)),
        }
    }

    fn body(readings: Readings) -> serde_json::Value {
        serde_json::to_value(MetricsReport::from_readings(readings).unwrap()).unwrap()
    }

    #[test]
    fn the_plain_count_defaults_to_zero() {
        assert_eq!(
            body(readings(None, None, None)),
            json!({"processed_orders_count": 0})
        );
        assert_eq!(
            body(readings(Some("42"), None, None)),
            json!({"processed_orders_count": 42})
        );
    }

    #[test]
    fn asked_for_fields_appear_when_their_keys_exist() {
        assert_eq!(
            body(readings(Some("3"), Some(Some("98")), Some(Some("sent")))),
            json!({
                "processed_orders_count": 3,
                "inventory_level": 98,
                "notification_status": "sent",
            })
        );
        // A negative stock is reported as it is, not clamped.
        assert_eq!(
            body(readings(Some("3"), Some(Some("-2")), None)),
            json!({"processed_orders_count": 3, "inventory_level": -2})
        );
    }

    #[test]
    fn missing_keys_omit_their_fields() {
        assert_eq!(
            body(readings(Some("3"), Some(None), Some(None))),
            json!({"processed_orders_count": 3})
        );
        let text = serde_json::to_string(
            &MetricsReport::from_readings(readings(None, Some(None), Some(None))).unwrap(),
        )
        .unwrap();
        assert_eq!(text, r#"{"processed_orders_count":0}"#);
    }

    #[test]
    fn the_field_order_is_stable() {
        let text = serde_json::to_string(
            &MetricsReport::from_readings(readings(Some("1"), Some(Some("2")), Some(Some("x"))))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            text,
            r#"{"processed_orders_count":1,"inventory_level":2,"notification_status":"x"}"#
        );
    }

    #[test]
    fn non_integers_are_data_errors_naming_the_key() {
        for bad in ["abc", "", " 5", "5.0", "1e3", "99999999999999999999"] {
            let error = MetricsReport::from_readings(readings(Some("1"), Some(Some(bad)), None))
                .unwrap_err();
            match error {
                AppError::BadData { key, problem } => {
                    assert_eq!(key, "inventory:mag-safe-phone-case", "{bad:?}");
                    assert!(problem.ends_with("is not an integer"), "{problem}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let error = MetricsReport::from_readings(readings(Some("x"), None, None)).unwrap_err();
        assert!(
            matches!(&error, AppError::BadData { key, .. } if key == "orders.processed.count"),
            "{error:?}"
        );
    }

    #[test]
    fn a_wrong_type_is_a_data_error_and_anything_else_means_unavailable() {
        let wrong_type = redis::make_extension_error(
            "WRONGTYPE".into(),
            Some("Operation against a key holding the wrong kind of value".into()),
        );
        assert!(matches!(
            classify(wrong_type, "inventory:x"),
            AppError::BadData { key, .. } if key == "inventory:x"
        ));
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            classify(refused, "orders.processed.count"),
            AppError::Unavailable { .. }
        ));
        let loading = redis::make_extension_error("LOADING".into(), None);
        assert!(matches!(
            classify(loading, "k"),
            AppError::Unavailable { .. }
        ));
    }

    #[test]
    fn a_non_utf8_status_is_a_data_error_and_long_values_are_cut_for_the_log() {
        let mut bad = readings(None, None, None);
        bad.notification_status = Some(Reading {
            key: "notifications:o".into(),
            value: Some(vec![0xff, 0xfe]),
        });
        assert!(matches!(
            MetricsReport::from_readings(bad),
            Err(AppError::BadData { .. })
        ));

        let long = "z".repeat(10_000);
        let Err(AppError::BadData { problem, .. }) =
            MetricsReport::from_readings(readings(Some(&long), None, None))
        else {
            panic!("expected a data error");
        };
        assert!(problem.len() < 200, "{problem}");
    }
}
