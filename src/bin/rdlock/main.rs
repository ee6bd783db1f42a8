//! `rdlock`: a distributed `flock(1)` on Redis, with status and admin commands.
//!
//! ```text
//! rdlock exec nightly-backup -- ./backup.sh --full
//! rdlock status nightly-backup --json
//! rdlock release --force nightly-backup --yes
//! rdlock exec --cluster --url redis://10.0.0.1:7000 --url redis://10.0.0.2:7000 nightly-backup -- ./backup.sh
//! rdlock exec --sentinel mymaster --url redis://10.0.0.1:26379 --url redis://10.0.0.2:26379 nightly-backup -- ./backup.sh
//! rdlock exec --redlock --url redis://a:6379 --url redis://b:6379 --url redis://c:6379 nightly-backup -- ./backup.sh
//! ```

mod duration;
mod exec;
mod exit;
mod job;
mod json;
mod output;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rdlock::{ManagerBuilder, RdLockConnectionManager};

#[derive(Parser, Debug)]
#[command(
    name = "rdlock",
    version,
    about = "Distributed locks on Redis for cron jobs and scripts: run a command on one host at a time",
    after_help = exit::HELP
)]
struct Cli {
    /// The Redis server [default: redis://127.0.0.1:6379]. With --cluster: a seed node of
    /// the cluster; with --redlock: one of the independent masters. Repeat it, or
    /// separate several URLs with commas or spaces (also in $REDIS_URL).
    #[arg(long, global = true, env = "REDIS_URL", value_name = "URL")]
    url: Vec<String>,
    /// The server is a Redis Cluster: --url gives seed nodes (any one reachable node is
    /// enough; the others are learnt from it).
    #[arg(long, global = true, conflicts_with = "redlock")]
    cluster: bool,
    /// The server is the master SERVICE behind Redis Sentinel: --url gives the sentinels
    /// (repeatable, or separated by commas or spaces, also in $REDIS_URL); the master is
    /// resolved through them and followed across failovers. The data nodes are reached
    /// without credentials (database 0).
    #[arg(
        long,
        global = true,
        value_name = "SERVICE",
        conflicts_with_all = ["cluster", "redlock"]
    )]
    sentinel: Option<String>,
    /// Replica sync: after each acquisition, wait until N replicas have it (`WAIT`);
    /// an acquisition fewer replicas acknowledged in time is released again and
    /// retried (exec waits on; with --no-wait it exits 69). One server with replicas or
    /// --sentinel; not with --cluster or --redlock.
    #[arg(
        long,
        global = true,
        value_name = "N",
        conflicts_with_all = ["cluster", "redlock"]
    )]
    replica_sync: Option<u32>,
    /// How long each acquisition waits for the replicas of --replica-sync.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "500ms",
        value_parser = duration::parse
    )]
    replica_sync_timeout: std::time::Duration,
    /// Redlock over independent Redis masters: --url gives every node (typically 3 or
    /// 5); a lock is held while a majority of them holds it.
    #[arg(long, global = true)]
    redlock: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take the lock, run a command while holding it, release it when the command exits.
    ///
    /// The command gets RDLOCK_ID and RDLOCK_FENCING_TOKEN in its environment and runs
    /// in a process group of its own (the terminal's foreground job when rdlock is).
    /// SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH and every other
    /// signal that would end rdlock (SIGALRM, ...) sent to rdlock are forwarded to that
    /// group, followed by SIGCONT; SIGTSTP stops it and rdlock. The lock is released once
    /// the command has exited and no process of its group is left. rdlock exits with the
    /// command's exit code.
    #[command(after_help = exit::HELP)]
    Exec(exec::Exec),
    /// Show whether a lock is held, by whom and for how long, and its last fencing token.
    Status {
        /// The lock id.
        id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete a lock whoever holds it, and wake its waiters (the admin's escape hatch).
    ///
    /// On a terminal it shows the holder and asks; the lock is deleted only if that
    /// holder (its fencing token) still has it when you answer.
    Release {
        /// The lock id.
        id: String,
        /// Required: this deletes another process's lock.
        #[arg(long, required = true)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        /// Delete only the acquisition with this fencing token (as `status` shows it).
        #[arg(long, value_name = "TOKEN")]
        fence: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            output::say!("rdlock: cannot start: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

/// The default server when neither --url nor $REDIS_URL gives one (not with --cluster:
/// a cluster has no default address).
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Where to connect: one server, the seed nodes of a Redis Cluster, the sentinels of
/// a service, or Redlock nodes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        service: String,
        sentinels: Vec<String>,
    },
    Redlock(Vec<String>),
}

/// Several URLs may also come in one value, as $REDIS_URL can hold only one string:
/// separated by commas or white space (which a URL never holds unencoded).
fn split_urls(urls: &[String]) -> Vec<String> {
    urls.iter()
        .flat_map(|url| url.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks the --url / --cluster / --sentinel / --redlock combination; `Err` is the message of a
/// usage error.
fn target(
    urls: Vec<String>,
    cluster: bool,
    sentinel: Option<String>,
    redlock: bool,
) -> Result<Target, String> {
    if redlock {
        let nodes = split_urls(&urls);
        if nodes.is_empty() {
            return Err(
                "--redlock needs its nodes: give --url URL once per node (typically 3 or 5) \
                 or set REDIS_URL"
                    .to_owned(),
            );
        }
        return Ok(Target::Redlock(nodes));
    }
    if let Some(service) = sentinel {
        let sentinels = split_urls(&urls);
        if sentinels.is_empty() {
            return Err(
                "--sentinel needs at least one sentinel: give --url URL (repeatable) or \
                 set REDIS_URL"
                    .to_owned(),
            );
        }
        return Ok(Target::Sentinel { service, sentinels });
    }
    if cluster {
        let seeds = split_urls(&urls);
        if seeds.is_empty() {
            return Err(
                "--cluster needs at least one seed node: give --url URL (repeatable) \
                        or set REDIS_URL"
                    .to_owned(),
            );
        }
        return Ok(Target::Cluster(seeds));
    }
    let mut urls = urls.into_iter();
    match (urls.next(), urls.next()) {
        (None, _) => Ok(Target::Single(DEFAULT_URL.to_owned())),
        (Some(url), None) => Ok(Target::Single(url)),
        (Some(_), Some(_)) => Err(
            "several --url given: add --cluster to reach a Redis Cluster through these \
             seed nodes, --sentinel SERVICE for sentinels, or --redlock to lock on a \
             majority of independent masters (one server takes one --url)"
                .to_owned(),
        ),
    }
}

async fn connect(target: &Target, builder: ManagerBuilder) -> Result<RdLockConnectionManager, u8> {
    match target {
        Target::Single(url) => builder
            .connect(url.as_str())
            .await
            .map_err(|e| exit::report(&format!("cannot connect to {url}"), &e)),
        Target::Cluster(seeds) => builder
            .cluster(seeds.iter().map(String::as_str))
            .await
            .map_err(|e| {
                exit::report(
                    &format!(
                        "cannot connect to the Redis Cluster at {}",
                        seeds.join(", ")
                    ),
                    &e,
                )
            }),
        Target::Sentinel { service, sentinels } => builder
            .sentinel(sentinels.iter().map(String::as_str), service)
            .await
            .map_err(|e| {
                exit::report(
                    &format!(
                        "cannot reach the master {service} through the sentinels at {}",
                        sentinels.join(", ")
                    ),
                    &e,
                )
            }),
        Target::Redlock(nodes) => builder
            .redlock(nodes.iter().map(String::as_str))
            .await
            .map_err(|e| {
                exit::report(
                    &format!("cannot connect to the Redlock nodes {}", nodes.join(", ")),
                    &e,
                )
            }),
    }
}

async fn run(cli: Cli) -> u8 {
    let target = match target(cli.url, cli.cluster, cli.sentinel, cli.redlock) {
        Ok(target) => target,
        Err(message) => {
            output::say!("rdlock: {message}");
            return exit::USAGE;
        }
    };
    let mut builder = RdLockConnectionManager::builder();
    if let Some(replicas) = cli.replica_sync {
        builder = builder.replica_sync(replicas, cli.replica_sync_timeout);
    }
    let manager = match connect(&target, builder).await {
        Ok(manager) => manager,
        Err(code) => return code,
    };
    let code = match cli.command {
        Command::Exec(args) => exec::run(&manager, args).await,
        Command::Status { id, json } => status::status(&manager, &id, json).await,
        Command::Release {
            id,
            force: _,
            yes,
            fence,
        } => status::force_release(&manager, &id, yes, fence).await,
    };
    // On every path, also an interrupted wait: an acquire attempt that was in flight
    // is undone by a background release, which must run before the runtime goes.
    let _ = manager.shutdown().await;
    code
}
