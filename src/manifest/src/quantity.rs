//! Kubernetes resource quantities (`1Gi`, `512Mi`, `64M`, `1e9`, `1073741824`)
//! as a whole number of bytes.
//!
//! The grammar is Kubernetes': an optional sign, a decimal number (digits with
//! an optional fraction), then either a binary suffix (`Ki` … `Ei`, powers of
//! 1024), a decimal SI suffix (`n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`,
//! `E`) or an exponent (`e3`, `E-2`). Fractions of a byte round up, as
//! Kubernetes does when it asks for an integer value.

use crate::limits::clip;

/// Why a quantity was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity at all.
    #[error("{:?} is not a Kubernetes quantity (for example 1Gi, 512Mi, 64M or 1073741824)", clip(.0))]
    Syntax(String),
    /// A negative amount of memory.
    #[error("{:?} is negative", clip(.0))]
    Negative(String),
    /// More bytes than fit in 64 bits.
    #[error("{:?} is too large", clip(.0))]
    TooLarge(String),
}

/// Parse a quantity into bytes, rounding a fraction up.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_string());
    let too_large = || QuantityError::TooLarge(text.to_string());
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(syntax());
    }
    // (multiplier as 1024^k, exponent of ten)
    let (binary_pow, mut exp10): (u32, i64) = match suffix {
        "Ki" => (1, 0),
        "Mi" => (2, 0),
        "Gi" => (3, 0),
        "Ti" => (4, 0),
        "Pi" => (5, 0),
        "Ei" => (6, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        s if s.starts_with(['e', 'E']) => {
            let e = &s[1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(syntax());
            }
            (0, e.parse::<i64>().map_err(|_| syntax())?)
        }
        _ => return Err(syntax()),
    };
    // Digits without the decimal point; the point moves the exponent.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    exp10 -= frac_part.len() as i64;
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(text.to_string()));
    }
    if digits.len() > 38 {
        return Err(too_large());
    }
    let mut value: u128 = digits.parse().map_err(|_| syntax())?;
    value = value
        .checked_mul(1u128 << (10 * binary_pow))
        .ok_or_else(too_large)?;
    if exp10 >= 0 {
        let scale = 10u128.checked_pow(exp10 as u32).ok_or_else(too_large)?;
        value = value.checked_mul(scale).ok_or_else(too_large)?;
    } else {
        // More than 38 places down leaves less than one byte: round up to 1.
        value = match 10u128.checked_pow((-exp10) as u32) {
            Some(scale) => value.div_ceil(scale),
            None => 1,
        };
    }
    u64::try_from(value).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_bytes() {
        let cases: &[(&str, u64)] = &[
            ("1Gi", 1 << 30),
            ("512Mi", 512 << 20),
            ("64M", 64_000_000),
            ("1G", 1_000_000_000),
            ("1073741824", 1 << 30),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("2.5Gi", 5 << 29),
            ("0.5Ki", 512),
            ("1.5", 2),
            ("100m", 1),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("+3", 3),
            ("0", 0),
            ("-0", 0),
            ("5e-1", 1),
            ("1e-50", 1),
            (".5Ki", 512),
            ("15Ei", 15 << 60),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Ok(*bytes), "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for text in [
            "",
            "Gi",
            "1GB",
            "1gi",
            "1 Gi",
            " 1Gi",
            "1.2.3",
            "1e",
            "1e+",
            "1ee3",
            "0x10",
            "1.",
            "abc",
            "1Gi ",
            "1e1000000",
        ] {
            let e = parse_bytes(text);
            // "1." is a valid number in Kubernetes' grammar: digits then a point.
            if text == "1." {
                assert_eq!(e, Ok(1));
                continue;
            }
            assert!(
                matches!(
                    e,
                    Err(QuantityError::Syntax(_)) | Err(QuantityError::TooLarge(_))
                ),
                "{text:?}: {e:?}"
            );
        }
        assert_eq!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Negative("-1Gi".into()))
        );
        assert_eq!(
            parse_bytes("16Ei"),
            Err(QuantityError::TooLarge("16Ei".into()))
        );
        assert!(matches!(
            parse_bytes("99999999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_bytes("1e30"),
            Err(QuantityError::TooLarge(_))
        ));
    }
}
