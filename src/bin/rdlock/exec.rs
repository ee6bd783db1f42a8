//! `rdlock exec`: run a command while holding a lock.

use std::io::IsTerminal;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rdlock::{LeaseState, LockGuard, LossCause, RdLockConnectionManager, RdLockError};
use tokio::signal::unix::{signal, SignalKind};

use crate::duration;
use crate::exit;
use crate::job::{Exit, Job};
use crate::output::{say, say_partial};
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

/// What to do with the command when the lease turns suspect (a renewal failed or is
/// overdue, or the connection to Redis was replaced): not known lost yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnSuspect {
    /// Nothing.
    Ignore,
    /// Send --suspect-signal to the command's process group, once each time the lease
    /// turns suspect.
    Signal,
}

/// Parses a signal name (`USR1`, `SIGUSR1`, case-insensitive) or number.
fn parse_signal(text: &str) -> Result<Signal, String> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| format!("no signal numbered {number}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match name.parse::<Signal>() {
        Ok(Signal::SIGKILL | Signal::SIGSTOP) => Err(format!(
            "{name} cannot be the suspect signal: the command could not handle it"
        )),
        Ok(signal) => Ok(signal),
        Err(_) => Err(format!(
            "{text:?} is not a signal name (e.g. USR1, SIGUSR2, HUP)"
        )),
    }
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
    /// The exit code when the lock is not obtained (held with --no-wait, or --wait ran
    /// out), instead of 75: one that the command itself never uses (as `flock -E`).
    #[arg(long, short = 'E', default_value_t = exit::NOT_OBTAINED, value_name = "N")]
    pub(crate) conflict_exit_code: u8,
    /// Stop renewing the lease this long after the lock was taken: the lease runs out
    /// (at most --lease later), the command is ended as for a lost lease (--on-lost),
    /// and rdlock exits 124 [default: no limit].
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    pub(crate) max_hold: Option<Duration>,
    /// What to do with the command when the lease turns suspect (renewals failing,
    /// connection replaced; not known lost yet).
    #[arg(long, value_enum, default_value = "ignore")]
    pub(crate) on_suspect: OnSuspect,
    /// With --on-suspect signal: the signal to send (a name such as USR1 or SIGUSR2, or a
    /// number).
    #[arg(long, default_value = "USR1", value_parser = parse_signal, value_name = "SIGNAL")]
    pub(crate) suspect_signal: Signal,
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

/// The signals rdlock forwards to the command's process group: every signal that can be
/// caught and whose default action would end rdlock (and SIGWINCH). One left to its
/// default would kill rdlock while its command runs on, with a lock nobody renews: once
/// the lease ran out, another host would run the command beside it. The real-time
/// signals are added to these at run time ([`real_time`]).
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGIO,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Signal::SIGPWR,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Signal::SIGSTKFLT,
];

/// The real-time signals, SIGRTMIN..=SIGRTMAX: none has a fixed meaning, and each one's
/// default action ends the process, so rdlock forwards them all. The range is asked of
/// libc at run time: glibc keeps the first kernel ones (32 and 33) for its threads, and
/// they must not be touched.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn real_time() -> std::ops::RangeInclusive<i32> {
    nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn real_time() -> std::ops::RangeInclusive<i32> {
    #[allow(clippy::reversed_empty_ranges)]
    {
        1..=0
    }
}

/// A signal's name for messages: `SIGTERM`, `SIGRTMIN+3`, `SIGRTMAX`.
fn name(sig: i32) -> String {
    if let Ok(known) = Signal::try_from(sig) {
        return known.to_string();
    }
    let rt = real_time();
    if sig == *rt.end() {
        "SIGRTMAX".to_string()
    } else if sig == *rt.start() {
        "SIGRTMIN".to_string()
    } else if rt.contains(&sig) {
        format!("SIGRTMIN+{}", sig - rt.start())
    } else {
        format!("signal {sig}")
    }
}

