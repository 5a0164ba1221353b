//! # sabot-sql: from text to typed statements
//!
//! Sabot speaks the PostgreSQL dialect (through `sqlparser`) plus a few statements of its
//! own that PostgreSQL does not have (`FLUSH`, `SHOW MATERIALIZED VIEWS`, ...). [`parse`]
//! splits a query string into statements and returns one [`Statement`] per statement,
//! each with the text it came from, so that later phases can report positions and store
//! the original SQL of a view in the catalog.
//!
//! Nothing here looks at the catalog: binding names and types is the planner's job.

use sqlparser::ast;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

pub use sqlparser;

mod sink;
mod source;
mod user;
pub use sink::{CreateSink, SinkFrom};
pub use source::{CreateSource, Format};
pub use user::{UserOptions, UserStatement};

/// A statement Sabot knows how to run, in the shape the planner wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE TABLE name (...)`: a table that accepts DML.
    CreateTable(Box<ast::CreateTable>),
    /// `CREATE SOURCE ... WITH (connector = ...)` or `CREATE TABLE ... WITH (connector = ...)`.
    CreateSource(Box<CreateSource>),
    /// `CREATE SINK name FROM view WITH (connector = ...) [FORMAT ... ENCODE ...]`.
    CreateSink(Box<CreateSink>),
    /// `CREATE MATERIALIZED VIEW name AS query`.
    CreateMaterializedView {
        name: ast::ObjectName,
        if_not_exists: bool,
        query: Box<ast::Query>,
        /// The text of the query, as the user wrote it (kept in the catalog).
        query_text: String,
        /// `EMIT ON WINDOW CLOSE`: windowed aggregates emit each window once, final,
        /// when the watermark passes its end.
        emit_on_window_close: bool,
    },
    /// `INSERT`, `UPDATE`, `DELETE`.
    Insert(Box<ast::Insert>),
    Update(Box<ast::Update>),
    Delete(Box<ast::Delete>),
    /// A read-only query (`SELECT`, `VALUES`, `WITH ...`).
    Query(Box<ast::Query>),
    /// `DROP TABLE | MATERIALIZED VIEW ... [CASCADE]`.
    Drop {
        kind: ObjectKind,
        names: Vec<ast::ObjectName>,
        if_exists: bool,
        cascade: bool,
    },
    /// `COPY table | (query) TO STDOUT [WITH (...)]`: the rows streamed to the client.
    CopyTo {
        query: Box<ast::Query>,
        options: CopyOptions,
    },
    /// `CREATE | ALTER | DROP USER | ROLE`.
    User(UserStatement),
    /// `FLUSH`: wait until everything written before it is visible in every view.
    Flush,
    /// `SHOW TABLES`.
    ShowTables,
    /// `SHOW SOURCES`.
    ShowSources,
    /// `SHOW MATERIALIZED VIEWS`.
    ShowMaterializedViews,
    /// `SHOW SINKS`.
    ShowSinks,
    /// `SHOW JOBS`: the views reading sources, and how far they have got.
    ShowJobs,
    /// `CANCEL JOBS a, b`: stop and drop views that read sources.
    CancelJobs {
        names: Vec<ast::ObjectName>,
    },
    /// `SHOW name` / `SHOW ALL` for session settings.
    ShowVariable(String),
    /// `SET name = value` / `SET name TO value`.
    SetVariable {
        name: String,
        value: String,
    },
    /// `RESET name` / `RESET ALL` (`name` None) / `DISCARD ALL` (`discard`): back to the
    /// server's defaults.
    ResetVariable {
        name: Option<String>,
        discard: bool,
    },
    /// `SET [SESSION CHARACTERISTICS AS] TRANSACTION ...`: accepted; every read sees one
    /// committed epoch whatever level is asked for (pgJDBC sends it on
    /// `setTransactionIsolation`).
    SetTransaction,
    /// `DESCRIBE name`: the columns of a table or view.
    Describe(ast::ObjectName),
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`: accepted; every statement is
    /// its own transaction in Sabot.
    Transaction(TransactionKind),
    /// `EXPLAIN [CREATE MATERIALIZED VIEW] ...`.
    Explain(Box<Statement>),
    /// `EXPLAIN (FORMAT DOT) statement`: the dataflow as a Graphviz digraph.
    ExplainDot(Box<Statement>),
}

/// What `DROP` drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Table,
    MaterializedView,
    Source,
    Sink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionKind {
    Begin,
    Commit,
    Rollback,
}

/// One parsed statement and the text it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub statement: Statement,
    /// The statement's own text, without the trailing semicolon.
    pub text: String,
    /// Byte offset of `text` in the query string given to [`parse`].
    pub offset: usize,
}

/// A statement that could not be parsed or is not supported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// The text is not valid SQL. `position` is the 1-based character position in the
    /// query string, as PostgreSQL reports it, when known.
    #[error("syntax error: {message}")]
    Syntax {
        message: String,
        position: Option<usize>,
    },
    /// Valid SQL, but a statement Sabot does not run.
    #[error("{0} is not supported")]
    Unsupported(String),
}

/// Parses a query string that may hold several statements separated by `;`.
pub fn parse(sql: &str) -> Result<Vec<Parsed>, SqlError> {
    let mut out = Vec::new();
    for (offset, text) in split_statements(sql)? {
        let statement = parse_one(text).map_err(|e| match e {
            SqlError::Syntax { message, position } => SqlError::Syntax {
                message,
                position: position.map(|p| p + sql[..offset].chars().count()),
            },
            other => other,
        })?;
        out.push(Parsed {
            statement,
            text: text.to_string(),
            offset,
        });
    }
    Ok(out)
}

/// Splits at top-level semicolons (not inside strings, quoted names or comments), dropping
/// empty statements. Returns byte offsets and trimmed texts.
fn split_statements(sql: &str) -> Result<Vec<(usize, &str)>, SqlError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| syntax_error(&ParserError::TokenizerError(e.to_string()), sql))?;
    let line_starts = line_starts(sql);
    let mut pieces = Vec::new();
    let mut start = 0usize;
    for tok in &tokens {
        if tok.token == Token::SemiColon {
            let end = byte_offset(
                sql,
                &line_starts,
                tok.span.start.line,
                tok.span.start.column,
            );
            pieces.push((start, end));
            start = end + 1;
        }
    }
    pieces.push((start, sql.len()));
    // Drop pieces that hold only whitespace or comments.
    let mut out = Vec::new();
    for (s, e) in pieces {
        let piece = &sql[s..e];
        let only_trivia = Tokenizer::new(&dialect, piece)
            .tokenize()
            .map(|toks| {
                toks.iter()
                    .all(|t| matches!(t, Token::Whitespace(_) | Token::EOF))
            })
            .unwrap_or(false);
        if only_trivia {
            continue;
        }
        let lead = piece.len() - piece.trim_start().len();
        out.push((s + lead, piece.trim()));
    }
    Ok(out)
}

fn line_starts(sql: &str) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, c) in sql.char_indices() {
        if c == '\n' {
            starts.push(i + 1);
        }
    }
    starts
}

/// Byte offset of a 1-based (line, column-in-characters) location.
fn byte_offset(sql: &str, line_starts: &[usize], line: u64, column: u64) -> usize {
    let line_idx = (line.max(1) - 1) as usize;
    let Some(&ls) = line_starts.get(line_idx) else {
        return sql.len();
    };
    let col = (column.max(1) - 1) as usize;
    sql[ls..]
        .char_indices()
        .nth(col)
        .map(|(i, _)| ls + i)
        .unwrap_or(sql.len())
}

/// Turns a sqlparser error into a syntax error with a 1-based character position taken
/// from its "Line: L, Column: C" suffix.
fn syntax_error(err: &ParserError, sql: &str) -> SqlError {
    let text = match err {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "statement is nested too deeply".to_string(),
    };
    let mut message = text.clone();
    let mut position = None;
    if let Some(idx) = text.rfind(" at Line: ") {
        let loc = &text[idx + " at Line: ".len()..];
        let mut parts = loc.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
        let col = parts.next().and_then(|c| c.trim().parse::<u64>().ok());
        if let (Some(line), Some(col)) = (line, col) {
            let starts = line_starts(sql);
            let b = byte_offset(sql, &starts, line, col);
            position = Some(sql[..b].chars().count() + 1);
            message = text[..idx].to_string();
        }
    }
    if position.is_none() && message.ends_with("found: EOF") {
        // PostgreSQL points just past the end for "syntax error at end of input".
        position = Some(sql.chars().count() + 1);
    }
    SqlError::Syntax { message, position }
}

/// Leading words of a statement, upper-cased, skipping whitespace and comments.
fn leading_words(text: &str, n: usize) -> Vec<String> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize() else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(n)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

/// Whether the statement's last words are `words` (upper-case, ignoring comments).
fn ends_with_words(text: &str, words: &[&str]) -> bool {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize() else {
        return false;
    };
    let tail: Vec<String> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_uppercase(),
            other => other.to_string(),
        })
        .collect();
    tail.len() >= words.len()
        && tail[tail.len() - words.len()..]
            .iter()
            .zip(words)
            .all(|(a, b)| a == b)
}

/// The tokens of `text` but whitespace; None when it does not tokenize.
fn solid_tokens(text: &str) -> Option<Vec<TokenWithSpan>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .ok()?;
    Some(
        tokens
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .collect(),
    )
}

/// Token `i` in upper case when it is an unquoted word, else empty.
fn upper_word(solid: &[TokenWithSpan], i: usize) -> String {
    match solid.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_uppercase(),
        _ => String::new(),
    }
}

/// `text` without its `FOR SYSTEM_TIME AS OF PROCTIME()` clauses (sqlparser reads them
/// in other dialects only), and where the names of the tables they followed start.
/// Removed clauses are replaced by spaces of the same length, so positions hold.
fn strip_system_time(text: &str) -> (String, Vec<sqlparser::tokenizer::Location>) {
    let Some(solid) = solid_tokens(text) else {
        return (text.to_string(), Vec::new());
    };
    let upper = |i: usize| upper_word(&solid, i);
    let starts = line_starts(text);
    let offset = |t: &TokenWithSpan, end: bool| {
        let loc = if end { t.span.end } else { t.span.start };
        byte_offset(text, &starts, loc.line, loc.column)
    };
    let mut out = text.to_string();
    let mut names = Vec::new();
    for i in 1..solid.len() {
        let clause = ["FOR", "SYSTEM_TIME", "AS", "OF", "PROCTIME"]
            .iter()
            .enumerate()
            .all(|(k, w)| upper(i + k) == *w)
            && matches!(solid.get(i + 5).map(|t| &t.token), Some(Token::LParen))
            && matches!(solid.get(i + 6).map(|t| &t.token), Some(Token::RParen));
        if !clause {
            continue;
        }
        if let Token::Word(_) = &solid[i - 1].token {
            names.push(solid[i - 1].span.start);
        }
        let (from, to) = (offset(&solid[i], false), offset(&solid[i + 6], true));
        out.replace_range(from..to, &" ".repeat(to - from));
    }
    (out, names)
}

/// The identifier [`mark_asof`] puts in `VERSION AS OF` of the right table of an ASOF
/// join (sqlparser reads only Snowflake's `ASOF JOIN .. MATCH_CONDITION`).
pub const ASOF_MARK: &str = "__sabot_asof__";

/// `text` with `ASOF` taken out of `ASOF [LEFT [OUTER]] JOIN`, and where the name of
/// each ASOF join's right table starts. The word is replaced by spaces, so positions
/// hold.
fn strip_asof(text: &str) -> (String, Vec<sqlparser::tokenizer::Location>) {
    let Some(solid) = solid_tokens(text) else {
        return (text.to_string(), Vec::new());
    };
    let upper = |i: usize| upper_word(&solid, i);
    let starts = line_starts(text);
    let mut out = text.to_string();
    let mut names = Vec::new();
    for i in 0..solid.len() {
        if upper(i) != "ASOF" {
            continue;
        }
        let join = match (upper(i + 1).as_str(), upper(i + 2).as_str()) {
            ("JOIN", _) => i + 1,
            ("LEFT", "JOIN") => i + 2,
            ("LEFT", "OUTER") if upper(i + 3) == "JOIN" => i + 3,
            _ => continue,
        };
        let Some(relation) = solid.get(join + 1) else {
            continue;
        };
        names.push(relation.span.start);
        let t = &solid[i];
        let from = byte_offset(text, &starts, t.span.start.line, t.span.start.column);
        let to = byte_offset(text, &starts, t.span.end.line, t.span.end.column);
        out.replace_range(from..to, &" ".repeat(to - from));
    }
    (out, names)
}

/// Marks the tables whose name starts at one of `names` as the right side of an ASOF
/// join; an error when one of them is not a plain table name.
fn mark_asof(
    stmt: &mut ast::Statement,
    names: &[sqlparser::tokenizer::Location],
) -> Result<(), SqlError> {
    use ast::{TableFactor, TableVersion, VisitMut, VisitorMut};
    struct Mark<'a>(&'a [sqlparser::tokenizer::Location], usize);
    impl VisitorMut for Mark<'_> {
        type Break = ();
        fn post_visit_table_factor(
            &mut self,
            factor: &mut TableFactor,
        ) -> std::ops::ControlFlow<()> {
            if let TableFactor::Table { name, version, .. } = factor {
                let first = name
                    .0
                    .first()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.span.start);
                if first.is_some_and(|l| self.0.contains(&l)) {
                    *version = Some(TableVersion::VersionAsOf(ast::Expr::Identifier(
                        ast::Ident::new(ASOF_MARK),
                    )));
                    self.1 += 1;
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut mark = Mark(names, 0);
    let _ = stmt.visit(&mut mark);
    if mark.1 != names.len() {
        return Err(SqlError::Unsupported(
            "ASOF JOIN with anything but a table or view name on its right".into(),
        ));
    }
    Ok(())
}

/// Puts `FOR SYSTEM_TIME AS OF PROCTIME()` back on the table references whose name ends
/// at one of `names` (where the name's last part starts).
fn mark_system_time(stmt: &mut ast::Statement, names: &[sqlparser::tokenizer::Location]) {
    use ast::{TableFactor, TableVersion, VisitMut, VisitorMut};
    struct Mark<'a>(&'a [sqlparser::tokenizer::Location]);
    impl VisitorMut for Mark<'_> {
        type Break = ();
        fn post_visit_table_factor(
            &mut self,
            factor: &mut TableFactor,
        ) -> std::ops::ControlFlow<()> {
            if let TableFactor::Table { name, version, .. } = factor {
                let last = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.span.start);
                if last.is_some_and(|l| self.0.contains(&l)) {
                    let proctime = ast::Expr::Function(ast::Function {
                        name: ast::ObjectName::from(vec![ast::Ident::new("PROCTIME")]),
                        uses_odbc_syntax: false,
                        parameters: ast::FunctionArguments::None,
                        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                            duplicate_treatment: None,
                            args: vec![],
                            clauses: vec![],
                        }),
                        filter: None,
                        null_treatment: None,
                        over: None,
                        within_group: vec![],
                    });
                    *version = Some(TableVersion::ForSystemTimeAsOf(proctime));
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Mark(names));
}

/// `text` without its last `n` tokens (and the whitespace and `;` before them).
fn text_before_trailing_words(text: &str, n: usize) -> &str {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize_with_location() else {
        return text;
    };
    let words: Vec<_> = tokens
        .iter()
        .filter(|t| {
            !matches!(
                t.token,
                Token::Whitespace(_) | Token::EOF | Token::SemiColon
            )
        })
        .collect();
    let Some(first) = words.len().checked_sub(n).and_then(|i| words.get(i)) else {
        return text;
    };
    let starts = line_starts(text);
    let b = byte_offset(
        text,
        &starts,
        first.span.start.line,
        first.span.start.column,
    );
    text[..b].trim_end()
}

fn parse_one(text: &str) -> Result<Statement, SqlError> {
    let words = leading_words(text, 4);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["FLUSH"] => return Ok(Statement::Flush),
        ["SHOW", "TABLES"] => return Ok(Statement::ShowTables),
        ["SHOW", "SOURCES"] => return Ok(Statement::ShowSources),
        ["SHOW", "SINKS"] => return Ok(Statement::ShowSinks),
        ["SHOW", "JOBS"] => return Ok(Statement::ShowJobs),
        ["CANCEL", "JOBS", ..] => {
            let rest = text.trim_start()["CANCEL".len()..].trim_start();
            let rest = &rest["JOBS".len()..];
            return match parse_one(&format!("DROP TABLE {rest}"))? {
                Statement::Drop {
                    names,
                    if_exists: false,
                    cascade: false,
                    ..
                } => Ok(Statement::CancelJobs { names }),
                _ => Err(SqlError::Unsupported(
                    "CANCEL JOBS with IF EXISTS or CASCADE".into(),
                )),
            };
        }
        ["DROP", kw @ ("SOURCE" | "SINK"), ..] => {
            // DROP SOURCE|SINK [IF EXISTS] a, b [CASCADE]: parsed as a DROP TABLE.
            let kind = if *kw == "SOURCE" {
                ObjectKind::Source
            } else {
                ObjectKind::Sink
            };
            let rest = text.trim_start()["DROP".len()..].trim_start();
            let rest = &rest[kw.len()..];
            return match parse_one(&format!("DROP TABLE {rest}"))? {
                Statement::Drop {
                    names,
                    if_exists,
                    cascade,
                    ..
                } => Ok(Statement::Drop {
                    kind,
                    names,
                    if_exists,
                    cascade,
                }),
                _ => Err(SqlError::Unsupported(format!("this DROP {kw}"))),
            };
        }
        ["CREATE", "SINK", ..] => {
            return Ok(Statement::CreateSink(Box::new(sink::parse_create_sink(
                text,
            )?)))
        }
        ["CREATE", "MATERIALIZED", "VIEW", ..]
            if ends_with_words(text, &["EMIT", "ON", "WINDOW", "CLOSE"]) =>
        {
            let head = text_before_trailing_words(text, 4);
            return match parse_one(head)? {
                Statement::CreateMaterializedView {
                    name,
                    if_not_exists,
                    query,
                    query_text,
                    ..
                } => Ok(Statement::CreateMaterializedView {
                    name,
                    if_not_exists,
                    query,
                    query_text,
                    emit_on_window_close: true,
                }),
                _ => Err(SqlError::Unsupported(
                    "EMIT ON WINDOW CLOSE outside CREATE MATERIALIZED VIEW".into(),
                )),
            };
        }
        ["CREATE", "SOURCE" | "TABLE", ..] => {
            if let Some(s) = source::parse_create_source(text)? {
                return Ok(Statement::CreateSource(Box::new(s)));
            }
        }
        ["SHOW", "MATERIALIZED", "VIEWS"] => return Ok(Statement::ShowMaterializedViews),
        ["CREATE" | "ALTER" | "DROP", "USER" | "ROLE", ..] => {
            return Ok(Statement::User(user::parse_user(text)?));
        }
        ["DESCRIBE" | "DESC", ..] => {
            let rest = text
                .trim_start()
                .split_once(char::is_whitespace)
                .map(|(_, r)| r)
                .unwrap_or("");
            let dialect = PostgreSqlDialect {};
            let mut parser = Parser::new(&dialect)
                .try_with_sql(rest)
                .map_err(|e| syntax_error(&e, text))?;
            let name = parser
                .parse_object_name(false)
                .map_err(|e| syntax_error(&e, text))?;
            return Ok(Statement::Describe(name));
        }
        ["EXPLAIN", ..] => {
            let rest = text.trim_start()["EXPLAIN".len()..].trim_start();
            // EXPLAIN (FORMAT TEXT | DOT) statement
            if let Some(options) = rest.strip_prefix('(') {
                let (inside, after) = options.split_once(')').ok_or_else(|| SqlError::Syntax {
                    message: "expected ) after EXPLAIN's options".into(),
                    position: None,
                })?;
                let words: Vec<String> = inside
                    .split_whitespace()
                    .map(str::to_ascii_uppercase)
                    .collect();
                let inner = Box::new(parse_one(after)?);
                return match words
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    ["FORMAT", "DOT"] => Ok(Statement::ExplainDot(inner)),
                    ["FORMAT", "TEXT"] => Ok(Statement::Explain(inner)),
                    // "EXPLAIN (FORMAT JSON) is not supported"
                    _ => Err(SqlError::Unsupported(format!(
                        "EXPLAIN ({})",
                        inside.trim()
                    ))),
                };
            }
            let inner = parse_one(rest)?;
            return Ok(Statement::Explain(Box::new(inner)));
        }
        _ => {}
    }
    let dialect = PostgreSqlDialect {};
    let (plain, temporal) = strip_system_time(text);
    let (plain, asof) = strip_asof(&plain);
    let mut stmts = Parser::parse_sql(&dialect, &plain).map_err(|e| syntax_error(&e, &plain))?;
    if stmts.len() != 1 {
        return Err(SqlError::Syntax {
            message: "expected exactly one statement".into(),
            position: None,
        });
    }
    let mut stmt = stmts.remove(0);
    if !temporal.is_empty() {
        mark_system_time(&mut stmt, &temporal);
    }
    if !asof.is_empty() {
        mark_asof(&mut stmt, &asof)?;
    }
    convert(stmt, text)
}

fn convert(stmt: ast::Statement, text: &str) -> Result<Statement, SqlError> {
    use ast::Statement as S;
    Ok(match stmt {
        S::Query(q) => Statement::Query(q),
        S::CreateTable(ct) => {
            if ct.query.is_some() {
                return Err(SqlError::Unsupported("CREATE TABLE AS".into()));
            }
            Statement::CreateTable(Box::new(ct))
        }
        S::CreateView(cv) if cv.materialized => {
            if !cv.columns.is_empty() {
                return Err(SqlError::Unsupported(
                    "a column list in CREATE MATERIALIZED VIEW".into(),
                ));
            }
            if cv.or_replace {
                return Err(SqlError::Unsupported(
                    "CREATE OR REPLACE MATERIALIZED VIEW".into(),
                ));
            }
            let query_text = query_text_after_as(text).unwrap_or_else(|| cv.query.to_string());
            Statement::CreateMaterializedView {
                name: cv.name,
                if_not_exists: cv.if_not_exists,
                query: cv.query,
                query_text,
                emit_on_window_close: false,
            }
        }
        S::CreateView(_) => {
            return Err(SqlError::Unsupported(
                "CREATE VIEW (non-materialized views)".into(),
            ))
        }
        S::Insert(i) => Statement::Insert(Box::new(i)),
        S::Update(u) => Statement::Update(Box::new(u)),
        S::Delete(d) => Statement::Delete(Box::new(d)),
        S::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => {
            let kind = match object_type {
                ast::ObjectType::Table => ObjectKind::Table,
                ast::ObjectType::MaterializedView => ObjectKind::MaterializedView,
                other => return Err(SqlError::Unsupported(format!("DROP {other}"))),
            };
            Statement::Drop {
                kind,
                names,
                if_exists,
                cascade,
            }
        }
        S::StartTransaction { .. } => Statement::Transaction(TransactionKind::Begin),
        S::Commit { .. } => Statement::Transaction(TransactionKind::Commit),
        S::Rollback { .. } => Statement::Transaction(TransactionKind::Rollback),
        S::ShowVariable { variable } => Statement::ShowVariable(
            variable
                .iter()
                .map(|i| i.value.to_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        S::Set(set) => convert_set(set)?,
        S::Reset(r) => Statement::ResetVariable {
            name: match r.reset {
                ast::Reset::ALL => None,
                ast::Reset::ConfigurationParameter(n) => Some(n.to_string().to_lowercase()),
            },
            discard: false,
        },
        S::Discard {
            object_type: ast::DiscardObject::ALL,
        } => Statement::ResetVariable {
            name: None,
            discard: true,
        },
        S::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        } => convert_copy(source, to, target, options, legacy_options)?,
        other => {
            let words = leading_words(&other.to_string(), 2).join(" ");
            return Err(SqlError::Unsupported(words));
        }
    })
}

/// How `COPY ... TO STDOUT` writes rows: PostgreSQL's text format (tab-separated, `\N`
/// for NULL, backslash escapes) or CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub csv: bool,
    pub header: bool,
    pub delimiter: char,
    pub null: String,
    pub quote: char,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".into(),
            quote: '"',
        }
    }
}

fn convert_copy(
    source: ast::CopySource,
    to: bool,
    target: ast::CopyTarget,
    options: Vec<ast::CopyOption>,
    legacy: Vec<ast::CopyLegacyOption>,
) -> Result<Statement, SqlError> {
    if !to {
        return Err(SqlError::Unsupported("COPY FROM (use INSERT)".into()));
    }
    if !matches!(target, ast::CopyTarget::Stdout) {
        return Err(SqlError::Unsupported(
            "COPY TO a file on the server (use COPY ... TO STDOUT, or psql's \\copy)".into(),
        ));
    }
    let query = match source {
        ast::CopySource::Query(q) => q,
        ast::CopySource::Table {
            table_name,
            columns,
        } => {
            let cols = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let sql = format!("SELECT {cols} FROM {table_name}");
            match Parser::parse_sql(&PostgreSqlDialect {}, &sql)
                .map_err(|e| SqlError::Syntax {
                    message: e.to_string(),
                    position: None,
                })?
                .pop()
            {
                Some(ast::Statement::Query(q)) => q,
                _ => {
                    return Err(SqlError::Syntax {
                        message: format!("cannot read {table_name}"),
                        position: None,
                    })
                }
            }
        }
    };
    let mut o = CopyOptions::default();
    let mut delimiter = None;
    let mut null = None;
    for opt in options {
        match opt {
            ast::CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => o.csv = true,
                "text" => o.csv = false,
                other => {
                    return Err(SqlError::Unsupported(format!("COPY format {other}")));
                }
            },
            ast::CopyOption::Header(h) => o.header = h,
            ast::CopyOption::Delimiter(d) => delimiter = Some(d),
            ast::CopyOption::Null(n) => null = Some(n),
            ast::CopyOption::Quote(q) => o.quote = q,
            other => return Err(SqlError::Unsupported(format!("COPY option {other}"))),
        }
    }
    for opt in legacy {
        match opt {
            ast::CopyLegacyOption::Csv(csv) => {
                o.csv = true;
                for c in csv {
                    match c {
                        ast::CopyLegacyCsvOption::Header => o.header = true,
                        ast::CopyLegacyCsvOption::Quote(q) => o.quote = q,
                        other => return Err(SqlError::Unsupported(format!("COPY option {other}"))),
                    }
                }
            }
            ast::CopyLegacyOption::Delimiter(d) => delimiter = Some(d),
            ast::CopyLegacyOption::Null(n) => null = Some(n),
            ast::CopyLegacyOption::Header => o.header = true,
            other => return Err(SqlError::Unsupported(format!("COPY option {other}"))),
        }
    }
    if o.header && !o.csv {
        return Err(SqlError::Unsupported(
            "HEADER in text format (PostgreSQL 15 allows it only with CSV)".into(),
        ));
    }
    o.delimiter = delimiter.unwrap_or(if o.csv { ',' } else { '\t' });
    o.null = null.unwrap_or_else(|| if o.csv { String::new() } else { "\\N".into() });
    Ok(Statement::CopyTo { query, options: o })
}

fn convert_set(set: ast::Set) -> Result<Statement, SqlError> {
    match set {
        ast::Set::SingleAssignment {
            variable, values, ..
        } => {
            let value = values
                .iter()
                .map(|v| match v {
                    ast::Expr::Value(v) => match &v.value {
                        ast::Value::SingleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    ast::Expr::Identifier(i) => i.value.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Statement::SetVariable {
                name: variable.to_string().to_lowercase(),
                value,
            })
        }
        ast::Set::SetTimeZone { value, .. } => Ok(Statement::SetVariable {
            name: "timezone".into(),
            value: value.to_string().trim_matches('\'').to_string(),
        }),
        ast::Set::SetTransaction { .. } => Ok(Statement::SetTransaction),
        ast::Set::SetNames { charset_name, .. } => Ok(Statement::SetVariable {
            name: "client_encoding".into(),
            value: charset_name.to_string(),
        }),
        other => Err(SqlError::Unsupported(format!("{other}"))),
    }
}

/// The text after the first top-level `AS` keyword of a `CREATE MATERIALIZED VIEW`.
fn query_text_after_as(text: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .ok()?;
    let starts = line_starts(text);
    for t in &tokens {
        if let Token::Word(w) = &t.token {
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("AS") {
                let b = byte_offset(text, &starts, t.span.end.line, t.span.end.column);
                return Some(text[b..].trim().to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_classifies() {
        let p = parse("CREATE TABLE t (id BIGINT PRIMARY KEY); flush; SELECT ';' ; ;").unwrap();
        assert_eq!(p.len(), 3);
        assert!(matches!(p[0].statement, Statement::CreateTable(_)));
        assert_eq!(p[1].statement, Statement::Flush);
        assert!(matches!(p[2].statement, Statement::Query(_)));
        assert_eq!(p[2].text, "SELECT ';'");
    }

    #[test]
    fn materialized_view_keeps_query_text() {
        let p =
            parse("CREATE MATERIALIZED VIEW mv AS SELECT k, count(*) FROM t GROUP BY k").unwrap();
        match &p[0].statement {
            Statement::CreateMaterializedView { query_text, .. } => {
                assert_eq!(query_text, "SELECT k, count(*) FROM t GROUP BY k")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("SELECT 1; SELEC 2").unwrap_err();
        match err {
            SqlError::Syntax { position, .. } => assert_eq!(position, Some(11)),
            other => panic!("unexpected {other:?}"),
        }
        let err = parse("SELECT * FROM t WHERE").unwrap_err();
        assert!(
            matches!(
                err,
                SqlError::Syntax {
                    position: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn sabot_statements() {
        assert_eq!(
            parse("SHOW MATERIALIZED VIEWS").unwrap()[0].statement,
            Statement::ShowMaterializedViews
        );
        assert_eq!(
            parse("show tables").unwrap()[0].statement,
            Statement::ShowTables
        );
        assert!(matches!(
            parse("DESCRIBE t").unwrap()[0].statement,
            Statement::Describe(_)
        ));
        assert!(matches!(
            parse("DROP MATERIALIZED VIEW IF EXISTS a, b CASCADE").unwrap()[0].statement,
            Statement::Drop {
                kind: ObjectKind::MaterializedView,
                if_exists: true,
                cascade: true,
                ..
            }
        ));
    }
}
