//! COPY … FROM STDIN / TO STDOUT in PostgreSQL's text and CSV formats.
//!
//! COPY FROM is fed incrementally: complete records are cut from the incoming bytes as
//! they arrive, converted to the table's types and buffered into the transaction, so
//! only the current partial record is held besides the transaction's own write buffer.

use crate::catalog::TableDef;
use crate::types::{DataType, Value};
use amberdb_error::{Error, Result};
use sqlparser::ast;

/// Text or CSV, with their options.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFormat {
    /// CSV (else PostgreSQL's text format).
    pub csv: bool,
    /// Field delimiter.
    pub delimiter: char,
    /// The string that means NULL.
    pub null: String,
    /// Whether the first line is a header (CSV only).
    pub header: bool,
    /// CSV quote character.
    pub quote: char,
}

/// A COPY statement with its boolean options (`FREEZE`, `HEADER`) spelled `on`/`off`
/// respelled `true`/`false`; `None` if it is not a COPY or nothing changed.
pub fn with_true_false(sql: &str) -> Option<String> {
    let head = sql.trim_start().get(..4)?;
    if !head.eq_ignore_ascii_case("copy") {
        return None;
    }
    let re = regex_lite::Regex::new(r"(?i)\b(freeze|header)\s+(on|off)\b").expect("a constant, valid pattern");
    let out = re.replace_all(sql, |c: &regex_lite::Captures<'_>| {
        format!("{} {}", &c[1], if c[2].eq_ignore_ascii_case("on") { "true" } else { "false" })
    });
    (out != sql).then(|| out.into_owned())
}

impl CopyFormat {
    /// Reads COPY's options (both `WITH (…)` and the legacy forms).
    pub fn from_options(options: &[ast::CopyOption], legacy: &[ast::CopyLegacyOption]) -> Result<Self> {
        let mut csv = false;
        let (mut delimiter, mut null, mut header, mut quote) = (None, None, false, '"');
        for o in options {
            match o {
                ast::CopyOption::Format(f) => match f.value.to_lowercase().as_str() {
                    "csv" => csv = true,
                    "text" => csv = false,
                    other => return Err(Error::sql("0A000", format!("COPY format \"{other}\" is not supported"))),
                },
                ast::CopyOption::Delimiter(c) => delimiter = Some(*c),
                ast::CopyOption::Null(s) => null = Some(s.clone()),
                ast::CopyOption::Header(h) => header = *h,
                ast::CopyOption::Quote(c) => quote = *c,
                ast::CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                // PostgreSQL's FREEZE writes rows already frozen (a VACUUM saved); rows
                // here need no freezing, so it changes nothing.
                ast::CopyOption::Freeze(_) => {}
                other => return Err(Error::sql("0A000", format!("COPY option {other} is not supported"))),
            }
        }
        for o in legacy {
            match o {
                ast::CopyLegacyOption::Csv(opts) => {
                    csv = true;
                    for c in opts {
                        match c {
                            ast::CopyLegacyCsvOption::Header => header = true,
                            ast::CopyLegacyCsvOption::Quote(q) => quote = *q,
                            other => {
                                return Err(Error::sql("0A000", format!("COPY CSV option {other} is not supported")))
                            }
                        }
                    }
                }
                ast::CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
                ast::CopyLegacyOption::Header => header = true,
                other => return Err(Error::sql("0A000", format!("COPY option {other} is not supported"))),
            }
        }
        if header && !csv {
            return Err(Error::sql("0A000", "COPY HEADER is available only in CSV mode"));
        }
        Ok(Self {
            csv,
            delimiter: delimiter.unwrap_or(if csv { ',' } else { '\t' }),
            null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".to_string() }),
            header,
            quote,
        })
    }