/// Signals sent to rdlock, by number (nix's `Signal` has no real-time ones). One that
/// was ignored when rdlock started (`nohup`, or `&` in a shell script for SIGINT and
/// SIGQUIT) is left ignored, for the command too: no handler is installed for it.
struct Signals {
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// [`FORWARDED`], and every real-time signal.
    fn forwarded() -> std::io::Result<Self> {
        let mut all: Vec<i32> = FORWARDED.iter().map(|&sig| sig as i32).collect();
        all.extend(real_time());
        Self::new(&all)
    }

    fn new(signals: &[i32]) -> std::io::Result<Self> {
        let mut streams = Vec::new();
        for &sig in signals {
            if !ignored(sig) {
                streams.push((sig, signal(SignalKind::from_raw(sig))?));
            }
        }
        Ok(Self { streams })
    }

    fn add(&mut self, signals: &[Signal]) -> std::io::Result<()> {
        let raw: Vec<i32> = signals.iter().map(|&sig| sig as i32).collect();
        self.streams.extend(Self::new(&raw)?.streams);
        Ok(())
    }

    async fn recv(&mut self) -> i32 {
        std::future::poll_fn(|cx| {
            for (sig, stream) in &mut self.streams {
                if stream.poll_recv(cx).is_ready() {
                    return Poll::Ready(*sig);
                }
            }
            Poll::Pending
        })
        .await
    }
}

