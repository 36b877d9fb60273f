//! Number formatting for messages people read: compact, never hundreds of digits.

/// `v` in its shortest round-tripping form: plain between 1e-4 and 1e6 (`0.25`, `12000`),
/// scientific outside (`1e300`, `2.5e-9`), `inf`/`NaN` as such.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() || a == 0.0 || (1e-4..1e6).contains(&a) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// The chain of an error's messages joined by `: ` (what `{:#}` shows with anyhow), skipping a
/// source whose text its parent already contains.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(src) = next {
        let text = src.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = src.source();
    }
    out
}

/// An integer with thousands separators: 70,623,232.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
