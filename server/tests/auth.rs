//! Logins and transport: `--auth password` with SCRAM-SHA-256 roles made by
//! `CREATE USER ... PASSWORD`, TLS from a certificate (`sslmode=require`), wrong and
//! unknown passwords refused, roles kept across a restart, and no unauthenticated
//! listening beyond loopback. The client is psycopg 3 (libpq), via `SABOT_PYTHON`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::Server;

/// A self-signed certificate and key for `localhost` (Debian's openssl CLI).
fn certificate(dir: &Path) -> (String, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl could not make a certificate");
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// Runs `script` (given the port) with psycopg; returns its stdout lines.
fn python(py: &str, port: u16, script: &str) -> Vec<String> {
    let mut child = Command::new(py)
        .args(["-", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the client script failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

const PRELUDE: &str = r#"
import sys
import psycopg
port = sys.argv[1]

def connect(user, password, sslmode="require"):
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                           dbname="sabot", sslmode=sslmode, autocommit=True)

def login(user, password, sslmode="require"):
    try:
        with connect(user, password, sslmode) as c:
            c.execute("SELECT 1").fetchone()
            return "ok tls" if c.pgconn.ssl_in_use else "ok plain"
    except psycopg.OperationalError as e:
        return "refused"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_roles_over_tls() {
    let Ok(py) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with psycopg)");
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(certs.path());
    let dir = tempfile::tempdir().unwrap();
    let args = ["--auth", "password", "--tls-cert", &cert, "--tls-key", &key];
    let env = [("SABOT_PASSWORD", "boot-pw")];
    let server = Server::start_with(dir.path(), &env, &args);

    let script = format!(
        "{PRELUDE}
print(login('sabot', 'boot-pw'))
print(login('sabot', 'wrong'))
print(login('nobody', 'boot-pw'))
with connect('sabot', 'boot-pw') as c:
    c.execute(\"CREATE USER alice WITH PASSWORD 'a-pw'\")
    c.execute(\"CREATE USER carol PASSWORD 'c-pw' SUPERUSER\")
    print(','.join(r[0] for r in c.execute('SELECT rolname FROM pg_roles ORDER BY 1')))
    try:
        c.execute(\"CREATE USER alice PASSWORD 'x'\")
    except psycopg.Error as e:
        print(e.sqlstate)
print(login('alice', 'a-pw'))
print(login('alice', 'a-pw', sslmode='disable'))
with connect('alice', 'a-pw') as c:
    try:
        c.execute(\"CREATE USER mallory PASSWORD 'm'\")
    except psycopg.Error as e:
        print(e.sqlstate)
    c.execute(\"ALTER USER alice PASSWORD 'a-pw-2'\")
print(login('alice', 'a-pw'))
print(login('alice', 'a-pw-2'))
with connect('carol', 'c-pw') as c:
    c.execute('DROP USER alice')
print(login('alice', 'a-pw-2'))
"
    );
    let got = python(&py, server.port(), &script);
    assert_eq!(
        got,
        vec![
            "ok tls",
            "refused",
            "refused",
            "alice,carol,sabot",
            "42710",
            "ok tls",
            "ok plain",
            "42501",
            "refused",
            "ok tls",
            "refused",
        ]
    );

    // Roles are in the catalog: they survive a SIGKILL and restart (no SABOT_PASSWORD
    // this time, so the bootstrap password is the stored one).
    server.kill();
    let server = Server::start_with(dir.path(), &[], &args);
    let got = python(
        &py,
        server.port(),
        &format!("{PRELUDE}\nprint(login('carol', 'c-pw'))\nprint(login('sabot', 'boot-pw'))\n"),
    );
    assert_eq!(got, vec!["ok tls", "ok tls"]);
}

#[test]
fn refuses_to_listen_beyond_loopback_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sabot"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--pg-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"])
        .env("SABOT_LOG", "error")
        .output()
        .expect("run sabot");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{stderr}"
    );
}
