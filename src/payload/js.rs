//! JSON as JavaScript prints it: `JSON.stringify(JSON.parse(text))`.
//!
//! ModelRiver's own receivers check `X-ModelRiver-Signature` over
//! `JSON.stringify(req.body.data)`, and the seed's check over `JSON.stringify(req.body)`:
//! what JavaScript prints after parsing, not the bytes that were sent. eddy therefore
//! writes every JSON value it embeds in a webhook body or a push in the form JavaScript
//! would print it, so that parsing and printing again in JavaScript gives back the same
//! bytes. Where that form differs from the text eddy stored:
//!
//! - numbers are doubles: `1.0` → `1`, `1E3` → `1000`, `-0` → `0`, `1e21` → `1e+21`,
//!   `0.0000001` → `1e-7`, and integers beyond 2^53 are rounded to the nearest double
//!   (`12345678901234567890` → `12345678901234567000`), as every JavaScript reader would;
//! - object keys that are array indices (`"0"` … `"4294967294"`) come first, in ascending
//!   order, then the other keys in the order written;
//! - of duplicate keys the last value is kept, at the place of the first;
//! - strings are escaped as `JSON.stringify` escapes them (`"`, `\`, `\b \f \n \r \t`, other
//!   control characters as `\u00xx`; everything else, U+2028 and emoji included, as is).

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// The largest integer a double holds exactly, with all below it.
const MAX_SAFE: u64 = 1 << 53;

/// `JSON.stringify(JSON.parse(text))`, or `None` if `text` is not JSON.
pub fn canonical(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    Some(stringify(&value))
}

/// What `JSON.stringify` prints for `value`, had JavaScript parsed it.
pub fn stringify(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value);
    out
}

fn write(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => number(out, n),
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => object(out, map),
    }
}

fn string(out: &mut String, s: &str) {
    // serde_json escapes exactly the characters JSON.stringify escapes, with lowercase hex.
    out.push_str(&serde_json::to_string(s).expect("strings serialize"));
}

/// A key JavaScript orders as an array index: the canonical decimal form of an integer
/// below 2^32 − 1.
fn array_index(key: &str) -> Option<u32> {
    let b = key.as_bytes();
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    key.parse::<u64>()
        .ok()
        .filter(|&n| n < u32::MAX as u64)
        .map(|n| n as u32)
}

fn object(out: &mut String, map: &Map<String, Value>) {
    let mut indexed: Vec<(u32, &String, &Value)> = map
        .iter()
        .filter_map(|(k, v)| array_index(k).map(|i| (i, k, v)))
        .collect();
    indexed.sort_unstable_by_key(|(i, _, _)| *i);
    let named = map.iter().filter(|(k, _)| array_index(k).is_none());
    out.push('{');
    let entries = indexed.into_iter().map(|(_, k, v)| (k, v)).chain(named);
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, key);
        out.push(':');
        write(out, value);
    }
    out.push('}');
}

fn number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        if u <= MAX_SAFE {
            let _ = write!(out, "{u}");
        } else {
            double(out, u as f64);
        }
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() <= MAX_SAFE {
            let _ = write!(out, "{i}");
        } else {
            double(out, i as f64);
        }
    } else {
        double(out, n.as_f64().unwrap_or(0.0));
    }
}

/// ECMAScript's Number::toString for a finite double: the shortest digits that read back
/// as `x`, in positional notation from 1e-6 up to 1e21 and in exponent notation outside.
fn double(out: &mut String, x: f64) {
    if x == 0.0 || !x.is_finite() {
        // -0 prints as 0; JSON has no NaN or infinities, and JavaScript prints them as null.
        out.push_str(if x == 0.0 { "0" } else { "null" });
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    let (digits, n) = shortest(x.abs());
    let k = digits.len() as i32;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{}", if n > 0 { '+' } else { '-' }, (n - 1).abs());
    }
}

/// `x` (positive, finite) in scientific form: its digits and the exponent of 10 with
/// which their first digit reads as a fraction (0.digits × 10^n).
fn scientific(text: &str) -> (Vec<u8>, i32) {
    let (mantissa, exp) = text.split_once('e').expect("{:e} has an exponent");
    let digits = mantissa.bytes().filter(|b| *b != b'.').collect();
    (
        digits,
        exp.parse::<i32>().expect("{:e} exponent is an integer") + 1,
    )
}

