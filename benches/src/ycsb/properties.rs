//! YCSB property files: Java `.properties` syntax, and `-p name=value` overrides.
//!
//! The parser follows `java.util.Properties.load`: logical lines joined by a trailing odd number
//! of backslashes (leading whitespace of the continuation dropped), `#` and `!` comment lines,
//! blank lines, a key ending at the first unescaped `=`, `:` or whitespace, then optional
//! whitespace, one optional `=` or `:`, and whitespace before the value, and the escapes `\t`,
//! `\n`, `\r`, `\f`, `\uXXXX` and `\<any>`. Like Java it keeps a value's trailing whitespace; the
//! typed readers of the workload trim it. Files are read as ISO-8859-1, as `load(InputStream)`
//! does. Unknown names are kept: the workload reads the ones it knows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A property source that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("cannot read property file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: malformed \\uXXXX escape")]
    MalformedUnicodeEscape { line: usize },
    #[error("property override {0:?} is not of the form name=value")]
    MalformedOverride(String),
}

/// A set of properties; a later value for a name replaces an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    entries: BTreeMap<String, String>,
}

impl Properties {
    /// No properties.
    pub fn new() -> Properties {
        Properties::default()
    }

    /// Parses the text of a property file.
    pub fn parse(text: &str) -> Result<Properties, PropertiesError> {
        let mut properties = Properties::new();
        for line in logical_lines(text) {
            let (key, value) = split_key_value(&line.text);
            let key = unescape(key, line.first_line)?;
            let value = unescape(value, line.first_line)?;
            properties.entries.insert(key, value);
        }
        Ok(properties)
    }

    /// Reads and parses a property file.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Properties, PropertiesError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PropertiesError::Io { path: path.to_owned(), source })?;
        let text: String = bytes.iter().map(|&b| char::from(b)).collect();
        Properties::parse(&text)
    }

    /// Adds every property of `other`, replacing values of the same name (a later `-P` file, as
    /// YCSB's client merges them).
    pub fn extend_from(&mut self, other: &Properties) {
        for (name, value) in &other.entries {
            self.entries.insert(name.clone(), value.clone());
        }
    }

    /// Sets one property.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(name.into(), value.into());
    }

    /// Applies a `-p name=value` override: the name is everything before the first `=`, the
    /// value everything after it, as YCSB's client splits it.
    pub fn apply_override(&mut self, assignment: &str) -> Result<(), PropertiesError> {
        match assignment.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                self.set(name, value);
                Ok(())
            }
            _ => Err(PropertiesError::MalformedOverride(assignment.to_owned())),
        }
    }

    /// The value of `name`, as written (not trimmed).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(String::as_str)
    }

    /// All properties, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of properties.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Java's whitespace for property files: space, tab, form feed.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

fn is_newline(c: char) -> bool {
    matches!(c, '\n' | '\r')
}

struct LogicalLine {
    /// The physical line it starts on, from 1, for error messages.
    first_line: usize,
    /// Its text with leading whitespace and continuations removed, escapes still in place.
    text: Vec<char>,
}

