//! An order as every workload names it: the grammar of its id, SKU and quantity, and the values
//! its record's state fields take.
//!
//! The gateway checks the grammar on the way in, the dashboard on every lookup (so any SKU or
//! order id the gateway accepted can be looked up, and nothing else can reach a Redis key), and
//! the processor on what the queue brings (the queue is an interface anyone with credentials can
//! publish to). The order's part of the messages is [`crate::messages::Order`].

use std::fmt;

/// An order id: 1 to 64 of `A-Z a-z 0-9 . _ -`. Never a `:`, so the keys that join an owner
/// and an order id (`idemp:<owner>:<order_id>`) are unambiguous.
pub const MAX_ID_LEN: usize = 64;
/// A SKU: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub const MAX_SKU_LEN: usize = 128;
/// The largest quantity of one order.
pub const MAX_QTY: u32 = 10_000;

/// What is wrong with an order id or a SKU. Displayed as a predicate, so the caller puts the
/// field's name before it: "sku must not be empty".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { max: usize },
    Character,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("must not be empty"),
            NameError::TooLong { max } => write!(f, "must be at most {max} characters"),
            NameError::Character => {
                f.write_str("may contain only letters, digits, '.', '_' and '-'")
            }
        }
    }
}

/// Checks an order id.
pub fn check_id(id: &str) -> Result<(), NameError> {
    check_name(id, MAX_ID_LEN)
}

/// Checks a SKU.
pub fn check_sku(sku: &str) -> Result<(), NameError> {
    check_name(sku, MAX_SKU_LEN)
}

fn check_name(value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty);
    }
    if value.len() > max {
        return Err(NameError::TooLong { max });
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(NameError::Character);
    }
    Ok(())
}

/// A quantity outside `1..=MAX_QTY`, displayed as a predicate like [`NameError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QtyError {
    pub got: i64,
}

impl fmt::Display for QtyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "must be between 1 and {MAX_QTY}, got {}", self.got)
    }
}

/// Checks a quantity as a client may send it (any JSON integer).
pub fn check_qty(qty: i64) -> Result<u32, QtyError> {
    u32::try_from(qty)
        .ok()
        .filter(|qty| (1..=MAX_QTY).contains(qty))
        .ok_or(QtyError { got: qty })
}

/// The values of [`crate::order_fields::OUTCOME`], written by the processor.
pub mod outcome {
    pub const PROCESSED: &str = "processed";
    pub const REJECTED: &str = "rejected";
    /// The [`crate::order_fields::REASON`] of an order asking for more than the stock.
    pub const OUT_OF_STOCK: &str = "out_of_stock";
    /// The reason of an order whose SKU's stock is not an integer Redis can decrement.
    pub const INVALID_INVENTORY: &str = "invalid_inventory";
}

/// The values of [`crate::order_fields::NOTIFICATION`] and of the seed's
/// [`crate::notification_fields::STATUS`], written by the notifier.
pub mod notification {
    /// Being sent (or its sender crashed before it could record `sent`).
    pub const PENDING: &str = "pending";
    pub const SENT: &str = "sent";
}

/// Where an order stands, as `GET /orders/{id}` says it: composed from the fields each workload
/// wrote to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Stored by the gateway; not yet applied by the processor.
    Accepted,
    Processed,
    Rejected,
    /// Processed, and its notification sent.
    Notified,
}

impl Status {
    /// The status of a record with these [`crate::order_fields::OUTCOME`] and
    /// [`crate::order_fields::NOTIFICATION`] values.
    pub fn of(outcome: Option<&str>, notification: Option<&str>) -> Status {
        if notification == Some(notification::SENT) {
            return Status::Notified;
        }
        match outcome {
            Some(outcome::PROCESSED) => Status::Processed,
            Some(outcome::REJECTED) => Status::Rejected,
            _ => Status::Accepted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Processed => outcome::PROCESSED,
            Status::Rejected => outcome::REJECTED,
            Status::Notified => "notified",
        }
    }

    /// Whether the processor applied it to the stock.
    pub fn is_applied(self) -> bool {
        matches!(self, Status::Processed | Status::Notified)
    }

    /// Whether the order will change no more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Rejected | Status::Notified)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            Status::Accepted,
            Status::Processed,
            Status::Rejected,
            Status::Notified,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
        .ok_or_else(|| format!("{value:?} is not an order status"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grammar() {
        assert_eq!(check_id("order123"), Ok(()));
        assert_eq!(check_sku("mag-safe-phone-case"), Ok(()));
        assert_eq!(check_id(&"o".repeat(MAX_ID_LEN)), Ok(()));
        assert_eq!(
            check_id(&"o".repeat(MAX_ID_LEN + 1)),
            Err(NameError::TooLong { max: MAX_ID_LEN })
        );
        assert_eq!(check_sku(&"s".repeat(MAX_SKU_LEN)), Ok(()));
        assert_eq!(check_sku(""), Err(NameError::Empty));
        for bad in ["a:b", "a b", "a*", "é", "a/b"] {
            assert_eq!(check_id(bad), Err(NameError::Character), "{bad}");
        }
        assert_eq!(
            format!("sku {}", NameError::Character),
            "sku may contain only letters, digits, '.', '_' and '-'"
        );
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(check_qty(1), Ok(1));
        assert_eq!(check_qty(i64::from(MAX_QTY)), Ok(MAX_QTY));
        for bad in [0, -1, i64::from(MAX_QTY) + 1, i64::MAX, i64::MIN] {
            assert_eq!(check_qty(bad), Err(QtyError { got: bad }));
        }
        assert_eq!(
            QtyError { got: 0 }.to_string(),
            "must be between 1 and 10000, got 0"
        );
    }

    #[test]
    fn the_status_follows_the_record() {
        assert_eq!(Status::of(None, None), Status::Accepted);
        assert_eq!(Status::of(Some("processed"), None), Status::Processed);
        assert_eq!(
            Status::of(Some("processed"), Some("pending")),
            Status::Processed
        );
        assert_eq!(
            Status::of(Some("processed"), Some("sent")),
            Status::Notified
        );
        assert_eq!(Status::of(Some("rejected"), None), Status::Rejected);
        for status in [
            Status::Accepted,
            Status::Processed,
            Status::Rejected,
            Status::Notified,
        ] {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        assert!("done".parse::<Status>().is_err());
    }
}
