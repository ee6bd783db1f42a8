//! rdlock over TLS (`--features tls`): a private `redis-server --tls-port` with a CA and
//! server certificate made by the `openssl` command line at test time, trusted through
//! redis-rs's `Client::build_with_tls` (the `ConnectionInfo` it returns carries the root
//! certificate and is accepted by `RdLockConnectionManager::new`). Every wrong set-up
//! must fail closed: a typed error within a bound, never a panic, a hang or a plain-text
//! fallback.
#![cfg(feature = "tls")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use redis::{ConnectionInfo, TlsCertificates};
use support::free_port;
use tempfile::TempDir;

/// Certificates made with the `openssl` command line in a temporary directory.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn make() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rdlock-tls-")
            .tempdir()
            .unwrap();
        let certs = Self { dir };
        certs.ca("ca", "rdlock test CA");
        certs.ca("other-ca", "some other CA");
        certs.server("server", "ca", "IP:127.0.0.1,DNS:localhost");
        certs.server("wrong-name", "ca", "DNS:elsewhere.invalid");
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("{name}.crt"))).unwrap()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl command line is needed for the TLS tests");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    fn server(&self, name: &str, ca: &str, san: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        let ext = format!(
            "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        );
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// A private redis-server that only speaks TLS, killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl TlsServer {
    fn start(certs: &Certs, cert: &str) -> Self {
        let version = Command::new("redis-server")
            .arg("--version")
            .output()
            .expect("redis-server on PATH");
        println!("{}", String::from_utf8_lossy(&version.stdout).trim());
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("rdlock-tls-server-")
                .tempdir()
                .unwrap();
            let port = free_port();
            let arg = |p: &Path| p.to_string_lossy().into_owned();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", "0"])
                .args(["--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &arg(&certs.path(&format!("{cert}.crt")))])
                .args(["--tls-key-file", &arg(&certs.path(&format!("{cert}.key")))])
                .args(["--tls-ca-cert-file", &arg(&certs.path("ca.crt"))])
                .args(["--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", &arg(dir.path()), "--logfile", "redis.log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let mut server = Self { child, port, dir };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // the port was taken: try another
                }
                if server.log().contains("Ready to accept connections") {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let log = server.log();
            assert!(
                !log.contains("not compiled") && !log.contains("TLS"),
                "this redis-server cannot serve TLS:\n{log}"
            );
        }
        panic!("redis-server with TLS did not start");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connection parameters for `url` that trust only the CA in `ca_pem`.
fn trusting(url: &str, ca_pem: Vec<u8>) -> ConnectionInfo {
    redis::Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem),
        },
    )
    .expect("a client with a custom root certificate")
    .get_connection_info()
    .clone()
}

/// Connecting must end, one way or the other, well within this.
const BOUND: Duration = Duration::from_secs(20);

async fn connect<T: redis::IntoConnectionInfo + Send + 'static>(
    params: T,
) -> Result<RdLockConnectionManager, RdLockError> {
    // In a task, so that a panic inside the TLS stack is reported as a failure of this
    // assertion instead of tearing the test down without a word.
    let task = tokio::spawn(RdLockConnectionManager::new(params));
    tokio::time::timeout(BOUND, task)
        .await
        .expect("connecting over TLS is bounded")
        .expect("connecting over TLS panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_release_and_wait_over_tls() {
    let certs = Certs::make();
    let server = TlsServer::start(&certs, "server");
    let info = trusting(&server.tls_url(), certs.pem("ca"));
    let holder = connect(info.clone()).await.expect("TLS with the right CA");
    let waiter = connect(info).await.expect("TLS with the right CA");
    // The watchdog renews over TLS: a 1 s lease held for 1.5 s.
    let lock = holder
        .new_lock("over-tls")
        .with_lease(Duration::from_secs(1));
    let guard = lock.lock().await.unwrap();
    assert!(guard.fencing_token() >= 1);
    assert_eq!(
        waiter.new_lock("over-tls").try_lock().await.unwrap_err(),
        RdLockError::LockUnavailable
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(guard.is_held(), "renewed over TLS");
    guard.release().await.unwrap();
    // A waiter is woken by the release (over the TLS subscriber connection). The holder's
    // lease is long: a waiter that missed the message would wait it out, 30 s.
    let guard = lock
        .clone()
        .with_lease(Duration::from_secs(30))
        .lock()
        .await
        .unwrap();
    let waiting = {
        let lock = waiter
            .new_lock("over-tls")
            .with_lease(Duration::from_secs(1));
        tokio::spawn(async move {
            let g = lock.lock_timeout(Duration::from_secs(15)).await;
            (Instant::now(), g)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished());
    let released = Instant::now();
    guard.release().await.unwrap();
    let (acquired, next) = waiting.await.unwrap();
    let next = next.expect("the waiter acquires after the release");
    let woke = acquired - released;
    println!("waiter acquired {woke:?} after the release, over TLS");
    // A few round trips (milliseconds), with room for a busy machine.
    assert!(
        woke < Duration::from_secs(2),
        "woken by the release, not the 30 s lease: {woke:?}"
    );
    assert!(next.fencing_token() > 1);
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_wrong_name_and_system_roots_fail_closed() {
    let certs = Certs::make();
    let server = TlsServer::start(&certs, "server");
    let wrong_name = TlsServer::start(&certs, "wrong-name");
    let cases = [
        (
            "a CA that did not sign the server",
            trusting(&server.tls_url(), certs.pem("other-ca")),
        ),
        (
            "a certificate for another name",
            trusting(&wrong_name.tls_url(), certs.pem("ca")),
        ),
        (
            "only the system roots",
            redis::IntoConnectionInfo::into_connection_info(server.tls_url()).unwrap(),
        ),
    ];
    for (what, info) in cases {
        let started = Instant::now();
        let outcome = connect(info).await;
        let err = outcome.err().unwrap_or_else(|| panic!("{what}: connected"));
        println!("{what}: {err:?} after {:?}", started.elapsed());
        assert!(
            matches!(
                err,
                RdLockError::Unreachable(_) | RdLockError::RedisError(_)
            ),
            "{what}: untyped failure {err:?}"
        );
    }
}

/// Mixing up schemes and ports fails with a typed error, within a bound: never a hang,
/// never a plain-text session with a TLS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_to_tls_port_and_tls_to_plain_port_fail_closed() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, "server");
    let plain = support::RedisServer::start();
    let cases = [
        (
            "redis:// to a TLS port",
            redis::IntoConnectionInfo::into_connection_info(format!(
                "redis://127.0.0.1:{}/",
                tls.port
            ))
            .unwrap(),
        ),
        (
            "rediss:// to a plain port",
            trusting(
                &format!("rediss://127.0.0.1:{}/", plain.port()),
                certs.pem("ca"),
            ),
        ),
    ];
    for (what, info) in cases {
        let started = Instant::now();
        let err = connect(info)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        println!("{what}: {err:?} after {:?}", started.elapsed());
        assert!(
            matches!(
                err,
                RdLockError::Unreachable(_) | RdLockError::RedisError(_)
            ),
            "{what}: untyped failure {err:?}"
        );
    }
}

/// The part of the plain-port case that does not involve a TLS handshake: a `redis://`
/// URL aimed at a TLS-only port gives a typed error in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_to_a_tls_port_is_a_typed_error() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, "server");
    let started = Instant::now();
    let err = connect(format!("redis://127.0.0.1:{}/", tls.port))
        .await
        .expect_err("no plain-text session with a TLS server");
    println!(
        "redis:// to a TLS port: {err:?} after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            RdLockError::Unreachable(_) | RdLockError::RedisError(_)
        ),
        "untyped failure {err:?}"
    );
}

/// With only `--features tls`, rustls must still have a crypto provider: a TLS
/// connection attempt connects, or returns an error, but never panics inside rustls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_attempt_does_not_panic() {
    let certs = Certs::make();
    let server = TlsServer::start(&certs, "server");
    let info = trusting(&server.tls_url(), certs.pem("ca"));
    let task = tokio::spawn(RdLockConnectionManager::new(info));
    let joined = tokio::time::timeout(BOUND, task).await.expect("bounded");
    match joined {
        Ok(outcome) => assert!(outcome.is_ok(), "{outcome:?}"),
        Err(e) => {
            let message = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_default();
            panic!("connecting over TLS panicked: {message}");
        }
    }
}
