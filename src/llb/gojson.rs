//! JSON as Go's `encoding/json` writes it: `<`, `>` and `&` (and U+2028, U+2029) escaped as
//! `\u003c`-style sequences, which serde_json leaves alone. Bytes that end up inside op
//! digests (local source patterns) must match Go's exactly.

/// Escapes what Go escapes and serde_json does not. Those characters can only occur inside
/// JSON strings, so the whole document can be rewritten.
pub(crate) fn go_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON array of strings, as Go's `json.Marshal([]string)` writes it.
pub(crate) fn string_array(items: &[String]) -> String {
    go_escape(serde_json::Value::from(items.to_vec()).to_string())
}

/// A JSON string literal, as Go writes it.
pub(crate) fn string(s: &str) -> String {
    go_escape(serde_json::Value::from(s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        assert_eq!(string_array(&["*.txt".into()]), r#"["*.txt"]"#);
        assert_eq!(string("a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
    }
}
