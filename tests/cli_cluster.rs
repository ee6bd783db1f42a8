//! The `rdlock` binary on a Redis Cluster (`--cluster`, 3 masters + 3 replicas,
//! tests/support/cluster.rs): `exec`, `--no-wait` against a holder, `status --json`,
//! `release --force --yes`, seeds in `REDIS_URL`, and bad input (`--cluster` without a
//! URL, several `--url` without `--cluster`, `--cluster` on a server that is not a
//! cluster, unreachable seeds).
//!
//! One cluster serves every check of the file (it takes seconds to form).
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
use support::cluster::RedisCluster;
use support::RedisServer;

/// The holding rdlock: killed with its command if the test fails before it exits, so
/// that a failure never leaves it running (and holding the test's output open).
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SIGTERM: rdlock forwards it to its command's group and exits with it.
            cli_support::signal(self.0.id() as i32, nix::sys::signal::Signal::SIGTERM);
            if wait_child_quietly(&mut self.0).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

fn wait_child_quietly(child: &mut std::process::Child) -> Option<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < PROMPTLY {
        if child.try_wait().ok()?.is_some() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[tokio::test]
async fn exec_status_and_release_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    // The lock lives on one master; rdlock is given two other nodes as seeds, so that it
    // must learn the cluster's slots to reach it.
    let master = cluster.masters().await[0];
    let id = cluster.id_on_master(master, "cli-cluster-").await;
    let seeds: Vec<String> = (0..cluster.nodes().len())
        .filter(|&i| i != master)
        .map(|i| cluster.node(i).url())
        .take(2)
        .collect();
    let cli = |args: &[&str]| {
        let mut command = rdlock_at(&seeds[0], &["--url", &seeds[1], "--cluster"]);
        command.args(args);
        command
    };
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let go = dir.path().join("go");
    let script = format!(
        "echo \"$RDLOCK_ID $RDLOCK_FENCING_TOKEN\" > {}; \
         while [ ! -e {} ]; do sleep 0.05; done",
        env_file.display(),
        go.display()
    );

    // exec runs the command with the lock id and a fencing token.
    let mut holder = Holder(
        cli(&["exec", &id, "--lease", "6s", "--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(&env_file, &id).await;
    let text = read(&env_file);
    let (seen_id, token) = text.trim().split_once(' ').expect("id and token");
    assert_eq!(seen_id, id);
    let token: u64 = token
        .parse()
        .unwrap_or_else(|_| panic!("token in {text:?}"));
    assert!(token >= 1, "{text:?}");

    // The lock is the cluster's: the library, seeded with every node, finds it held.
    let manager = RdLockConnectionManager::cluster(cluster.urls())
        .await
        .unwrap();
    let holder_info = manager.new_lock(&id).holder().await.unwrap();
    let holder_info = holder_info.expect("the library sees the CLI's lock");
    assert_eq!(holder_info.pid, holder.0.id());
    assert_eq!(holder_info.fencing_token, token);

    // A second exec --no-wait gives up with 75, without running its command.
    let marker = dir.path().join("ran");
    let out = output_within(
        cli(&[
            "exec",
            &id,
            "--no-wait",
            "--",
            "touch",
            &marker.display().to_string(),
        ]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(!marker.exists(), "the second command ran");

    // status --json shows the holder (rdlock's pid) and its fencing token.
    let out = output_within(cli(&["status", &id, "--json"]), PROMPTLY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json = stdout(&out);
    assert!(json.contains("\"held\":true"), "{json}");
    assert!(
        json.contains(&format!("\"pid\":{}", holder.0.id())),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"fencing_token\":{token}")),
        "{json}"
    );

    // Seeds also come from REDIS_URL, several separated by a comma (and spaces).
    let mut from_env = Command::new(RDLOCK);
    from_env
        .env("REDIS_URL", format!("{}, {}", seeds[1], seeds[0]))
        .args(["--cluster", "status", &id, "--json"])
        .stdin(Stdio::null());
    let out = output_within(from_env, PROMPTLY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("\"held\":true"), "{}", stdout(&out));

    // release --force --yes deletes it: the holder's next renewal finds the lock gone
    // (exit 79), and the lock can be taken again, with a larger token.
    let out = output_within(cli(&["release", "--force", "--yes", &id]), PROMPTLY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("released"), "{}", stdout(&out));
    let out = output_within(cli(&["status", &id, "--json"]), PROMPTLY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("\"held\":false"), "{}", stdout(&out));
    assert_eq!(
        wait_child(&mut holder.0, Duration::from_secs(6) + PROMPTLY),
        79,
        "the holder did not report its lease lost"
    );
    let out = output_within(
        cli(&[
            "exec",
            &id,
            "--no-wait",
            "--",
            "sh",
            "-c",
            "echo $RDLOCK_FENCING_TOKEN",
        ]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let next: u64 = stdout(&out).trim().parse().expect("a token");
    assert!(next > token, "{next} after {token}");

    // Unreachable seeds: exit 69 within seconds, no hang.
    let dead: Vec<String> = (0..2)
        .map(|_| format!("redis://127.0.0.1:{}", support::free_port()))
        .collect();
    let out = output_within(
        rdlock_at(&dead[0], &["--url", &dead[1], "--cluster", "status", &id]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 69, "{}", stderr(&out));

    let _ = manager.shutdown().await;
}

#[tokio::test]
async fn bad_cluster_input_is_a_usage_error() {
    // --cluster without any URL (none given, REDIS_URL unset or empty).
    for env in [None, Some(""), Some(" , ")] {
        let mut command = Command::new(RDLOCK);
        match env {
            Some(value) => command.env("REDIS_URL", value),
            None => command.env_remove("REDIS_URL"),
        };
        command
            .args(["--cluster", "status", "x"])
            .stdin(Stdio::null());
        let out = output_within(command, PROMPTLY);
        assert_eq!(code(&out), 64, "REDIS_URL {env:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--cluster needs at least one seed node"),
            "{}",
            stderr(&out)
        );
    }

    // Several --url without --cluster: refused before connecting anywhere (the URLs
    // lead nowhere; a connection attempt would exit 69).
    let nowhere = format!("redis://127.0.0.1:{}", support::free_port());
    let out = output_within(
        rdlock_at(&nowhere, &["--url", &nowhere, "exec", "x", "--", "true"]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("add --cluster"), "{}", stderr(&out));

    // --cluster on a server that is not a cluster: the library's InvalidConfig, exit 64.
    let server = RedisServer::start();
    let out = output_within(
        rdlock_at(&server.url(), &["--cluster", "exec", "x", "--", "true"]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a Redis Cluster"),
        "{}",
        stderr(&out)
    );
    // Without --cluster the same server works (the check above is about --cluster).
    let out = output_within(rdlock_at(&server.url(), &["status", "x"]), PROMPTLY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
