//! `CREATE SINK`, with RisingWave's syntax:
//!
//! ```sql
//! CREATE SINK [IF NOT EXISTS] name FROM view
//!   WITH (connector = 'filesystem', path = '/data/out', ...)
//!   [FORMAT PLAIN | DEBEZIUM | UPSERT ENCODE JSON [(key = 'value', ...)]];
//! ```
//!
//! `CREATE SINK name AS SELECT ...` is recognised and refused with a pointer to the
//! `FROM view` form.

use sqlparser::ast;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::source::{err, parse_format, parse_options, word_at};
use crate::{byte_offset, line_starts, syntax_error, Format, SqlError};

/// A parsed `CREATE SINK`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSink {
    pub name: ast::ObjectName,
    pub if_not_exists: bool,
    /// The materialized view (or table) whose changes the sink writes.
    pub from: ast::ObjectName,
    /// `WITH (...)` options, keys lower-cased, in the order given.
    pub options: Vec<(String, String)>,
    /// `FORMAT x ENCODE y (...)`, upper-cased format and encode.
    pub format: Option<Format>,
}

/// Parses a statement that starts with `CREATE SINK`.
pub fn parse_create_sink(text: &str) -> Result<CreateSink, SqlError> {
    let dialect = PostgreSqlDialect {};
    let tokens: Vec<TokenWithSpan> = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| err(e.to_string(), None))?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect();
    let starts = line_starts(text);
    let at = |t: &TokenWithSpan| byte_offset(text, &starts, t.span.start.line, t.span.start.column);
    let position = |t: &TokenWithSpan| Some(text[..at(t)].chars().count() + 1);
    let end_position = Some(text.chars().count() + 1);
    let word = |i: usize| word_at(&tokens, i);

    let mut i = 2; // after CREATE SINK
    let mut if_not_exists = false;
    if word(i).as_deref() == Some("IF") {
        if word(i + 1).as_deref() != Some("NOT") || word(i + 2).as_deref() != Some("EXISTS") {
            return Err(err(
                "expected IF NOT EXISTS",
                tokens.get(i + 1).and_then(position),
            ));
        }
        if_not_exists = true;
        i += 3;
    }
    let (name, next) = object_name(text, &tokens, i, &at, &position)?;
    i = next;
    match word(i).as_deref() {
        Some("FROM") => {}
        Some("AS") => {
            return Err(SqlError::Unsupported(
                "CREATE SINK ... AS SELECT (create a materialized view and use CREATE SINK ... FROM it)"
                    .into(),
            ))
        }
        _ => {
            return Err(err(
                "expected FROM after the sink's name",
                tokens.get(i).and_then(position).or(end_position),
            ))
        }
    }
    let (from, next) = object_name(text, &tokens, i + 1, &at, &position)?;
    i = next;
    if word(i).as_deref() != Some("WITH")
        || tokens.get(i + 1).map(|t| &t.token) != Some(&Token::LParen)
    {
        return Err(err(
            "expected WITH (connector = '...', ...)",
            tokens.get(i).and_then(position).or(end_position),
        ));
    }
    let (options, next) = parse_options(&tokens, i + 1, &position)?;
    let (format, next) = parse_format(&tokens, next, &position)?;
    if let Some(t) = tokens.get(next) {
        return Err(err(
            format!("unexpected {} after the sink's options", t.token),
            position(t),
        ));
    }
    Ok(CreateSink {
        name,
        if_not_exists,
        from,
        options,
        format,
    })
}

/// A possibly qualified, possibly quoted name starting at token `i`.
fn object_name(
    text: &str,
    tokens: &[TokenWithSpan],
    mut i: usize,
    at: &dyn Fn(&TokenWithSpan) -> usize,
    position: &dyn Fn(&TokenWithSpan) -> Option<usize>,
) -> Result<(ast::ObjectName, usize), SqlError> {
    let first = i;
    loop {
        match tokens.get(i).map(|t| &t.token) {
            Some(Token::Word(_)) => i += 1,
            _ => {
                return Err(err(
                    "expected a name",
                    tokens
                        .get(i)
                        .and_then(position)
                        .or(Some(text.chars().count() + 1)),
                ))
            }
        }
        if tokens.get(i).map(|t| &t.token) == Some(&Token::Period) {
            i += 1;
        } else {
            break;
        }
    }
    let start = at(&tokens[first]);
    let end = tokens.get(i).map(at).unwrap_or(text.len());
    let dialect = PostgreSqlDialect {};
    let name = Parser::new(&dialect)
        .try_with_sql(&text[start..end])
        .and_then(|mut p| p.parse_object_name(false))
        .map_err(|e| syntax_error(&e, text))?;
    Ok((name, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_a_view_with_options_and_format() {
        let s = parse_create_sink(
            "CREATE SINK IF NOT EXISTS out FROM public.mv \
             WITH (connector = 'filesystem', path = '/tmp/x') \
             FORMAT DEBEZIUM ENCODE JSON (timestamp.handling = 'iso')",
        )
        .unwrap();
        assert!(s.if_not_exists);
        assert_eq!(s.name.to_string(), "out");
        assert_eq!(s.from.to_string(), "public.mv");
        assert_eq!(s.options[1], ("path".to_string(), "/tmp/x".to_string()));
        let f = s.format.unwrap();
        assert_eq!((f.format.as_str(), f.encode.as_str()), ("DEBEZIUM", "JSON"));
        assert_eq!(f.options.len(), 1);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_create_sink("CREATE SINK s AS SELECT 1"),
            Err(SqlError::Unsupported(_))
        ));
        match parse_create_sink("CREATE SINK s mv WITH (connector = 'x')") {
            Err(SqlError::Syntax { message, position }) => {
                assert!(message.contains("expected FROM"), "{message}");
                assert_eq!(position, Some(15));
            }
            other => panic!("{other:?}"),
        }
        match parse_create_sink("CREATE SINK s FROM mv") {
            Err(SqlError::Syntax { message, position }) => {
                assert!(message.contains("expected WITH"), "{message}");
                assert_eq!(position, Some(22));
            }
            other => panic!("{other:?}"),
        }
        match parse_create_sink("CREATE SINK s FROM mv WITH (connector = 'x') junk") {
            Err(SqlError::Syntax { message, .. }) => assert!(message.contains("junk"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