/// The shortest digits that read back as `x` (positive, finite), closest to `x`, and of two
/// as close the even one (ECMAScript's rule); with `n` as in [`scientific`].
///
/// Rust's `{:e}` prints the shortest closest digits but rounds an exact tie up: x =
/// 1910195614231229.25 prints `…229.3`, JavaScript `…229.2`. A tie needs `x`'s exact decimal
/// expansion to stop one digit further, on a 5, which a formatting to one more digit shows
/// cheaply; only then is the exact expansion (at most 767 significant digits) looked at.
fn shortest(x: f64) -> (String, i32) {
    let (digits, n) = scientific(&format!("{x:e}"));
    let k = digits.len();
    let text = |d: &[u8]| String::from_utf8(d.to_vec()).expect("digits are ASCII");
    let next = format!("{x:.k$e}");
    if next.split_once('e').is_none_or(|(m, _)| !m.ends_with('5')) {
        return (text(&digits), n);
    }
    let (exact, en) = scientific(&format!("{x:.800e}"));
    let tie = en == n && exact[k] == b'5' && exact[k + 1..].iter().all(|&d| d == b'0');
    if !tie || (exact[k - 1] - b'0') % 2 == 0 && digits == exact[..k] {
        return (text(&digits), n);
    }
    // Exactly halfway between exact[..k] and the next k-digit number: take the even one,
    // if it reads back as x.
    let mut even = exact[..k].to_vec();
    if (even[k - 1] - b'0') % 2 == 1 {
        let mut i = k;
        while i > 0 {
            i -= 1;
            if even[i] == b'9' {
                even[i] = b'0';
            } else {
                even[i] += 1;
                break;
            }
        }
        if even.iter().all(|&d| d == b'0') {
            return (text(&digits), n);
        }
    }
    let reads_back = format!("0.{}e{n}", text(&even))
        .parse::<f64>()
        .is_ok_and(|y| y == x);
    while even.len() > 1 && even.last() == Some(&b'0') {
        even.pop();
    }
    if reads_back {
        (text(&even), n)
    } else {
        (text(&digits), n)
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    fn js(text: &str) -> String {
        canonical(text).expect("valid JSON")
    }

    /// Numbers print as ECMAScript's Number::toString prints the double JavaScript reads;
    /// the expected strings are what Node 20 prints.
    #[test]
    fn numbers_as_javascript_prints_them() {
        let cases = [
            ("1.0", "1"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("1E3", "1000"),
            ("0.1", "0.1"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("123456789012345678901", "123456789012345680000"),
            ("1e-6", "0.000001"),
            ("1e-7", "1e-7"),
            ("1.5e-7", "1.5e-7"),
            ("0.000001234", "0.000001234"),
            ("-1.25e+300", "-1.25e+300"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("9007199254740993", "9007199254740992"),
            ("9007199254740992", "9007199254740992"),
            ("-9007199254740993", "-9007199254740992"),
            ("12345678901234567890", "12345678901234567000"),
            ("18446744073709551615", "18446744073709552000"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("100", "100"),
            ("-42", "-42"),
            ("3.14159", "3.14159"),
            ("1.0000000000000002", "1.0000000000000002"),
            ("123e-20", "1.23e-18"),
            ("4.35", "4.35"),
            ("2.5e20", "250000000000000000000"),
            ("1910195614231229.25", "1910195614231229.2"),
            ("1910195614231229.75", "1910195614231229.8"),
            ("0.5", "0.5"),
            ("2.5", "2.5"),
        ];
        for (input, want) in cases {
            assert_eq!(js(input), want, "JSON.stringify(JSON.parse({input:?}))");
        }
    }

    /// Array-index keys first in ascending order, then the rest as written; the last of
    /// duplicate keys wins at the first one's place.
    #[test]
    fn keys_in_javascript_order() {
        assert_eq!(
            js(r#"{"b":1,"10":2,"a":3,"2":4,"01":5,"-1":6,"4294967295":7,"4294967294":8,"0":9}"#),
            r#"{"0":9,"2":4,"10":2,"4294967294":8,"b":1,"a":3,"01":5,"-1":6,"4294967295":7}"#
        );
        assert_eq!(js(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(
            js(r#"{"x": [ {"1":1,"0":0} , 2 ] }"#),
            r#"{"x":[{"0":0,"1":1},2]}"#
        );
    }

    /// Strings escape as JSON.stringify escapes them and nothing more.
    #[test]
    fn strings_as_javascript_escapes_them() {
        assert_eq!(
            js(r#""\u0000\u001f\b\f\n\r\t\"\\\/\u007f\u2028\u2029é😀""#),
            "\"\\u0000\\u001f\\b\\f\\n\\r\\t\\\"\\\\/\u{7f}\u{2028}\u{2029}é😀\""
        );
        assert_eq!(js(r#""\ud83d\ude00""#), "\"😀\"");
    }

    /// Not JSON: no canonical form.
    #[test]
    fn invalid_json_has_no_form() {
        assert_eq!(canonical("{"), None);
        assert_eq!(canonical(""), None);
    }
}
