//! Authentication and transport security: SCRAM-SHA-256 against the roles made with
//! `CREATE USER ... PASSWORD`, and TLS from a PEM certificate and key.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::{gen_salted_password, random_nonce, ScramSecret};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sabot_planner::{Database, ScramVerifier};

/// PostgreSQL's default iteration count for SCRAM-SHA-256 verifiers.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Anyone who can connect is let in as the user they name.
    Trust,
    /// SCRAM-SHA-256 with a role's password (`CREATE USER name PASSWORD '...'`).
    Password,
}

/// The verifier PostgreSQL would store for `password` (fresh random salt).
pub fn verifier(password: &str) -> ScramVerifier {
    let salt = random_nonce().into_bytes();
    let iterations = SCRAM_ITERATIONS as usize;
    let salted = gen_salted_password(password, &salt, iterations);
    match ScramSecret::verifier_from_salted_password(salt.clone(), salted, iterations) {
        ScramSecret::Verifier {
            salt,
            stored_key,
            server_key,
            ..
        } => ScramVerifier {
            salt,
            iterations: SCRAM_ITERATIONS,
            stored_key,
            server_key,
        },
        // verifier_from_salted_password always gives a verifier.
        ScramSecret::SaltedPassword { .. } => ScramVerifier {
            salt,
            iterations: SCRAM_ITERATIONS,
            stored_key: Vec::new(),
            server_key: Vec::new(),
        },
    }
}

/// Looks roles up in the database for SCRAM.
#[derive(Debug)]
pub struct Roles(pub Arc<Database>);

#[async_trait]
impl AuthSource for Roles {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only verifiers are kept: there is no password to give.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        // An unknown role and a role without a password fail alike, so the answer
        // does not tell which roles exist.
        let v = self
            .0
            .user(user)
            .and_then(|u| u.verifier)
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_owned()))?;
        Ok((
            ScramSecret::Verifier {
                salt: v.salt,
                iterations: v.iterations as usize,
                stored_key: v.stored_key,
                server_key: v.server_key,
            },
            None,
        ))
    }
}

/// A TLS acceptor for a PEM certificate chain and private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key do not make a TLS configuration: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
