//! `CREATE SOURCE` and `CREATE TABLE ... WITH (connector = ...)`, with RisingWave's syntax:
//!
//! ```sql
//! CREATE SOURCE [IF NOT EXISTS] name [(column type, ..., [WATERMARK FOR col AS expr])]
//!   WITH (connector = 'nexmark', nexmark.table.type = 'Bid', ...)
//!   [FORMAT PLAIN ENCODE JSON [(key = 'value', ...)]];
//! ```
//!
//! sqlparser knows neither the statement nor dotted option keys, so the clauses Sabot adds
//! are cut out at the token level and what remains (`CREATE TABLE name (columns)`) goes to
//! sqlparser for the column definitions.

use sqlparser::ast;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::{byte_offset, line_starts, syntax_error, SqlError};

/// A parsed `CREATE SOURCE` (or `CREATE TABLE` with a connector).
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSource {
    /// Name and columns, as a `CREATE TABLE` (its constraints apply to tables only).
    pub table: Box<ast::CreateTable>,
    /// `true` for `CREATE TABLE ... WITH (connector = ...)`: the rows are kept.
    pub is_table: bool,
    /// `WITH (...)` options, keys lower-cased, in the order given.
    pub options: Vec<(String, String)>,
    /// `FORMAT x ENCODE y (...)`, upper-cased format and encode.
    pub format: Option<Format>,
    /// `WATERMARK FOR column AS expression`, the expression as written.
    pub watermark: Option<(String, String)>,
    /// `INCLUDE key | partition | offset | timestamp [AS name]` clauses: the kind
    /// (lower-cased) and the name given, in order.
    pub include: Vec<(String, Option<String>)>,
    /// `APPEND ONLY` after the columns: a table that takes only INSERT.
    pub append_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    pub format: String,
    pub encode: String,
    pub options: Vec<(String, String)>,
}

pub(crate) fn err(message: impl Into<String>, position: Option<usize>) -> SqlError {
    SqlError::Syntax {
        message: message.into(),
        position,
    }
}