    /// Encodes one row (with its terminating newline).
    pub fn encode_row(&self, row: &[Value], types: &[Option<DataType>]) -> String {
        let mut out = String::new();
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(self.delimiter);
            }
            let ty = types.get(i).copied().flatten();
            match v.to_pg_text(ty) {
                None => out.push_str(&self.null),
                Some(s) if self.csv => {
                    let needs = s.is_empty() || s == self.null || s.contains([self.delimiter, self.quote, '\n', '\r']);
                    if needs {
                        out.push(self.quote);
                        for c in s.chars() {
                            if c == self.quote {
                                out.push(self.quote);
                            }
                            out.push(c);
                        }
                        out.push(self.quote);
                    } else {
                        out.push_str(&s);
                    }
                }
                Some(s) => {
                    for c in s.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            '\t' => out.push_str("\\t"),
                            c if c == self.delimiter => {
                                out.push('\\');
                                out.push(c);
                            }
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out.push('\n');
        out
    }

    /// Cuts the next complete record off the front of `buf`, if there is one. In CSV a
    /// newline inside quotes does not end the record.
    pub fn next_record(&self, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut in_quotes = false;
        let quote = self.quote as u32 as u8;
        for (i, &b) in buf.iter().enumerate() {
            if self.csv && b == quote {
                in_quotes = !in_quotes;
            } else if b == b'\n' && !in_quotes {
                let mut rec: Vec<u8> = buf.drain(..=i).collect();
                rec.pop();
                if rec.last() == Some(&b'\r') {
                    rec.pop();
                }
                return Some(rec);
            }
        }
        None
    }

    /// Splits a record into fields (`None` = NULL).
    pub fn parse_record(&self, rec: &str) -> Result<Vec<Option<String>>> {
        if self.csv {
            return self.parse_csv(rec);
        }
        let mut fields = Vec::new();
        for raw in rec.split(self.delimiter) {
            if raw == self.null {
                fields.push(None);
                continue;
            }
            let mut s = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    s.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('r') => s.push('\r'),
                    Some('t') => s.push('\t'),
                    Some('b') => s.push('\u{8}'),
                    Some('f') => s.push('\u{c}'),
                    Some('v') => s.push('\u{b}'),
                    Some(other) => s.push(other),
                    None => return Err(Error::sql("22P04", "unterminated backslash escape in COPY data")),
                }
            }
            fields.push(Some(s));
        }
        Ok(fields)
    }

    fn parse_csv(&self, rec: &str) -> Result<Vec<Option<String>>> {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        let mut chars = rec.chars().peekable();
        while let Some(c) = chars.next() {
            if quoted {
                if c == self.quote {
                    if chars.peek() == Some(&self.quote) {
                        cur.push(self.quote);
                        chars.next();
                    } else {
                        quoted = false;
                    }
                } else {
                    cur.push(c);
                }
            } else if c == self.quote {
                quoted = true;
                was_quoted = true;
            } else if c == self.delimiter {
                fields.push(if !was_quoted && cur == self.null { None } else { Some(std::mem::take(&mut cur)) });
                cur.clear();
                was_quoted = false;
            } else {
                cur.push(c);
            }
        }
        if quoted {
            return Err(Error::sql("22P04", "unterminated CSV quoted field"));
        }
        fields.push(if !was_quoted && cur == self.null { None } else { Some(cur) });
        Ok(fields)
    }
}

/// Converts parsed fields into a full row of `def` (columns not copied get defaults).
pub fn fields_to_row(def: &TableDef, targets: &[usize], fields: Vec<Option<String>>) -> Result<Vec<Value>> {
    if fields.len() != targets.len() {
        let what = if fields.len() < targets.len() {
            "missing data for a column"
        } else {
            "extra data after last expected column"
        };
        // The caller adds "(COPY t, line n)" to every record's error.
        return Err(Error::sql("22P04", what));
    }
    let mut row = vec![Value::Null; def.columns.len()];
    for (f, &t) in fields.into_iter().zip(targets) {
        row[t] = f.map(Value::Text).unwrap_or(Value::Null);
    }
    Ok(row)
}
