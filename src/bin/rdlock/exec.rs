//! `rdlock exec`: run a command while holding a lock.

use std::io::{IsTerminal, Write};
use std::pin::pin;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdlock::{LockGuard, RdLockConnectionManager, RdLockError};
use tokio::signal::unix::{signal, SignalKind};

use crate::duration;
use crate::exit;
use crate::status::describe;

/// What to do with the command when the lease is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnLost {
    /// SIGTERM, then SIGKILL after the grace period.
    Term,
    /// SIGKILL at once.
    Kill,
    /// Let it run (rdlock still exits with the lease-lost code).
    Ignore,
}

#[derive(clap::Args, Debug)]
pub(crate) struct Exec {
    /// The lock id: every host using the same id runs the command one at a time.
    pub(crate) id: String,
    /// The lease, renewed while the command runs: how long a crashed rdlock blocks others.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    pub(crate) lease: Duration,
    /// Give up (exit 75) if the lock is not obtained within this time [default: wait without limit].
    #[arg(long, value_parser = duration::parse, conflicts_with = "no_wait")]
    pub(crate) wait: Option<Duration>,
    /// Give up at once (exit 75) if the lock is held.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// What to do with the command if the lease is lost.
    #[arg(long, value_enum, default_value = "term")]
    pub(crate) on_lost: OnLost,
    /// With --on-lost term: how long to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub(crate) grace: Duration,
    /// A label stored with the lock, shown by `rdlock status` [default: the command].
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// No progress or log lines (errors are still printed).
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// SIGINT and SIGTERM sent to rdlock.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
        }
    }
}

pub(crate) async fn run(manager: &RdLockConnectionManager, args: Exec) -> u8 {
    let Some(program) = args.command.first() else {
        eprintln!("rdlock: exec needs a command after `--`");
        return exit::USAGE;
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("rdlock exec {}", args.command.join(" ")));
    let lock = manager
        .new_lock(&args.id)
        .with_lease(args.lease)
        .with_label(&label);
    let mut interrupts = match Interrupts::new() {
        Ok(interrupts) => interrupts,
        Err(e) => {
            eprintln!("rdlock: cannot handle signals: {e}");
            return exit::FAILURE;
        }
    };
    let guard = match wait_for_lock(&lock, &args, &mut interrupts).await {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    let fence = guard.fencing_token();
    log(
        &args,
        &format!("acquired {} (fencing token {fence})", args.id),
    );

    let child = tokio::process::Command::new(program)
        .args(&args.command[1..])
        .env("RDLOCK_ID", &args.id)
        .env("RDLOCK_FENCING_TOKEN", fence.to_string())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("rdlock: cannot run {program:?}: {e}");
            let _ = guard.release().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                exit::NOT_FOUND
            } else {
                exit::CANNOT_RUN
            };
        }
    };
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let send = |signal: Signal| {
        if let Some(pid) = pid {
            let _ = kill(pid, signal);
        }
    };

    let mut lost_at: Option<Instant> = None;
    let mut killed = false;
    let status = loop {
        let escalate_at = lost_at.map(|at| at + args.grace).unwrap_or_else(far_future);
        tokio::select! {
            status = child.wait() => break status,
            _ = guard.lost(), if lost_at.is_none() => {
                lost_at = Some(Instant::now());
                eprintln!("rdlock: the lease on {} was lost; --on-lost {:?}", args.id, args.on_lost);
                match args.on_lost {
                    OnLost::Term => send(Signal::SIGTERM),
                    OnLost::Kill => {
                        send(Signal::SIGKILL);
                        killed = true;
                    }
                    OnLost::Ignore => {}
                }
            }
            _ = tokio::time::sleep_until(escalate_at.into()),
                if args.on_lost == OnLost::Term && lost_at.is_some() && !killed => {
                eprintln!("rdlock: the command outlived the {:?} grace period: SIGKILL", args.grace);
                send(Signal::SIGKILL);
                killed = true;
            }
            signal = interrupts.recv() => {
                log(&args, &format!("forwarding {signal} to the command"));
                send(signal);
            }
        }
    };
    // The command is gone: now the lock can go.
    let released = guard.release().await;
    let _ = manager.shutdown().await;
    if lost_at.is_some() {
        return exit::LEASE_LOST;
    }
    if let Err(e) = released {
        // The command finished while the lease was still held, but the release failed:
        // the lock frees itself when its lease runs out.
        eprintln!("rdlock: releasing {}: {e}", args.id);
    }
    match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("rdlock: waiting for the command: {e}");
            exit::FAILURE
        }
    }
}

/// Waits for the lock as the options say, showing who holds it meanwhile.
async fn wait_for_lock(
    lock: &rdlock::Lock,
    args: &Exec,
    interrupts: &mut Interrupts,
) -> Result<LockGuard, u8> {
    let context = format!("cannot take {}", args.id);
    if args.no_wait {
        return match lock.try_lock().await {
            Ok(guard) => Ok(guard),
            Err(e) => Err(report_busy(lock, &context, e, args).await),
        };
    }
    let mut acquire = pin!(async {
        match args.wait {
            Some(wait) => lock.lock_timeout(wait).await,
            None => lock.lock().await,
        }
    });
    let tty = std::io::stderr().is_terminal();
    // Nothing is shown for a lock that is free at once.
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(200),
        Duration::from_secs(1),
    );
    let mut shown: Option<Option<u64>> = None; // the holder's fence last shown
    let outcome = loop {
        tokio::select! {
            outcome = &mut acquire => break outcome,
            _ = ticker.tick(), if !args.quiet => {
                let Ok(holder) = lock.holder().await else { continue };
                let state = match &holder {
                    Some(holder) => format!("held by {}", describe(holder)),
                    None => "free, taking it".to_owned(),
                };
                let identity = holder.as_ref().map(|h| h.fencing_token);
                if tty {
                    eprint!("\r\x1b[2Krdlock: waiting for {}: {state}", args.id);
                    let _ = std::io::stderr().flush();
                    shown = Some(identity);
                } else if shown != Some(identity) {
                    eprintln!("rdlock: waiting for {}: {state}", args.id);
                    shown = Some(identity);
                }
            }
            signal = interrupts.recv() => {
                if tty && shown.is_some() {
                    eprintln!();
                }
                eprintln!("rdlock: {signal} while waiting for {}", args.id);
                return Err(128 + signal as u8);
            }
        }
    };
    if tty && shown.is_some() {
        eprint!("\r\x1b[2K");
    }
    match outcome {
        Ok(guard) => Ok(guard),
        Err(e) => Err(report_busy(lock, &context, e, args).await),
    }
}

/// Reports a failed acquisition; when the lock was busy, also says who has it.
async fn report_busy(lock: &rdlock::Lock, context: &str, error: RdLockError, args: &Exec) -> u8 {
    let code = exit::report(context, &error);
    if code == exit::NOT_OBTAINED && !args.quiet {
        let holder = tokio::time::timeout(Duration::from_secs(1), lock.holder()).await;
        if let Ok(Ok(Some(holder))) = holder {
            eprintln!("rdlock: {} is held by {}", args.id, describe(&holder));
        }
    }
    code
}

fn log(args: &Exec, line: &str) {
    if !args.quiet {
        eprintln!("rdlock: {line}");
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::FAILURE),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(exit::FAILURE),
        (None, None) => exit::FAILURE,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