fn ignored(sig: i32) -> bool {
    // SAFETY: a null new action only reads the current one into `old`.
    unsafe {
        let mut old: nix::libc::sigaction = std::mem::zeroed();
        nix::libc::sigaction(sig, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == nix::libc::SIG_IGN
    }
}

pub(crate) async fn run(manager: &RdLockConnectionManager, args: Exec) -> u8 {
    let Some(program) = args.command.first() else {
        say!("rdlock: exec needs a command after `--`");
        return exit::USAGE;
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("rdlock exec {}", args.command.join(" ")));
    let mut lock = manager
        .new_lock(&args.id)
        .with_lease(args.lease)
        .with_label(&label);
    if let Some(max_hold) = args.max_hold {
        lock = lock.with_max_hold(max_hold);
    }
    let mut signals = match Signals::forwarded() {
        Ok(signals) => signals,
        Err(e) => {
            say!("rdlock: cannot handle signals: {e}");
            return exit::FAILURE;
        }
    };
    let guard = match wait_for_lock(&lock, &args, &mut signals).await {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    let fence = guard.fencing_token();
    log(
        &args,
        &format!("acquired {} (fencing token {fence})", args.id),
    );
    // Registered before the command starts, so that no exit or stop is missed; SIGTSTP
    // only now: while waiting for the lock, Ctrl-Z stops rdlock as usual.
    let registered = signal(SignalKind::child()).and_then(|children| {
        signals
            .add(&[Signal::SIGTSTP, Signal::SIGCONT])
            .map(|()| children)
    });
    let mut children = match registered {
        Ok(children) => children,
        Err(e) => {
            say!("rdlock: cannot handle signals: {e}");
            let _ = guard.release().await;
            return exit::FAILURE;
        }
    };

    let mut command = std::process::Command::new(program);
    command
        .args(&args.command[1..])
        .env("RDLOCK_ID", &args.id)
        .env("RDLOCK_FENCING_TOKEN", fence.to_string());
    let mut job = match Job::spawn(&mut command) {
        Ok(job) => job,
        Err(e) => {
            say!("rdlock: cannot run {program:?}: {e}");
            let _ = guard.release().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                exit::NOT_FOUND
            } else {
                exit::CANNOT_RUN
            };
        }
    };

    // Reaping is driven by SIGCHLD; the tick also notices the last process of the group
    // ending when it was not rdlock's child.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_at: Option<Instant> = None;
    // The lease is in a suspect episode already signalled (or lost): no signal until it
    // is held again.
    let mut suspected = false;
    let mut killed = false;
    let mut said_leftovers = false;
    let leader = loop {
        if job.reap().is_some() || job.part_stopped() {
            job.leader_stopped();
        }
        if let Some(leader) = job.leader_exit() {
            if !job.group_alive() {
                break leader;
            }
            if !said_leftovers {
                said_leftovers = true;
                log(
                    &args,
                    "the command exited; waiting for the rest of its process group",
                );
            }
        }
        if suspected && lost_at.is_none() && guard.state() == LeaseState::Held {
            suspected = false;
            log(
                &args,
                &format!("the lease on {} is confirmed again", args.id),
            );
        }
        let escalate_at = lost_at.map(|at| at + args.grace).unwrap_or_else(far_future);
        tokio::select! {
            _ = children.recv() => {}
            _ = tick.tick() => {}
            _ = guard.suspect(), if args.on_suspect == OnSuspect::Signal && !suspected && lost_at.is_none() => {
                suspected = true;
                // A lost lease is --on-lost's business (the branch below).
                if guard.state() == LeaseState::Suspect {
                    job.signal(args.suspect_signal);
                    say!("rdlock: the lease on {} is suspect; sent {} to the command", args.id, args.suspect_signal);
                }
            }
            _ = guard.lost(), if lost_at.is_none() => {
                lost_at = Some(Instant::now());
                match args.on_lost {
                    OnLost::Term => {
                        job.signal(Signal::SIGTERM);
                        // A stopped process acts on it only once continued.
                        job.signal(Signal::SIGCONT);
                    }
                    OnLost::Kill => {
                        job.signal(Signal::SIGKILL);
                        killed = true;
                    }
                    OnLost::Ignore => {}
                }
                if guard.loss_cause() == Some(LossCause::MaxHold) {
                    say!("rdlock: the maximum hold of {} was reached and its lease ran out; --on-lost {:?}", args.id, args.on_lost);
                } else {
                    say!("rdlock: the lease on {} was lost; --on-lost {:?}", args.id, args.on_lost);
                }
            }
            _ = tokio::time::sleep_until(escalate_at.into()),
                if args.on_lost == OnLost::Term && lost_at.is_some() && !killed => {
                job.signal(Signal::SIGKILL);
                killed = true;
                say!("rdlock: the command outlived the {:?} grace period: SIGKILL", args.grace);
            }
            signal = signals.recv() => match signal {
                nix::libc::SIGTSTP => job.suspend(),
                nix::libc::SIGCONT => job.resume(),
                signal => {
                    // Forward first: logging must never delay (or, before, prevent) it.
                    job.signal_raw(signal);
                    if signal != nix::libc::SIGWINCH {
                        // As timeout(1) does: a stopped command (SIGTTIN reading the
                        // terminal from the background, a `kill -STOP`) would otherwise
                        // keep the signal pending, and rdlock the lock, until someone
                        // continued it.
                        job.signal(Signal::SIGCONT);
                        log(&args, &format!("forwarded {} to the command", name(signal)));
                    }
                }
            },
        }
    };
    job.take_terminal_back();
    // The command and every process of its group are gone: now the lock can go.
    let max_hold = guard.loss_cause() == Some(LossCause::MaxHold);
    let released = guard.release().await;
    if lost_at.is_some() {
        return if max_hold {
            exit::MAX_HOLD
        } else {
            exit::LEASE_LOST
        };
    }
    if let Err(e) = released {
        // The command finished while the lease was still held, but the release failed:
        // the lock frees itself when its lease runs out.
        say!("rdlock: releasing {}: {e}", args.id);
    }
    match leader {
        Exit::Code(code) => u8::try_from(code & 0xff).unwrap_or(exit::FAILURE),
        Exit::Signal(signal) => u8::try_from(128 + signal).unwrap_or(exit::FAILURE),
    }
}

/// Waits for the lock as the options say, showing who holds it meanwhile.
async fn wait_for_lock(
    lock: &rdlock::Lock,
    args: &Exec,
    signals: &mut Signals,
) -> Result<LockGuard, u8> {
    let context = format!("cannot take {}", args.id);
    // `--no-wait`'s one attempt is raced against signals too: a slow Redis must not turn
    // a SIGTERM received before the lock was taken into a started command.
    let mut acquire = pin!(async {
        match (args.no_wait, args.wait) {
            (true, _) => lock.try_lock().await,
            (false, Some(wait)) => lock.lock_timeout(wait).await,
            (false, None) => lock.lock().await,
        }
    });
    let tty = std::io::stderr().is_terminal();
    // Nothing is shown for a lock that is free at once. The look at the holder also
    // tells whether Redis still answers (shown or not, with --quiet): the wait itself
    // retries through an outage, and a `--wait` that runs out then is "unreachable",
    // not "busy".
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(200),
        Duration::from_secs(1),
    );
    let mut shown: Option<Option<u64>> = None; // the holder's fence last shown
    let mut last_look: Option<RdLockError> = None; // the last look's connection error
    let outcome = loop {
        tokio::select! {
            // A signal first: when it and the lock arrive together, the lock is not
            // taken (the attempt is dropped, and undone, before the command starts).
            biased;
            signal = signals.recv() => {
                if signal == nix::libc::SIGWINCH {
                    continue; // nothing to pass it to yet; its default is to be ignored
                }
                if tty && shown.is_some() {
                    say!("");
                }
                say!("rdlock: {} while waiting for {}", name(signal), args.id);
                return Err(u8::try_from(128 + signal).unwrap_or(exit::FAILURE));
            }
            outcome = &mut acquire => break outcome,
            _ = ticker.tick(), if !args.no_wait => {
                let holder = match lock.holder().await {
                    Ok(holder) => {
                        last_look = None;
                        holder
                    }
                    Err(e) => {
                        if e.is_connection_error() {
                            last_look = Some(e);
                        }
                        continue;
                    }
                };
                if args.quiet {
                    continue;
                }
                let state = match &holder {
                    Some(holder) => format!("held by {}", describe(holder)),
                    None => "free, taking it".to_owned(),
                };
                let identity = holder.as_ref().map(|h| h.fencing_token);
                if tty {
                    say_partial!("\r\x1b[2Krdlock: waiting for {}: {state}", args.id);
                    shown = Some(identity);
                } else if shown != Some(identity) {
                    say!("rdlock: waiting for {}: {state}", args.id);
                    shown = Some(identity);
                }
            }
        }
    };
    if tty && shown.is_some() {
        say_partial!("\r\x1b[2K");
    }
    match outcome {
        Ok(guard) => Ok(guard),
        Err(e) => Err(report_busy(lock, &context, e, args, last_look).await),
    }
}

