//! HTML escaping: every string that reaches a page from the API (names,
//! labels, messages, anything a user could have typed) goes through
//! [`esc`], so that a Cluster named `<script>` is text, never markup.

use std::fmt::{self, Display, Write};

/// Text made safe for HTML element content and double-quoted attribute
/// values: `&`, `<`, `>`, `"` and `'` become character references.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Writing into a String cannot fail.
    let _ = push_escaped(&mut out, text);
    out
}

fn push_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    let mut last = 0;
    for (i, c) in text.char_indices() {
        let replacement = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&#39;",
            _ => continue,
        };
        out.write_str(&text[last..i])?;
        out.write_str(replacement)?;
        last = i + c.len_utf8();
    }
    out.write_str(&text[last..])
}

/// Displays `value` escaped, for use in `format!` and `write!`:
/// `format!("<td>{}</td>", esc(&cluster.name))`.
pub fn esc<T: Display + ?Sized>(value: &T) -> Escaped<'_, T> {
    Escaped(value)
}

/// A value displayed with HTML escaping (see [`esc`]).
#[derive(Debug)]
pub struct Escaped<'a, T: ?Sized>(&'a T);

impl<T: Display + ?Sized> Display for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Displayed values are usually short names, so one buffer beats a
        // writer adaptor that escapes piece by piece.
        let text = self.0.to_string();
        push_escaped(f, &text)
    }
}

/// Percent-encodes `text` for a URL query value or path segment
/// (everything but unreserved characters, RFC 3986).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

/// A query string (`?a=1&b=2`, escaped for an attribute) from pairs,
/// leaving out empty values; empty when nothing is left.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| format!("{}={}", url_encode(key), url_encode(value)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        // `&` between pairs must itself be escaped inside an attribute.
        format!("?{}", parts.join("&amp;"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        let cases = [
            ("plain-name", "plain-name"),
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            ("a & b", "a &amp; b"),
            (r#"" onmouseover="x"#, "&quot; onmouseover=&quot;x"),
            ("it's", "it&#39;s"),
            ("ünïcødé ✓ <b>", "ünïcødé ✓ &lt;b&gt;"),
            ("", ""),
            ("&amp;", "&amp;amp;"),
        ];
        for (input, want) in cases {
            assert_eq!(escape(input), want, "escape({input:?})");
            assert_eq!(format!("{}", esc(input)), want, "esc({input:?})");
        }
    }

    #[test]
    fn esc_escapes_any_display() {
        assert_eq!(format!("{}", esc(&3)), "3");
        let error = std::io::Error::other("<bad> & \"worse\"");
        assert_eq!(
            format!("{}", esc(&error)),
            "&lt;bad&gt; &amp; &quot;worse&quot;"
        );
    }

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(url_encode("env=dev,tier!=db"), "env%3Ddev%2Ctier%21%3Ddb");
        assert_eq!(url_encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(url_encode("Safe-name_1.2~"), "Safe-name_1.2~");
    }

    #[test]
    fn queries_leave_out_empty_values_and_escape_ampersands() {
        assert_eq!(query(&[]), "");
        assert_eq!(query(&[("q", "")]), "");
        assert_eq!(
            query(&[("q", "web"), ("ns", ""), ("sort", "-age")]),
            "?q=web&amp;sort=-age"
        );
    }
}