/// Splits `text` into logical lines as Java's `Properties.LineReader` does.
fn logical_lines(text: &str) -> Vec<LogicalLine> {
    let mut lines = Vec::new();
    let mut current: Vec<char> = Vec::new();
    let mut line_no = 1;
    let mut first_line = 1;
    let mut skip_blanks = true; // at the start of a logical line or a continuation
    let mut continuation_start = false; // the blanks being skipped begin a continuation line
    let mut at_line_start = true; // no character of this logical line seen yet
    let mut in_comment = false;
    let mut preceding_backslash = false;
    let mut skip_lf = false; // just saw '\r': a '\n' right after it belongs to it

    for c in text.chars() {
        if skip_lf {
            skip_lf = false;
            if c == '\n' {
                continue;
            }
        }
        if in_comment {
            if is_newline(c) {
                line_no += 1;
                skip_lf = c == '\r';
                in_comment = false;
                at_line_start = true;
                skip_blanks = true;
            }
            continue;
        }
        if skip_blanks {
            if is_blank(c) {
                continue;
            }
            if !continuation_start && is_newline(c) {
                // A blank line.
                line_no += 1;
                skip_lf = c == '\r';
                continue;
            }
            skip_blanks = false;
            continuation_start = false;
        }
        if at_line_start {
            at_line_start = false;
            first_line = line_no;
            if c == '#' || c == '!' {
                in_comment = true;
                continue;
            }
        }
        if !is_newline(c) {
            current.push(c);
            preceding_backslash = c == '\\' && !preceding_backslash;
            continue;
        }
        line_no += 1;
        skip_lf = c == '\r';
        if preceding_backslash {
            // An odd number of trailing backslashes: drop the last, join the next line.
            current.pop();
            preceding_backslash = false;
            skip_blanks = true;
            continuation_start = true;
            continue;
        }
        if !current.is_empty() {
            lines.push(LogicalLine { first_line, text: std::mem::take(&mut current) });
        }
        at_line_start = true;
        skip_blanks = true;
    }
    if !in_comment && !current.is_empty() {
        if preceding_backslash {
            current.pop();
        }
        lines.push(LogicalLine { first_line, text: current });
    }
    lines
}

/// Splits a logical line into its escaped key and value, as `Properties.load0` does.
fn split_key_value(line: &[char]) -> (&[char], &[char]) {
    let mut key_len = 0;
    let mut value_start = line.len();
    let mut has_separator = false;
    let mut preceding_backslash = false;
    while key_len < line.len() {
        let c = line[key_len];
        if !preceding_backslash && (c == '=' || c == ':') {
            value_start = key_len + 1;
            has_separator = true;
            break;
        }
        if !preceding_backslash && is_blank(c) {
            value_start = key_len + 1;
            break;
        }
        preceding_backslash = c == '\\' && !preceding_backslash;
        key_len += 1;
    }
    while value_start < line.len() {
        let c = line[value_start];
        if !is_blank(c) {
            if !has_separator && (c == '=' || c == ':') {
                has_separator = true;
            } else {
                break;
            }
        }
        value_start += 1;
    }
    (&line[..key_len], &line[value_start..])
}

