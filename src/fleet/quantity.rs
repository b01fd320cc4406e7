//! Kubernetes quantities as metrics-server reports CPU: `123456n`, `250u`, `12m`, `2`, `1.5`.
//!
//! Border: pure parsing; it imports nothing of the crate or of kube.

/// Parses a CPU quantity into nanocores (`1` core = 1 000 000 000).
///
/// Accepts the decimal SI suffixes (`n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`), the
/// binary ones (`Ki` … `Ei`) and decimal exponents (`1e3`), as Kubernetes does. Returns `None`
/// for text that is not a quantity, or a negative one.
///
/// ```
/// use pf_buildkit::fleet::quantity::cpu_nanocores;
/// assert_eq!(cpu_nanocores("123456n"), Some(123_456));
/// assert_eq!(cpu_nanocores("250u"), Some(250_000));
/// assert_eq!(cpu_nanocores("12m"), Some(12_000_000));
/// assert_eq!(cpu_nanocores("1.5"), Some(1_500_000_000));
/// ```
pub fn cpu_nanocores(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "n" => 1.0,
        "u" => 1e3,
        "m" => 1e6,
        "" => 1e9,
        "k" => 1e12,
        "M" => 1e15,
        "G" => 1e18,
        "T" => 1e21,
        "P" => 1e24,
        "E" => 1e27,
        "Ki" => 1024f64 * 1e9,
        "Mi" => 1024f64.powi(2) * 1e9,
        "Gi" => 1024f64.powi(3) * 1e9,
        "Ti" => 1024f64.powi(4) * 1e9,
        "Pi" => 1024f64.powi(5) * 1e9,
        "Ei" => 1024f64.powi(6) * 1e9,
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().ok()?;
            10f64.powi(power) * 1e9
        }
        _ => return None,
    };
    let nanos = (value * factor).round();
    if !nanos.is_finite() || nanos < 0.0 {
        return None;
    }
    // Saturates for absurd values, which only sort last.
    Some(if nanos >= u64::MAX as f64 {
        u64::MAX
    } else {
        nanos as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_metrics_server_uses() {
        assert_eq!(cpu_nanocores("0"), Some(0));
        assert_eq!(cpu_nanocores("1"), Some(1_000_000_000));
        assert_eq!(cpu_nanocores("2500000n"), Some(2_500_000));
        assert_eq!(cpu_nanocores("7u"), Some(7_000));
        assert_eq!(cpu_nanocores("100m"), Some(100_000_000));
        assert_eq!(cpu_nanocores("0.25"), Some(250_000_000));
        assert_eq!(cpu_nanocores("1e3"), Some(1_000_000_000_000));
        assert_eq!(cpu_nanocores("1k"), Some(1_000_000_000_000));
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for bad in ["", "m", "abc", "-5m", "12q", "1.2.3"] {
            assert_eq!(cpu_nanocores(bad), None, "{bad}");
        }
    }

    #[test]
    fn nanocores_are_not_mistaken_for_cores() {
        // The TypeScript original read "123456n" as 123456 cores; it is 0.12 millicores.
        assert!(cpu_nanocores("123456n") < cpu_nanocores("1m"));
    }
}
