//! The `rdlock` binary behind Redis Sentinel (`--sentinel SERVICE --url S1 --url S2 ..`,
//! tests/support/sentinel.rs): `exec` holds its lock across a crash failover (renewed
//! on the promoted replica), `status --json` through the sentinels shows the holder,
//! `release --force --yes` works, and bad input exits 64 / 69 within seconds.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::{
    code, output_within, read, stderr, stdout, wait_child, wait_for_file, PROMPTLY, RDLOCK,
};
use support::sentinel::{SentinelGroup, SERVICE};

/// rdlock with `--sentinel SERVICE` and every sentinel as a `--url`.
fn cli(group: &SentinelGroup, service: &str, args: &[&str]) -> Command {
    let mut command = Command::new(RDLOCK);
    command
        .env_remove("REDIS_URL")
        .args(["--sentinel", service]);
    for url in group.sentinel_urls() {
        command.args(["--url", &url]);
    }
    command.args(args).stdin(Stdio::null());
    command
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_holds_across_a_crash_failover_and_status_release_work() {
    let mut group = SentinelGroup::start().await;
    // --replica-sync: 2 replicas acknowledge; 3 never can (--no-wait: exit 69, the
    // acquisition released again).
    let out = output_within(
        cli(
            &group,
            SERVICE,
            &[
                "--replica-sync",
                "2",
                "exec",
                "synced",
                "--no-wait",
                "--",
                "true",
            ],
        ),
        PROMPTLY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = output_within(
        cli(
            &group,
            SERVICE,
            &[
                "--replica-sync",
                "3",
                "--replica-sync-timeout",
                "200ms",
                "exec",
                "synced",
                "--no-wait",
                "--",
                "true",
            ],
        ),
        PROMPTLY,
    );
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2 replica(s) of the 3 wanted"),
        "{}",
        stderr(&out)
    );
    let out = output_within(
        cli(&group, SERVICE, &["status", "synced", "--json"]),
        PROMPTLY,
    );
    assert!(stdout(&out).contains("\"held\":false"), "{}", stdout(&out));
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let go = dir.path().join("go");
    let script = format!(
        "echo \"$RDLOCK_ID $RDLOCK_FENCING_TOKEN\" > {}; \
         while [ ! -e {} ]; do sleep 0.05; done",
        env_file.display(),
        go.display()
    );
    let mut holder = Holder(
        cli(
            &group,
            SERVICE,
            &[
                "exec",
                "cli-sentinel",
                "--lease",
                "15s",
                "--",
                "sh",
                "-c",
                &script,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_for_file(&env_file, "cli-sentinel").await;
    let text = read(&env_file);
    let token: u64 = text
        .trim()
        .split_once(' ')
        .and_then(|(_, t)| t.parse().ok())
        .unwrap_or_else(|| panic!("id and token in {text:?}"));

    // The key reached the replicas; then the master crashes and a replica takes over.
    let old = group.master_per_sentinels().await.expect("a master");
    support::wait_until(
        Duration::from_secs(10),
        "the key reached the replicas",
        || {
            let group = &group;
            async move {
                let mut all = true;
                for i in (0..3).filter(|&i| i != old) {
                    let mut conn = group.conn(i).await;
                    all &= support::get(&mut conn, "rdlock:{cli-sentinel}:lock")
                        .await
                        .is_some();
                }
                all
            }
        },
    )
    .await;
    group.kill(old);
    let new = group.wait_promoted(old).await;
    // The holder renews its lease on the new master.
    group
        .wait_renewed_on(new, "rdlock:{cli-sentinel}:lock")
        .await;
    assert!(
        holder.0.try_wait().unwrap().is_none(),
        "the holder exited (lease lost?)\n{}",
        group.logs()
    );
    let out = output_within(
        cli(&group, SERVICE, &["status", "cli-sentinel", "--json"]),
        PROMPTLY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json = stdout(&out);
    assert!(json.contains("\"held\":true"), "{json}");
    assert!(
        json.contains(&format!("\"fencing_token\":{token}")),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"pid\":{}", holder.0.id())),
        "{json}"
    );

    // The command ends: exit 0, lock released; release --force on a free lock is 0.
    std::fs::write(&go, "").unwrap();
    assert_eq!(wait_child(&mut holder.0, PROMPTLY), 0);
    let out = output_within(
        cli(&group, SERVICE, &["status", "cli-sentinel", "--json"]),
        PROMPTLY,
    );
    assert!(stdout(&out).contains("\"held\":false"), "{}", stdout(&out));
    let out = output_within(
        cli(
            &group,
            SERVICE,
            &["release", "--force", "--yes", "cli-sentinel"],
        ),
        PROMPTLY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // An unknown service: a usage error (64), within seconds.
    let out = output_within(cli(&group, "no-such-service", &["status", "x"]), PROMPTLY);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no sentinel monitors"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn bad_sentinel_input_exits_64_or_69() {
    // --sentinel without any URL.
    let out = output_within(
        {
            let mut c = Command::new(RDLOCK);
            c.env_remove("REDIS_URL")
                .args(["--sentinel", SERVICE, "status", "x"])
                .stdin(Stdio::null());
            c
        },
        PROMPTLY,
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("--sentinel needs at least one sentinel"));
    // --sentinel with --cluster.
    let out = output_within(
        {
            let mut c = Command::new(RDLOCK);
            c.args([
                "--sentinel",
                SERVICE,
                "--cluster",
                "--url",
                "redis://127.0.0.1:1",
            ])
            .args(["status", "x"])
            .stdin(Stdio::null());
            c
        },
        PROMPTLY,
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    // Unreachable sentinels, from REDIS_URL: 69 within seconds.
    let dead: Vec<String> = (0..2)
        .map(|_| format!("redis://127.0.0.1:{}", support::free_port()))
        .collect();
    let out = output_within(
        {
            let mut c = Command::new(RDLOCK);
            c.env("REDIS_URL", dead.join(","))
                .args(["--sentinel", SERVICE, "status", "x"])
                .stdin(Stdio::null());
            c
        },
        PROMPTLY,
    );
    assert_eq!(code(&out), 69, "{}", stderr(&out));
}