/// Resolves the escapes of a key or value (`Properties.loadConvert`).
fn unescape(escaped: &[char], line: usize) -> Result<String, PropertiesError> {
    let mut out = String::with_capacity(escaped.len());
    let mut pending_high_surrogate: Option<u16> = None;
    let mut i = 0;
    while i < escaped.len() {
        let c = escaped[i];
        i += 1;
        let decoded = if c != '\\' {
            c
        } else if i == escaped.len() {
            // A lone backslash at the very end (only possible in a key cut short): dropped.
            break;
        } else {
            let e = escaped[i];
            i += 1;
            match e {
                'u' => {
                    let hex: String =
                        escaped.get(i..i + 4).ok_or(PropertiesError::MalformedUnicodeEscape { line })?.iter().collect();
                    let unit =
                        u16::from_str_radix(&hex, 16).map_err(|_| PropertiesError::MalformedUnicodeEscape { line })?;
                    i += 4;
                    // Java strings are UTF-16: a surrogate pair written as two escapes is one
                    // character; an unpaired surrogate becomes U+FFFD.
                    if (0xD800..0xDC00).contains(&unit) {
                        if pending_high_surrogate.replace(unit).is_some() {
                            out.push(char::REPLACEMENT_CHARACTER);
                        }
                        continue;
                    }
                    if (0xDC00..0xE000).contains(&unit) {
                        match pending_high_surrogate.take() {
                            Some(high) => {
                                let code = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                            }
                            None => out.push(char::REPLACEMENT_CHARACTER),
                        }
                        continue;
                    }
                    char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER)
                }
                't' => '\t',
                'r' => '\r',
                'n' => '\n',
                'f' => '\x0c',
                other => other,
            }
        };
        if pending_high_surrogate.take().is_some() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
        out.push(decoded);
    }
    if pending_high_surrogate.is_some() {
        out.push(char::REPLACEMENT_CHARACTER);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, String)> {
        Properties::parse(text).unwrap().iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.sort();
        v
    }

    #[test]
    fn separators_and_whitespace() {
        let text = "a=1\nb: 2\nc 3\n  d  =  4\ne\t:\t5\nf = = 6\ng\nh=\n";
        assert_eq!(
            parse(text),
            pairs(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5"), ("f", "= 6"), ("g", ""), ("h", "")])
        );
    }

    #[test]
    fn comments_and_blank_lines() {
        let text = "# a comment\n! another\n   # indented comment\n\n   \nx=1 # not a comment\n";
        assert_eq!(parse(text), pairs(&[("x", "1 # not a comment")]));
    }

    #[test]
    fn trailing_whitespace_of_a_value_is_kept() {
        assert_eq!(parse("x = 1  \n"), pairs(&[("x", "1  ")]));
    }

    #[test]
    fn continuation_lines() {
        let text = "list = a, \\\n       b, \\\n   c\nnext=1\n";
        assert_eq!(parse(text), pairs(&[("list", "a, b, c"), ("next", "1")]));
        // An even number of backslashes does not continue the line.
        assert_eq!(parse("p=a\\\\\nq=b\n"), pairs(&[("p", "a\\"), ("q", "b")]));
        // A comment is never continued; a continued line may look like a comment.
        assert_eq!(parse("# c \\\nz=1\nk=v\\\n#x\n"), pairs(&[("z", "1"), ("k", "v#x")]));
        // A backslash at the end of the file is dropped.
        assert_eq!(parse("k=v\\"), pairs(&[("k", "v")]));
    }

    #[test]
    fn line_endings() {
        assert_eq!(parse("a=1\r\nb=2\rc=3"), pairs(&[("a", "1"), ("b", "2"), ("c", "3")]));
        assert_eq!(parse("a=x\\\r\n  y\r\n"), pairs(&[("a", "xy")]));
    }

    #[test]
    fn escapes() {
        let text = "key\\ with\\=odd\\:chars = v\\tw\\u0041\\\\\\q\n";
        assert_eq!(parse(text), pairs(&[("key with=odd:chars", "v\twA\\q")]));
        assert_eq!(parse("e=\\uD83D\\uDE00\n"), pairs(&[("e", "\u{1F600}")]));
        assert!(matches!(
            Properties::parse("ok=1\nbad=\\u12G4\n"),
            Err(PropertiesError::MalformedUnicodeEscape { line: 2 })
        ));
        assert!(Properties::parse("bad=\\u12").is_err());
    }

    #[test]
    fn later_definitions_and_overrides_win() {
        let mut p = Properties::parse("a=1\na=2\nb=x\n").unwrap();
        assert_eq!(p.get("a"), Some("2"));
        p.apply_override("b=y=z").unwrap();
        assert_eq!(p.get("b"), Some("y=z"));
        p.apply_override("c=").unwrap();
        assert_eq!(p.get("c"), Some(""));
        assert!(matches!(p.apply_override("novalue"), Err(PropertiesError::MalformedOverride(_))));
        assert!(p.apply_override("=1").is_err());
        let mut base = Properties::parse("a=0\nonly=base\n").unwrap();
        base.extend_from(&p);
        assert_eq!(base.get("a"), Some("2"));
        assert_eq!(base.get("only"), Some("base"));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = Properties::load_file("/nonexistent/workloadz").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/workloadz"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "(?s).{0,200}") {
            let _ = Properties::parse(&text);
        }

        #[test]
        fn simple_pairs_round_trip(key in "[a-z][a-z0-9_.]{0,15}", value in "[A-Za-z0-9_.,/-]{0,20}") {
            let p = Properties::parse(&format!("# header\n{key} = {value}\n")).unwrap();
            proptest::prop_assert_eq!(p.get(&key), Some(value.as_str()));
        }
    }
}