/// Parses `text` if it is a `CREATE SOURCE` or a `CREATE TABLE` with a top-level `WITH`
/// clause; `Ok(None)` for any other statement.
pub fn parse_create_source(text: &str) -> Result<Option<CreateSource>, SqlError> {
    let dialect = PostgreSqlDialect {};
    let tokens: Vec<TokenWithSpan> = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| err(e.to_string(), None))?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect();
    let word = |i: usize| word_at(&tokens, i);
    if word(0).as_deref() != Some("CREATE") {
        return Ok(None);
    }
    let is_table = match word(1).as_deref() {
        Some("SOURCE") => false,
        Some("TABLE") => true,
        _ => return Ok(None),
    };
    let starts = line_starts(text);
    let at = |t: &TokenWithSpan| byte_offset(text, &starts, t.span.start.line, t.span.start.column);
    let end_of = |t: &TokenWithSpan| byte_offset(text, &starts, t.span.end.line, t.span.end.column);
    let position = |t: &TokenWithSpan| Some(text[..at(t)].chars().count() + 1);

    // The top-level WITH and, inside the column list, a WATERMARK clause.
    let mut depth = 0i32;
    let mut with_at = None;
    let mut append_at = None;
    let mut watermark: Option<(usize, usize)> = None; // token range [start, end)
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth == 0
            && i > 2
            && word(i).as_deref() == Some("APPEND")
            && word(i + 1).as_deref() == Some("ONLY")
        {
            if !is_table {
                return Err(err(
                    "APPEND ONLY is for tables (a source is always append-only)",
                    position(&tokens[i]),
                ));
            }
            append_at = Some(i);
            i += 2;
            continue;
        }
        if depth == 0
            && word(i).as_deref() == Some("WITH")
            && tokens.get(i + 1).map(|t| &t.token) == Some(&Token::LParen)
        {
            with_at = Some(i);
            break;
        }
        if depth == 1
            && word(i).as_deref() == Some("WATERMARK")
            && word(i + 1).as_deref() == Some("FOR")
        {
            // Up to the next comma or closing parenthesis at this depth.
            let mut j = i;
            let mut d = 0;
            while j < tokens.len() {
                match &tokens[j].token {
                    Token::LParen => d += 1,
                    Token::RParen if d == 0 => break,
                    Token::RParen => d -= 1,
                    Token::Comma if d == 0 => break,
                    _ => {}
                }
                j += 1;
            }
            watermark = Some((i, j));
            i = j;
            continue;
        }
        i += 1;
    }
    if let Some(a) = append_at {
        // APPEND ONLY closes the head: only WITH (...) may follow it.
        let next = a + 2;
        if next < tokens.len() && with_at != Some(next) {
            return Err(err(
                format!("unexpected {} after APPEND ONLY", tokens[next].token),
                position(&tokens[next]),
            ));
        }
    }
    let plain_table = with_at.is_none() && is_table;
    if plain_table && watermark.is_none() && append_at.is_none() {
        // An ordinary CREATE TABLE: sqlparser's path.
        return Ok(None);
    }
    let with_at = match with_at {
        Some(w) => w,
        None if plain_table => tokens.len(),
        None => {
            return Err(err(
                "CREATE SOURCE needs WITH (connector = '...', ...)",
                Some(text.chars().count() + 1),
            ))
        }
    };
    // INCLUDE clauses sit between the columns and WITH, at the top level.
    let mut include = Vec::new();
    let mut include_at = None;
    let mut depth = 0i32;
    let mut i = 2;
    let head_limit = append_at.unwrap_or(with_at);
    while i < head_limit {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth == 0 && word(i).as_deref() == Some("INCLUDE") {
            include_at.get_or_insert(i);
            let kind = word(i + 1)
                .filter(|k| ["KEY", "PARTITION", "OFFSET", "TIMESTAMP"].contains(&k.as_str()))
                .ok_or_else(|| {
                    err(
                        "expected KEY, PARTITION, OFFSET or TIMESTAMP after INCLUDE",
                        tokens.get(i + 1).and_then(position),
                    )
                })?;
            let mut next = i + 2;
            let mut name = None;
            if word(next).as_deref() == Some("AS") {
                match tokens.get(next + 1).map(|t| &t.token) {
                    Some(Token::Word(w)) => {
                        name = Some(if w.quote_style.is_some() {
                            w.value.clone()
                        } else {
                            w.value.to_lowercase()
                        })
                    }
                    _ => {
                        return Err(err(
                            "expected a column name after AS",
                            tokens.get(next + 1).and_then(position),
                        ))
                    }
                }
                next += 2;
            }
            if next < head_limit && word(next).as_deref() != Some("INCLUDE") {
                return Err(err(
                    format!("unexpected {} after INCLUDE {kind}", tokens[next].token),
                    position(&tokens[next]),
                ));
            }
            include.push((kind.to_lowercase(), name));
            i = next;
            continue;
        }
        i += 1;
    }
    let (options, after) = if plain_table {
        (Vec::new(), tokens.len())
    } else {
        parse_options(&tokens, with_at + 1, &position)?
    };
    if is_table && !plain_table && !options.iter().any(|(k, _)| k == "connector") {
        // A table WITH other options: left to the normal CREATE TABLE path.
        return Ok(None);
    }
    let (format, k) = parse_format(&tokens, after, &position)?;
    if let Some(t) = tokens.get(k) {
        return Err(err(
            format!("unexpected {} after the source's options", t.token),
            position(t),
        ));
    }
    // What sqlparser parses: CREATE TABLE name (columns), watermark cut out.
    let head_end = [include_at, append_at, Some(with_at)]
        .into_iter()
        .flatten()
        .min()
        .and_then(|i| tokens.get(i))
        .map_or(text.trim_end().trim_end_matches(';').len(), at);
    let head_start = end_of(&tokens[1]);
    let mut columns_text = String::new();
    match watermark {
        Some((ws, we)) => {
            let cut_start = at(&tokens[ws]);
            // Drop the comma before the clause, or after it when it comes first.
            let mut before = text[head_start..cut_start].trim_end().to_string();
            let after_text = if we < tokens.len() {
                &text[at(&tokens[we])..head_end]
            } else {
                ""
            };
            let mut after_text = after_text.to_string();
            if before.ends_with(',') {
                before.pop();
            } else if after_text.trim_start().starts_with(',') {
                after_text = after_text.trim_start()[1..].to_string();
            }
            columns_text.push_str(&before);
            columns_text.push(' ');
            columns_text.push_str(&after_text);
        }
        None => columns_text.push_str(&text[head_start..head_end]),
    }
    let mut sql = format!("CREATE TABLE {}", columns_text.trim());
    if !columns_text.contains('(') {
        sql.push_str(" ()");
    }
    let table = match Parser::parse_sql(&dialect, &sql) {
        Ok(mut s) if s.len() == 1 => match s.remove(0) {
            ast::Statement::CreateTable(ct) => ct,
            _ => return Err(err("expected a name and columns", None)),
        },
        Ok(_) => return Err(err("expected a name and columns", None)),
        Err(e) => {
            let mut e = syntax_error(&e, &sql);
            if let SqlError::Syntax { position, .. } = &mut e {
                *position = None;
            }
            return Err(e);
        }
    };
    let watermark = match watermark {
        Some((ws, we)) => {
            let col = match tokens.get(ws + 2).map(|t| &t.token) {
                Some(Token::Word(w)) => w.value.to_lowercase(),
                _ => {
                    return Err(err(
                        "expected a column after WATERMARK FOR",
                        tokens.get(ws + 2).and_then(position),
                    ))
                }
            };
            if word(ws + 3).as_deref() != Some("AS") || ws + 4 >= we {
                return Err(err(
                    "expected WATERMARK FOR column AS expression",
                    tokens.get(ws + 3).and_then(position),
                ));
            }
            let expr = text[at(&tokens[ws + 4])..end_of(&tokens[we - 1])]
                .trim()
                .to_string();
            Some((col, expr))
        }
        None => None,
    };
    Ok(Some(CreateSource {
        table: Box::new(table),
        is_table,
        options,
        format,
        watermark,
        include,
        append_only: append_at.is_some(),
    }))
}

