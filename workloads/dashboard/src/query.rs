//! The query of `GET /metrics`, checked before anything touches Redis.
//!
//! The seed accepted any query and looked up whatever it was given. Here only `sku` and
//! `order_id` are accepted, each at most once, non-empty, bounded and limited to the characters
//! the gateway allows in the same fields (`A-Z a-z 0-9 . _ -`). So a typo such as `?skus=` is a
//! clear 400 instead of a silently missing field, and a client cannot make the dashboard build
//! arbitrary Redis keys (a `:` or `*` can never reach a key name).

use axum::extract::Query;
use axum::http::Uri;

use pipeline_contract::order;

use crate::problem::AppError;

/// The query parameter asking for a SKU's inventory level.
pub const SKU: &str = "sku";
/// The query parameter asking for an order's notification status.
pub const ORDER_ID: &str = "order_id";
/// Unknown parameter names are echoed back in the problem; this bounds how much of one.
const MAX_ECHOED_NAME_CHARS: usize = 64;

/// The contract's check of one parameter's value.
type Check = fn(&str) -> Result<(), order::NameError>;

/// What a valid `GET /metrics` query asks for, beyond the processed-orders count it always gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsQuery {
    pub sku: Option<String>,
    pub order_id: Option<String>,
}

impl MetricsQuery {
    /// Decodes and validates the request's query string (absent or empty: the plain count).
    pub fn from_uri(uri: &Uri) -> Result<Self, AppError> {
        let Query(pairs) =
            Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|_| AppError::BadQuery {
                parameter: None,
                detail: "the query string is malformed".to_owned(),
            })?;
        Self::from_pairs(pairs)
    }

    /// Validates decoded `(name, value)` pairs in request order; the first problem is reported.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, AppError> {
        let mut query = MetricsQuery::default();
        for (name, value) in pairs {
            // The grammar of the gateway's order fields, so every SKU and order id it accepts
            // can be looked up here.
            let (slot, check): (_, Check) = match name.as_str() {
                SKU => (&mut query.sku, order::check_sku),
                ORDER_ID => (&mut query.order_id, order::check_id),
                _ => return Err(unknown_parameter(&name)),
            };
            if slot.is_some() {
                // Which of two values was meant is a guess; refuse rather than pick one.
                return Err(AppError::bad_parameter(
                    &name,
                    format!("{name} may be given only once"),
                ));
            }
            check(&value)
                .map_err(|problem| AppError::bad_parameter(&name, format!("{name} {problem}")))?;
            *slot = Some(value);
        }
        Ok(query)
    }
}

fn unknown_parameter(name: &str) -> AppError {
    let shown: String = name.chars().take(MAX_ECHOED_NAME_CHARS).collect();
    AppError::bad_parameter(
        &shown,
        format!("unknown query parameter {shown:?}; allowed: {SKU}, {ORDER_ID}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path_and_query: &str) -> Result<MetricsQuery, AppError> {
        MetricsQuery::from_uri(&path_and_query.parse().unwrap())
    }

    /// The parameter a rejected query names, and its detail.
    fn rejected(path_and_query: &str) -> (Option<String>, String) {
        match parse(path_and_query) {
            Err(AppError::BadQuery { parameter, detail }) => (parameter, detail),
            other => panic!("{path_and_query}: expected a bad query, got {other:?}"),
        }
    }

    #[test]
    fn the_seeds_three_queries_parse() {
        assert_eq!(parse("/metrics").unwrap(), MetricsQuery::default());
        assert_eq!(
            parse("/metrics?sku=mag-safe-phone-case").unwrap(),
            MetricsQuery {
                sku: Some("mag-safe-phone-case".into()),
                order_id: None,
            }
        );
        assert_eq!(
            parse("/metrics?order_id=order123").unwrap(),
            MetricsQuery {
                sku: None,
                order_id: Some("order123".into()),
            }
        );
    }

    #[test]
    fn both_parameters_together_in_either_order_and_an_empty_query() {
        let both = MetricsQuery {
            sku: Some("A.b_c-9".into()),
            order_id: Some("order123".into()),
        };
        assert_eq!(
            parse("/metrics?sku=A.b_c-9&order_id=order123").unwrap(),
            both
        );
        assert_eq!(
            parse("/metrics?order_id=order123&sku=A.b_c-9").unwrap(),
            both
        );
        assert_eq!(parse("/metrics?").unwrap(), MetricsQuery::default());
        // Percent-encoding is decoded before validation.
        assert_eq!(
            parse("/metrics?sku=phone%2Dcase").unwrap().sku.as_deref(),
            Some("phone-case")
        );
    }

    #[test]
    fn unknown_parameters_are_named() {
        let (parameter, detail) = rejected("/metrics?skus=phone");
        assert_eq!(parameter.as_deref(), Some("skus"));
        assert_eq!(
            detail,
            "unknown query parameter \"skus\"; allowed: sku, order_id"
        );
        // Names are case-sensitive, like the seed's.
        assert_eq!(rejected("/metrics?SKU=phone").0.as_deref(), Some("SKU"));
        // A huge unknown name is echoed only in part.
        let long = "x".repeat(1000);
        let (parameter, _) = rejected(&format!("/metrics?{long}=1"));
        assert_eq!(parameter.unwrap().len(), MAX_ECHOED_NAME_CHARS);
    }

    #[test]
    fn empty_values_are_refused() {
        for query in [
            "/metrics?sku=",
            "/metrics?sku",
            "/metrics?sku=phone&order_id=",
        ] {
            let (parameter, detail) = rejected(query);
            let expected = if query.contains("order_id") {
                "order_id"
            } else {
                "sku"
            };
            assert_eq!(parameter.as_deref(), Some(expected), "{query}");
            assert_eq!(detail, format!("{expected} must not be empty"));
        }
    }

    #[test]
    fn lengths_are_bounded_like_the_gateways() {
        let sku = "s".repeat(order::MAX_SKU_LEN);
        let order_id = "o".repeat(order::MAX_ID_LEN);
        assert!(parse(&format!("/metrics?sku={sku}&order_id={order_id}")).is_ok());

        let (parameter, detail) = rejected(&format!("/metrics?sku={sku}s"));
        assert_eq!(parameter.as_deref(), Some("sku"));
        assert_eq!(detail, "sku must be at most 128 characters");
        let (parameter, detail) = rejected(&format!("/metrics?order_id={order_id}o"));
        assert_eq!(parameter.as_deref(), Some("order_id"));
        assert_eq!(detail, "order_id must be at most 64 characters");
    }

    #[test]
    fn characters_outside_the_allowed_set_are_refused() {
        // `:` and `*` would otherwise reach key names; `%FF` decodes to a replacement character.
        for value in ["a:b", "a*", "a%20b", "a+b", "a/b", "%C3%A9", "%FF", "a%00"] {
            let (parameter, detail) = rejected(&format!("/metrics?order_id={value}"));
            assert_eq!(parameter.as_deref(), Some("order_id"), "{value}");
            assert_eq!(
                detail,
                "order_id may contain only letters, digits, '.', '_' and '-'"
            );
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let (parameter, detail) = rejected("/metrics?sku=a&sku=b");
        assert_eq!(parameter.as_deref(), Some("sku"));
        assert_eq!(detail, "sku may be given only once");
    }
}
