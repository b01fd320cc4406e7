//! Human units on the command line: Go-style durations, whole seconds and byte sizes.

use std::time::Duration;

/// Parses a Go-style duration (`90s`, `48h`, `1h30m`, `1.5h`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration; write e.g. 30m, 48h or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A whole number of seconds; clap reports anything else as a usage error.
pub fn parse_seconds(value: &str) -> Result<Duration, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{value:?} must be a whole number of seconds"));
    }
    let secs: u64 = value
        .parse()
        .map_err(|_| format!("{value:?} is too large a number of seconds"))?;
    Ok(Duration::from_secs(secs))
}

/// Parses a byte size as docker and buildx read one (go-units' `RAMInBytes`): a number, an
/// optional space and an optional unit in powers of 1024, so `10GB`, `10g`, `10 GiB` and
/// `10gb` are all 10 GiB, and a bare number is bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a size; write e.g. 512MB, 10GB or 1048576 (units are powers of 1024, as in docker)"
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    // `\d+(\.\d+)*`: digits first and last, as go-units requires.
    if !number.starts_with(|c: char| c.is_ascii_digit())
        || !number.ends_with(|c: char| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    // ` ?([kKmMgGtTpP])?[iI]?[bB]?`
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let (power, rest) = match unit.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            ("kmgtp".find(c).map_or(0, |i| i + 1), &unit[1..])
        }
        _ => (0, unit.as_str()),
    };
    let rest = rest.strip_prefix('i').unwrap_or(rest);
    let rest = rest.strip_prefix('b').unwrap_or(rest);
    if !rest.is_empty() {
        return Err(bad());
    }
    let bytes = number * 1024f64.powi(power as i32);
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Formats bytes with decimal units, as docker and buildctl do (`1.23MB`), the same way the
/// progress output does.
pub fn format_bytes(bytes: i64) -> String {
    pf_buildkit::buildkit::progress::human_bytes(u64::try_from(bytes).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("48h").unwrap(),
            Duration::from_secs(48 * 3600)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1_048_576);
        // docker's and buildx's units: powers of 1024, whatever the spelling.
        for ten_gib in [
            "10GB",
            "10gb",
            "10g",
            "10G",
            "10GiB",
            "10gi",
            "10 GB",
            "10737418240",
        ] {
            assert_eq!(parse_bytes(ten_gib).unwrap(), 10 << 30, "{ten_gib}");
        }
        assert_eq!(parse_bytes("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("2p").unwrap(), 2 << 50);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        for bad in [
            "ten", "5XB", "", "GB", ".5g", "5.g", "-1", "10  GB", "10gbb", "10e3", "1ei",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_bytes("99999999999999999999999").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(999), "999B");
        assert_eq!(format_bytes(1_000), "1kB");
        assert_eq!(format_bytes(1_234_567), "1.235MB");
        assert_eq!(format_bytes(-5), "0B");
        assert_eq!(format_bytes(1_500_000_000), "1.5GB");
    }
}