/// The upper-cased text of an unquoted word token.
pub(crate) fn word_at(tokens: &[TokenWithSpan], i: usize) -> Option<String> {
    match tokens.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
        _ => None,
    }
}

/// Parses `FORMAT f ENCODE e [(key = value, ...)]` at token `k` when it is there. Returns
/// the clause and the index of the token after it.
pub(crate) fn parse_format(
    tokens: &[TokenWithSpan],
    k: usize,
    position: &dyn Fn(&TokenWithSpan) -> Option<usize>,
) -> Result<(Option<Format>, usize), SqlError> {
    let word = |i: usize| word_at(tokens, i);
    if word(k).as_deref() != Some("FORMAT") {
        return Ok((None, k));
    }
    let f = word(k + 1).ok_or_else(|| {
        err(
            "expected a format after FORMAT",
            tokens.get(k + 1).and_then(position),
        )
    })?;
    if word(k + 2).as_deref() != Some("ENCODE") {
        return Err(err(
            "expected ENCODE after FORMAT ...",
            tokens.get(k + 2).and_then(position),
        ));
    }
    let e = word(k + 3).ok_or_else(|| {
        err(
            "expected an encoding after ENCODE",
            tokens.get(k + 3).and_then(position),
        )
    })?;
    let mut k = k + 4;
    let mut options = Vec::new();
    if tokens.get(k).map(|t| &t.token) == Some(&Token::LParen) {
        let (o, next) = parse_options(tokens, k, position)?;
        options = o;
        k = next;
    }
    Ok((
        Some(Format {
            format: f,
            encode: e,
            options,
        }),
        k,
    ))
}

