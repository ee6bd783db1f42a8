//! The `rdlock` binary on Redlock (`--redlock` with one `--url` per node, 3 private
//! redis-servers): `exec` with a fencing token, `--no-wait` against a holder,
//! `status --json`, `release --force --yes`, nodes in `REDIS_URL`, a node down, and bad
//! input (`--redlock` without a URL, with `--cluster`, a majority unreachable).
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::{
    code, output_within, rdlock_at, read, stderr, stdout, wait_child, wait_for_file, PROMPTLY,
    RDLOCK,
};
use rdlock::RdLockConnectionManager;
use support::RedisServer;

/// The holding rdlock, killed if the test fails before it exits.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn exec_status_and_release_on_redlock() {
    let mut nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let cli = |urls: &[String], args: &[&str]| {
        let mut command = rdlock_at(&urls[0], &["--redlock"]);
        for url in &urls[1..] {
            command.args(["--url", url]);
        }
        command.args(args);
        command
    };
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let script = format!(
        "echo \"$RDLOCK_FENCING_TOKEN\" > {}; sleep 60",
        env_file.display()
    );
    let mut holder = Holder(
        cli(
            &urls,
            &["exec", "job", "--lease", "3s", "--", "sh", "-c", &script],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_for_file(&env_file, "\n").await;
    let token: u64 = read(&env_file).trim().parse().expect("a fencing token");
    assert!(token >= 1);

    // The library, on the same nodes, sees the CLI's lock.
    let manager = RdLockConnectionManager::redlock(urls.clone())
        .await
        .unwrap();
    let info = manager
        .new_lock("job")
        .holder()
        .await
        .unwrap()
        .expect("held");
    assert_eq!(info.pid, holder.0.id());
    assert_eq!(info.fencing_token, token);

    // A node down: still held (renewals reach the two left), --no-wait gives up (75).
    nodes[2].stop();
    let marker = dir.path().join("ran");
    let out = output_within(
        cli(
            &urls,
            &[
                "exec",
                "job",
                "--no-wait",
                "--",
                "touch",
                &marker.display().to_string(),
            ],
        ),
        PROMPTLY,
    );
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(!marker.exists());

    // status --json, with the nodes in REDIS_URL.
    let mut from_env = Command::new(RDLOCK);
    from_env
        .env("REDIS_URL", urls.join(", "))
        .args(["--redlock", "status", "job", "--json"])
        .stdin(Stdio::null());
    let out = output_within(from_env, PROMPTLY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json = stdout(&out);
    assert!(json.contains("\"held\":true"), "{json}");
    assert!(
        json.contains(&format!("\"fencing_token\":{token}")),
        "{json}"
    );

    // release --force --yes: the holder's next renewal finds the lock gone (79); the
    // next exec gets a larger token.
    let out = output_within(
        cli(&urls, &["release", "--force", "--yes", "job"]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        wait_child(&mut holder.0, Duration::from_secs(3) + PROMPTLY),
        79,
        "the holder did not report its lease lost"
    );
    let out = output_within(
        cli(
            &urls,
            &[
                "exec",
                "job",
                "--no-wait",
                "--",
                "sh",
                "-c",
                "echo $RDLOCK_FENCING_TOKEN",
            ],
        ),
        PROMPTLY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let next: u64 = stdout(&out).trim().parse().expect("a token");
    assert!(next > token, "{next} after {token}");

    // A majority unreachable: 69, promptly.
    nodes[1].stop();
    let out = output_within(cli(&urls, &["status", "job"]), PROMPTLY);
    assert_eq!(code(&out), 69, "{}", stderr(&out));

    // Usage errors: 64.
    let out = output_within(
        {
            let mut c = Command::new(RDLOCK);
            c.env_remove("REDIS_URL")
                .args(["--redlock", "status", "job"])
                .stdin(Stdio::null());
            c
        },
        PROMPTLY,
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("--redlock needs"), "{}", stderr(&out));
    let out = output_within(cli(&urls, &["--cluster", "status", "job"]), PROMPTLY);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
}
