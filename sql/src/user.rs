//! `CREATE USER | ROLE`, `ALTER USER | ROLE`, `DROP USER | ROLE`: login roles with
//! passwords, in PostgreSQL's syntax.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::SqlError;

/// What a `CREATE USER` or `ALTER USER` says about a role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserOptions {
    /// `PASSWORD 'secret'` (Some(None) for `PASSWORD NULL`).
    pub password: Option<Option<String>>,
    /// `SUPERUSER` / `NOSUPERUSER`.
    pub superuser: Option<bool>,
}

/// A parsed user statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserStatement {
    Create { name: String, options: UserOptions },
    Alter { name: String, options: UserOptions },
    Drop { names: Vec<String>, if_exists: bool },
}

fn tokens(text: &str) -> Result<Vec<Token>, SqlError> {
    let toks = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map_err(|e| SqlError::Syntax {
            message: e.to_string(),
            position: None,
        })?;
    Ok(toks
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect())
}

fn syntax(message: impl Into<String>) -> SqlError {
    SqlError::Syntax {
        message: message.into(),
        position: None,
    }
}

/// A role name: a plain word (folded to lower case) or a quoted identifier.
fn name(t: Option<&Token>) -> Result<String, SqlError> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_some() => Ok(w.value.clone()),
        Some(Token::Word(w)) => Ok(w.value.to_lowercase()),
        other => Err(syntax(format!(
            "expected a role name, found {}",
            other.map_or("end of input".to_string(), ToString::to_string)
        ))),
    }
}

fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
        _ => None,
    }
}

fn options(rest: &[Token]) -> Result<UserOptions, SqlError> {
    let mut o = UserOptions::default();
    let mut i = 0;
    while i < rest.len() {
        let w = word(&rest[i]).ok_or_else(|| syntax(format!("unexpected {}", rest[i])))?;
        match w.as_str() {
            "WITH" | "LOGIN" | "NOLOGIN" | "INHERIT" | "NOINHERIT" => {}
            "SUPERUSER" => o.superuser = Some(true),
            "NOSUPERUSER" => o.superuser = Some(false),
            "PASSWORD" => {
                i += 1;
                o.password = Some(match rest.get(i) {
                    Some(Token::SingleQuotedString(p)) => Some(p.clone()),
                    Some(t) if word(t).as_deref() == Some("NULL") => None,
                    other => {
                        return Err(syntax(format!(
                            "expected a password string after PASSWORD, found {}",
                            other.map_or("end of input".to_string(), ToString::to_string)
                        )))
                    }
                });
            }
            other => {
                return Err(SqlError::Unsupported(format!("role option {other}")));
            }
        }
        i += 1;
    }
    Ok(o)
}

/// Parses a user statement whose first two words were `CREATE|ALTER|DROP USER|ROLE`.
pub fn parse_user(text: &str) -> Result<UserStatement, SqlError> {
    let t = tokens(text)?;
    let verb = t.first().and_then(word).unwrap_or_default();
    let rest = &t[2.min(t.len())..];
    match verb.as_str() {
        "CREATE" => Ok(UserStatement::Create {
            name: name(rest.first())?,
            options: options(rest.get(1..).unwrap_or(&[]))?,
        }),
        "ALTER" => Ok(UserStatement::Alter {
            name: name(rest.first())?,
            options: options(rest.get(1..).unwrap_or(&[]))?,
        }),
        _ => {
            let (if_exists, rest) = match rest {
                [a, b, tail @ ..]
                    if word(a).as_deref() == Some("IF") && word(b).as_deref() == Some("EXISTS") =>
                {
                    (true, tail)
                }
                _ => (false, rest),
            };
            let mut names = Vec::new();
            for (i, tok) in rest.iter().enumerate() {
                if i % 2 == 1 {
                    if *tok != Token::Comma {
                        return Err(syntax(format!(
                            "expected , between role names, found {tok}"
                        )));
                    }
                } else {
                    names.push(name(Some(tok))?);
                }
            }
            if names.is_empty() {
                return Err(syntax("DROP USER needs a role name"));
            }
            Ok(UserStatement::Drop { names, if_exists })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_alter_drop() {
        assert_eq!(
            parse_user("CREATE USER Alice WITH PASSWORD 's3cret' SUPERUSER").unwrap(),
            UserStatement::Create {
                name: "alice".into(),
                options: UserOptions {
                    password: Some(Some("s3cret".into())),
                    superuser: Some(true),
                },
            }
        );
        assert_eq!(
            parse_user("ALTER ROLE \"Bob\" PASSWORD NULL").unwrap(),
            UserStatement::Alter {
                name: "Bob".into(),
                options: UserOptions {
                    password: Some(None),
                    superuser: None,
                },
            }
        );
        assert_eq!(
            parse_user("DROP USER IF EXISTS a, b").unwrap(),
            UserStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true,
            }
        );
        assert!(parse_user("CREATE USER x PASSWORD").is_err());
        assert!(parse_user("CREATE USER x CREATEDB").is_err());
    }
}