/// Parses `( key = value, ... )` starting at the `(` token `open`. Keys are dotted words
/// or quoted strings; values are strings, numbers or words. Returns the options and the
/// index of the token after `)`.
pub(crate) fn parse_options(
    tokens: &[TokenWithSpan],
    open: usize,
    position: &dyn Fn(&TokenWithSpan) -> Option<usize>,
) -> Result<(Vec<(String, String)>, usize), SqlError> {
    let mut out = Vec::new();
    let mut i = open + 1;
    let at = |i: usize| tokens.get(i);
    if at(i).map(|t| &t.token) == Some(&Token::RParen) {
        return Ok((out, i + 1));
    }
    loop {
        // key
        let mut key = String::new();
        loop {
            match at(i).map(|t| &t.token) {
                Some(Token::Word(w)) => key.push_str(&w.value),
                Some(Token::SingleQuotedString(s)) if key.is_empty() => key.push_str(s),
                other => {
                    return Err(err(
                        format!(
                            "expected an option name, found {}",
                            other
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| "end of input".into())
                        ),
                        at(i).and_then(position),
                    ))
                }
            }
            i += 1;
            if at(i).map(|t| &t.token) == Some(&Token::Period) {
                key.push('.');
                i += 1;
            } else {
                break;
            }
        }
        if at(i).map(|t| &t.token) != Some(&Token::Eq) {
            return Err(err(
                format!("expected = after option {key}"),
                at(i).and_then(position),
            ));
        }
        i += 1;
        let value = match at(i).map(|t| &t.token) {
            Some(Token::SingleQuotedString(s)) => s.clone(),
            Some(Token::Number(n, _)) => n.clone(),
            Some(Token::Word(w)) => w.value.clone(),
            Some(Token::Minus) => match at(i + 1).map(|t| &t.token) {
                Some(Token::Number(n, _)) => {
                    i += 1;
                    format!("-{n}")
                }
                _ => {
                    return Err(err(
                        format!("expected a value for option {key}"),
                        at(i).and_then(position),
                    ))
                }
            },
            _ => {
                return Err(err(
                    format!("expected a value for option {key}"),
                    at(i).and_then(position),
                ))
            }
        };
        i += 1;
        if out
            .iter()
            .any(|(k, _): &(String, String)| k.eq_ignore_ascii_case(&key))
        {
            return Err(err(format!("option {key} is given twice"), None));
        }
        out.push((key.to_lowercase(), value));
        match at(i).map(|t| &t.token) {
            Some(Token::Comma) => i += 1,
            Some(Token::RParen) => return Ok((out, i + 1)),
            other => {
                return Err(err(
                    format!(
                        "expected , or ) in options, found {}",
                        other
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "end of input".into())
                    ),
                    at(i).and_then(position),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexmark_source_with_watermark_and_format() {
        let s = parse_create_source(
            "CREATE SOURCE bid (auction BIGINT, date_time TIMESTAMP, \
             WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
             WITH (connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = 1000) \
             FORMAT PLAIN ENCODE JSON",
        )
        .unwrap()
        .unwrap();
        assert!(!s.is_table);
        assert_eq!(s.table.name.to_string(), "bid");
        assert_eq!(s.table.columns.len(), 2);
        assert_eq!(
            s.options,
            vec![
                ("connector".to_string(), "nexmark".to_string()),
                ("nexmark.table.type".to_string(), "Bid".to_string()),
                ("nexmark.event.num".to_string(), "1000".to_string()),
            ]
        );
        assert_eq!(
            s.watermark,
            Some(("date_time".into(), "date_time - INTERVAL '4' SECOND".into()))
        );
        assert_eq!(s.format.unwrap().encode, "JSON");
    }

    #[test]
    fn watermark_first_and_no_columns() {
        let s = parse_create_source(
            "create source s (WATERMARK FOR ts AS ts, ts timestamp) with (connector='datagen')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.table.columns.len(), 1);
        let s = parse_create_source("CREATE SOURCE IF NOT EXISTS s WITH (connector = 'nexmark')")
            .unwrap()
            .unwrap();
        assert!(s.table.if_not_exists);
        assert!(s.table.columns.is_empty());
    }

    #[test]
    fn include_clauses() {
        let s = parse_create_source(
            "CREATE SOURCE s (a INT) INCLUDE key AS k INCLUDE partition INCLUDE timestamp AS \"At\" \
             WITH (connector = 'kafka')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.table.columns.len(), 1);
        assert_eq!(
            s.include,
            vec![
                ("key".to_string(), Some("k".to_string())),
                ("partition".to_string(), None),
                ("timestamp".to_string(), Some("At".to_string())),
            ]
        );
        assert!(parse_create_source(
            "CREATE SOURCE s (a INT) INCLUDE header WITH (connector = 'kafka')"
        )
        .is_err());
        assert!(parse_create_source(
            "CREATE SOURCE s (a INT) INCLUDE key k WITH (connector = 'kafka')"
        )
        .is_err());
    }

    #[test]
    fn tables_with_a_connector_only() {
        assert!(parse_create_source("CREATE TABLE t (a INT)")
            .unwrap()
            .is_none());
        let t =
            parse_create_source("CREATE TABLE t (a INT PRIMARY KEY) WITH (connector = 'datagen')")
                .unwrap()
                .unwrap();
        assert!(t.is_table);
        assert!(parse_create_source("SELECT 1").unwrap().is_none());
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse_create_source("CREATE SOURCE s (a INT) WITH (connector 'x')").unwrap_err();
        match e {
            SqlError::Syntax { message, position } => {
                assert!(
                    message.contains("expected = after option connector"),
                    "{message}"
                );
                assert_eq!(position, Some(41));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_create_source("CREATE SOURCE s (a INT)").is_err());
        assert!(parse_create_source("CREATE SOURCE s (a INT) WITH (a = 1, a = 2)").is_err());
        assert!(parse_create_source("CREATE SOURCE s (a INT) WITH (a = 1) FORMAT PLAIN").is_err());
    }
}
