//! Kubernetes memory quantities (`512Mi`, `2Gi`, `1.5G`, `1e9`, `268435456`) as bytes.
//!
//! The operator sizes what runs inside a managed dependency from its container's memory limit
//! (Cassandra's heap, RabbitMQ's memory watermark), so it must read the limit exactly as the
//! kubelet does. k8s-openapi keeps a `Quantity` as the string it was given and parses nothing,
//! hence this small parser of the grammar in `k8s.io/apimachinery/pkg/api/resource`:
//! a decimal number with an optional fraction, then either a binary suffix (`Ki` … `Ei`), a
//! decimal one (`k`, `M` … `E`) or an exponent (`e3`, `E-2`). Fractions of a byte round up, as
//! the kubelet's `Value()` does. A negative quantity and `m` (milli-bytes) are refused: neither
//! is a memory size anyone means.

/// Why a string is not a memory quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a Kubernetes quantity (such as 512Mi, 2Gi or 1G)")]
    Malformed(String),
    #[error("{0:?} is not a memory size: negative or milli-bytes (`m`)")]
    NotAMemorySize(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

const KIBI: u128 = 1024;

/// The number of bytes `quantity` means.
pub fn memory_bytes(quantity: &str) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(quantity.to_owned());
    let text = quantity.trim();
    let (negative, text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(malformed());
    }
    if negative && number.bytes().any(|digit| digit != b'0' && digit != b'.') {
        return Err(QuantityError::NotAMemorySize(quantity.to_owned()));
    }
    // The value is digits / 10^fraction_length * multiplier * 10^exponent; kept as a fraction
    // of integers so nothing is lost to floating point.
    let digits: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| QuantityError::TooLarge(quantity.to_owned()))?;
    let (multiplier, exponent): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (KIBI, 0),
        "Mi" => (KIBI.pow(2), 0),
        "Gi" => (KIBI.pow(3), 0),
        "Ti" => (KIBI.pow(4), 0),
        "Pi" => (KIBI.pow(5), 0),
        "Ei" => (KIBI.pow(6), 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "m" => return Err(QuantityError::NotAMemorySize(quantity.to_owned())),
        exponent if exponent.starts_with(['e', 'E']) => {
            let value: i32 = exponent[1..].parse().map_err(|_| malformed())?;
            if !(-30..=30).contains(&value) {
                return Err(QuantityError::TooLarge(quantity.to_owned()));
            }
            (1, value)
        }
        _ => return Err(malformed()),
    };
    let fraction_length = i32::try_from(fraction.len()).map_err(|_| malformed())?;
    let exponent = exponent - fraction_length;
    let too_large = || QuantityError::TooLarge(quantity.to_owned());
    let scaled = digits.checked_mul(multiplier).ok_or_else(too_large)?;
    let bytes = if exponent >= 0 {
        scaled
            .checked_mul(
                10u128
                    .checked_pow(exponent.unsigned_abs())
                    .ok_or_else(too_large)?,
            )
            .ok_or_else(too_large)?
    } else {
        let divisor = 10u128
            .checked_pow(exponent.unsigned_abs())
            .ok_or_else(too_large)?;
        scaled.div_ceil(divisor)
    };
    u64::try_from(bytes).map_err(|_| too_large())
}

/// `bytes` as the largest whole number of mebibytes not above it, in the form Java's `-Xmx` and
/// Cassandra's `MAX_HEAP_SIZE` take (`1024M`).
pub fn as_mebibytes(bytes: u64) -> String {
    format!("{}M", bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_plain_quantities_are_read_as_the_kubelet_reads_them() {
        for (quantity, bytes) in [
            ("0", 0),
            ("268435456", 268_435_456),
            ("1Ki", 1024),
            ("64Mi", 64 * 1024 * 1024),
            ("2Gi", 2 * 1024 * 1024 * 1024),
            ("1Ti", 1 << 40),
            ("1k", 1000),
            ("500M", 500_000_000),
            ("1G", 1_000_000_000),
            ("1.5Gi", 3 * 512 * 1024 * 1024),
            ("0.5Mi", 512 * 1024),
            (".5Ki", 512),
            ("1.", 1),
            ("1e3", 1000),
            ("1E9", 1_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("12e-1", 2),
            ("+1Mi", 1024 * 1024),
            (" 1Gi ", 1 << 30),
            // A fraction of a byte rounds up.
            ("1.0001k", 1001),
            ("0.1", 1),
        ] {
            assert_eq!(memory_bytes(quantity), Ok(bytes), "{quantity}");
        }
    }

    #[test]
    fn what_is_no_memory_size_is_refused_with_the_reason() {
        for quantity in [
            "", "Gi", "1GB", "1gi", "1 Gi", "one", "1.2.3", ".", "1e", "1Mix",
        ] {
            assert_eq!(
                memory_bytes(quantity),
                Err(QuantityError::Malformed(quantity.to_owned())),
                "{quantity}"
            );
        }
        for quantity in ["-1Gi", "500m", "-0.5"] {
            assert_eq!(
                memory_bytes(quantity),
                Err(QuantityError::NotAMemorySize(quantity.to_owned())),
                "{quantity}"
            );
        }
        // Zero stays zero whatever its sign.
        assert_eq!(memory_bytes("-0"), Ok(0));
        for quantity in ["100Ei", "1e30", "99999999999999999999999999999999999999999"] {
            assert_eq!(
                memory_bytes(quantity),
                Err(QuantityError::TooLarge(quantity.to_owned())),
                "{quantity}"
            );
        }
        let message = memory_bytes("1GB").unwrap_err().to_string();
        assert!(
            message.contains("\"1GB\"") && message.contains("2Gi"),
            "{message}"
        );
    }

    #[test]
    fn mebibytes_round_down_for_java() {
        assert_eq!(as_mebibytes(1 << 30), "1024M");
        assert_eq!(as_mebibytes((1 << 20) * 3 / 2), "1M");
        assert_eq!(as_mebibytes(0), "0M");
    }
}
