//! `CREATE SINK`, with RisingWave's syntax:
//!
//! ```sql
//! CREATE SINK [IF NOT EXISTS] name { FROM view | AS query }
//!   WITH (connector = 'filesystem', path = '/data/out', ...)
//!   [FORMAT PLAIN | DEBEZIUM | UPSERT ENCODE JSON [(key = 'value', ...)]];
//! ```
//!
//! With `AS query` the query runs as a dataflow of its own whose changes only go to the
//! sink (nothing is kept for reading). Its `WITH (` is the first one outside
//! parentheses after the query starts (a query's own `WITH name AS (...)` has a name).

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
    /// What the sink writes the changes of.
    pub from: SinkFrom,
    /// `WITH (...)` options, keys lower-cased, in the order given.
    pub options: Vec<(String, String)>,
    /// `FORMAT x ENCODE y (...)`, upper-cased format and encode.
    pub format: Option<Format>,
}

/// What a sink writes the changes of.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkFrom {
    /// `FROM name`: a materialized view or table.
    Relation(ast::ObjectName),
    /// `AS query`, with the query's text (kept to plan it again on recovery).
    Query {
        query: Box<ast::Query>,
        text: String,
    },
}

impl std::fmt::Display for SinkFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkFrom::Relation(name) => write!(f, "{name}"),
            SinkFrom::Query { .. } => f.write_str("the sink's query"),
        }
    }
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
    let from = match word(i).as_deref() {
        Some("FROM") => {
            let (from, next) = object_name(text, &tokens, i + 1, &at, &position)?;
            i = next;
            SinkFrom::Relation(from)
        }
        Some("AS") => {
            let start = i + 1;
            let mut depth = 0i32;
            let mut end = start;
            while end < tokens.len() {
                match &tokens[end].token {
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    _ => {}
                }
                if depth == 0
                    && end > start
                    && word(end).as_deref() == Some("WITH")
                    && tokens.get(end + 1).map(|t| &t.token) == Some(&Token::LParen)
                {
                    break;
                }
                end += 1;
            }
            let options_first = word(start).as_deref() == Some("WITH")
                && tokens.get(start + 1).map(|t| &t.token) == Some(&Token::LParen);
            if end == start || options_first {
                return Err(err(
                    "expected a query after AS",
                    tokens.get(start).and_then(position).or(end_position),
                ));
            }
            let from = at(&tokens[start]);
            let to = tokens.get(end).map(&at).unwrap_or(text.len());
            let query = parse_query(text, from, to)?;
            i = end;
            SinkFrom::Query {
                query: Box::new(query),
                text: text[from..to].trim_end().to_string(),
            }
        }
        _ => {
            return Err(err(
                "expected FROM or AS after the sink's name",
                tokens.get(i).and_then(position).or(end_position),
            ))
        }
    };
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

/// The query in `text[from..to]`, with error positions in `text`'s terms.
fn parse_query(text: &str, from: usize, to: usize) -> Result<ast::Query, SqlError> {
    // Blank out what comes before the query (keeping line breaks) so that the
    // parser's line and column are those of the whole statement.
    let mut padded: String = text[..from]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    padded.push_str(&text[from..to]);
    // The same dialect extensions as a view's query (FOR SYSTEM_TIME AS OF PROCTIME(),
    // ASOF JOIN); they keep positions.
    let (plain, temporal) = crate::strip_system_time(&padded);
    let (plain, asof) = crate::strip_asof(&plain);
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(&plain)
        .map_err(|e| syntax_error(&e, text))?;
    let query = parser.parse_query().map_err(|e| syntax_error(&e, text))?;
    if parser.peek_token().token != Token::EOF {
        return Err(syntax_error(
            &sqlparser::parser::ParserError::ParserError(format!(
                "unexpected {} after the sink's query{}",
                parser.peek_token().token,
                parser.peek_token().span.start
            )),
            text,
        ));
    }
    let mut stmt = ast::Statement::Query(query);
    if !temporal.is_empty() {
        crate::mark_system_time(&mut stmt, &temporal);
    }
    if !asof.is_empty() {
        crate::mark_asof(&mut stmt, &asof)?;
    }
    match stmt {
        ast::Statement::Query(q) => Ok(*q),
        _ => Err(err("expected a query after AS", None)),
    }
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
    fn as_a_query() {
        let s = parse_create_sink(
            "CREATE SINK out AS WITH w AS (SELECT a FROM t WHERE b IN (1, 2)) \
             SELECT a, count(*) FROM w GROUP BY a \
             WITH (connector = 'blackhole')",
        )
        .unwrap();
        let SinkFrom::Query { query, text } = &s.from else {
            panic!("{:?}", s.from)
        };
        assert!(text.starts_with("WITH w AS (SELECT a"), "{text}");
        assert!(text.ends_with("GROUP BY a"), "{text}");
        assert!(query.to_string().contains("count(*)"));
        assert_eq!(s.options, vec![("connector".into(), "blackhole".into())]);
        assert!(s.format.is_none());
        // A view's dialect extensions work in a sink's query too.
        let s = parse_create_sink(
            "CREATE SINK out AS SELECT b.x, s.v FROM b JOIN side FOR SYSTEM_TIME AS OF PROCTIME() s \
             ON b.k = s.k WITH (connector = 'blackhole')",
        )
        .unwrap();
        let SinkFrom::Query { query, .. } = &s.from else {
            panic!("{:?}", s.from)
        };
        assert!(
            query
                .to_string()
                .contains("FOR SYSTEM_TIME AS OF PROCTIME()"),
            "{query}"
        );
    }

    #[test]
    fn errors() {
        match parse_create_sink("CREATE SINK s AS SELECT 1") {
            Err(SqlError::Syntax { message, position }) => {
                assert!(message.contains("expected WITH"), "{message}");
                assert_eq!(position, Some(26));
            }
            other => panic!("{other:?}"),
        }
        match parse_create_sink("CREATE SINK s AS WITH (connector = 'x')") {
            Err(SqlError::Syntax { message, .. }) => {
                assert!(message.contains("expected a query"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A mistake inside the query points into the whole statement.
        match parse_create_sink("CREATE SINK s AS SELECT a FRM t WITH (connector = 'x')") {
            Err(SqlError::Syntax { position, .. }) => assert_eq!(position, Some(31)),
            other => panic!("{other:?}"),
        }
        match parse_create_sink("CREATE SINK s mv WITH (connector = 'x')") {
            Err(SqlError::Syntax { message, position }) => {
                assert!(message.contains("expected FROM or AS"), "{message}");
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