/// Reports a failed acquisition; when the lock was busy, also says who has it. A wait
/// that ran out while Redis did not answer is reported as unreachable.
async fn report_busy(
    lock: &rdlock::Lock,
    context: &str,
    error: RdLockError,
    args: &Exec,
    last_look: Option<RdLockError>,
) -> u8 {
    if !error.is_timeout() {
        let code = exit::report(context, &error);
        return if code == exit::NOT_OBTAINED {
            say_holder(lock, args).await;
            args.conflict_exit_code
        } else {
            code
        };
    }
    // The wait ran out: busy, or Redis gone? Look once more (bounded).
    let look = tokio::time::timeout(Duration::from_secs(2), lock.holder()).await;
    let unreachable = match look {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.is_connection_error() => Some(e),
        Ok(Err(_)) => last_look,
        Err(_) => last_look.or(Some(RdLockError::TimeoutReached)),
    };
    match unreachable {
        Some(cause) => {
            exit::report(
                &format!("{context}: Redis unreachable while waiting"),
                &cause,
            );
            exit::UNREACHABLE
        }
        None => {
            exit::report(context, &error);
            say_holder(lock, args).await;
            args.conflict_exit_code
        }
    }
}

async fn say_holder(lock: &rdlock::Lock, args: &Exec) {
    if args.quiet {
        return;
    }
    let holder = tokio::time::timeout(Duration::from_secs(1), lock.holder()).await;
    if let Ok(Ok(Some(holder))) = holder {
        say!("rdlock: {} is held by {}", args.id, describe(&holder));
    }
}

fn log(args: &Exec, line: &str) {
    if !args.quiet {
        say!("rdlock: {line}");
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
