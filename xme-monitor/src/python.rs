//! JSON written exactly as Python's `json.dumps` writes it by default.

use serde_json::{Map, Number, Value};

/// What kind of JSON value this is, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        write_string(k, out);
        out.extend_from_slice(b": ");
        write_value(v, out);
    }
    out.push(b'}');
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

/// `ensure_ascii`: `\"`, `\\`, the five short escapes, and every other
/// character outside `' '..='~'` as `\uxxxx` (lowercase; UTF-16 surrogate
/// pairs above U+FFFF), as CPython's `py_encode_basestring_ascii`.
fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Copy the run of characters that need no escape in one go.
        let run = bytes[i..]
            .iter()
            .position(|&b| !(b' '..=b'~').contains(&b) || b == b'"' || b == b'\\')
            .unwrap_or(bytes.len() - i);
        out.extend_from_slice(&bytes[i..i + run]);
        i += run;
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((*u >> shift) & 0xf)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

/// Integers exactly (Python ints have no size limit); floats as `repr`.
fn write_number(n: &Number, out: &mut Vec<u8>) {
    // With serde_json's arbitrary_precision, the text is the number as read
    // (or as formatted when built from a Rust value): valid JSON, so an
    // integer has no '+' and no leading zero.
    let text = n.as_str();
    if !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        // "-0" is the integer 0 to Python.
        out.extend_from_slice(if text == "-0" { b"0" } else { text.as_bytes() });
        return;
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            let mut buf = ryu::Buffer::new();
            let short = buf.format_finite(f);
            if ryu_is_repr(f, short) {
                out.extend_from_slice(short.as_bytes());
            } else {
                out.extend_from_slice(float_repr(f).as_bytes());
            }
        }
        Ok(f) => out.extend_from_slice(float_repr(f).as_bytes()),
        Err(_) => out.extend_from_slice(text.as_bytes()),
    }
}

/// Whether ryu's text for `f` is already Python's `repr`: both write the
/// same shortest digits, and the same fixed form ("1.0", "0.0001") where
/// Python uses fixed notation and ryu did too; ryu keeps fixed notation for
/// some values below 1e-4, where Python switches to exponents.
fn ryu_is_repr(f: f64, short: &str) -> bool {
    let a = f.abs();
    (a == 0.0 || (1e-4..1e16).contains(&a)) && !short.contains('e')
}

/// Python's `repr(float)`: the shortest digits that read back to `f`, in
/// fixed notation when the decimal point position is in -4 < p <= 16, else
/// as `d.ddde±XX`.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(f);
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (s, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut point = int_part.len() as i32 + exp; // digits before the point
    let lead = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..lead);
    point -= lead as i32;
    let trimmed = digits.trim_end_matches('0').len();
    digits.truncate(trimmed);
    let mut out = String::with_capacity(24);
    if neg {
        out.push('-');
    }
    if digits.is_empty() {
        out.push_str("0.0");
        return out;
    }
    let n = digits.len() as i32;
    if point > -4 && point <= 16 {
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (point - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = point - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_python_repr() {
        for (f, want) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e300, "1.5e+300"),
            (-2.5e-7, "-2.5e-07"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740993.0, "9007199254740992.0"),
        ] {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn ryu_fixed_notation_is_python_repr() {
        let mut n = 1e-8f64;
        while n < 1e18 {
            for f in [n, n * 1.5, n * 7.123456789, -n / 3.0] {
                let mut buf = ryu::Buffer::new();
                let short = buf.format_finite(f);
                if ryu_is_repr(f, short) {
                    assert_eq!(short, float_repr(f), "{f:e}");
                }
            }
            n *= 10.0;
        }
        let mut out = Vec::new();
        for (text, want) in [
            ("-0", "0"),
            ("12", "12"),
            ("1E2", "100.0"),
            ("2.50", "2.5"),
            ("1e16", "1e+16"),
        ] {
            out.clear();
            write_number(&text.parse::<Number>().unwrap(), &mut out);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn strings_escaped_as_ensure_ascii() {
        let mut out = Vec::new();
        write_string("a\"\\\n\t\u{0}\u{1f}\u{7f}é😀/", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""a\"\\\n\t\u0000\u001f\u007f\u00e9\ud83d\ude00/""#
        );
    }
}
