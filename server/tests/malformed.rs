//! Garbage on the wire: random bytes, truncated messages, absurd lengths and unknown
//! message types, before and after a valid startup. The server must close those
//! connections (or answer with an error) and carry on: other sessions keep working and
//! new ones connect.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{scalar, Lcg, Server};

/// A valid startup message for user `fuzz`, database `sabot`.
fn startup() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes()); // protocol 3.0
    for s in ["user", "fuzz", "database", "sabot"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = (i32::try_from(body.len()).unwrap() + 4)
        .to_be_bytes()
        .to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// One connection's worth of bad input, chosen by `rng`.
fn garbage(rng: &mut Lcg) -> Vec<u8> {
    let random = |rng: &mut Lcg, n: u64| -> Vec<u8> {
        (0..rng.below(n))
            .map(|_| (rng.next() & 0xff) as u8)
            .collect()
    };
    match rng.below(7) {
        // Pure noise instead of a startup message.
        0 => random(rng, 2000),
        // A startup message whose length claims far more than is sent.
        1 => {
            let mut m = startup();
            m[..4].copy_from_slice(&0x7fff_fff0i32.to_be_bytes());
            m.truncate(rng.below(m.len() as u64) as usize);
            m
        }
        // A negative or tiny startup length.
        2 => {
            let mut m = vec![0u8; 8];
            let len = [-1i32, 0, 3, 7][rng.below(4) as usize];
            m[..4].copy_from_slice(&len.to_be_bytes());
            m
        }
        // A valid startup, then a message of a random type with a random length.
        3 => {
            let mut m = startup();
            m.push(b"QPBEDSXHCFpdfcz?\0\xff"[rng.below(18) as usize]);
            let len = [0i32, 3, 4, 5, -5, 0x7fff_ffff, 1 << 20][rng.below(7) as usize];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend(random(rng, 300));
            m
        }
        // A valid startup, then a Query whose text is not NUL-terminated / not UTF-8.
        4 => {
            let mut m = startup();
            let text = random(rng, 200);
            m.push(b'Q');
            m.extend_from_slice(&(i32::try_from(text.len()).unwrap() + 4).to_be_bytes());
            m.extend(text);
            m
        }
        // A valid startup, then a Bind/Execute for statements that were never parsed,
        // with junk parameter counts.
        5 => {
            let mut m = startup();
            let mut body = vec![0u8, b's', b'x', 0];
            body.extend_from_slice(&[0xff, 0xff, 0x7f, 0xff]);
            body.extend(random(rng, 50));
            m.push(b'B');
            m.extend_from_slice(&(i32::try_from(body.len()).unwrap() + 4).to_be_bytes());
            m.extend(body);
            m.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04");
            m
        }
        // An SSL request, then noise where the startup should be.
        _ => {
            let mut m = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
            m.extend(random(rng, 500));
            m
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let healthy = server.connect().await;
    healthy
        .batch_execute("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let port = server.port();

    let mut rng = Lcg(20261123);
    let attempts = 300;
    let mut answered = 0;
    for _ in 0..attempts {
        let bytes = garbage(&mut rng);
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the server accepts");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // The server may close the connection before all is written.
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Whatever it answers (an error, a close, or nothing before the timeout), it must
        // not take the process down.
        let mut buf = [0u8; 4096];
        if matches!(s.read(&mut buf), Ok(n) if n > 0) {
            answered += 1;
        }
        assert!(server.is_running(), "sabot exited after {bytes:?}");
    }
    assert!(
        answered > 0,
        "the server answered none of {attempts} bad connections"
    );

    // The session that was open all along still works, and so does a new one.
    assert_eq!(scalar(&healthy, "SELECT count(*) FROM t").await, "2");
    let fresh = server.connect().await;
    fresh
        .batch_execute("INSERT INTO t VALUES (3); FLUSH")
        .await
        .unwrap();
    assert_eq!(scalar(&healthy, "SELECT count(*) FROM t").await, "3");
}
