//! The command of `rdlock exec` as a job: a process group of its own, which gets the
//! terminal's foreground when rdlock has it, is signalled as a whole, and is waited for
//! until no process of it is left.
//!
//! rdlock reaps its children itself (`waitpid(-1)`), not through tokio: on Linux it is
//! the command's child subreaper, so that the orphans of the command (a background
//! process whose parent exited) become rdlock's children and are reaped at once. Without
//! that, on a system whose pid 1 does not reap (many containers), their zombies would
//! keep the group "alive" forever.

use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, signal, SigHandler, Signal};
use nix::unistd::{getpgid, getpgrp, getpid, getppid, getsid, setpgid, tcgetpgrp, tcsetpgrp, Pid};

/// How the command's first process (the group leader) ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Exit {
    Code(i32),
    /// By number: a real-time signal has no nix `Signal`.
    Signal(i32),
}

pub(crate) struct Job {
    /// The leader's pid, which is also the group's id.
    pgid: Pid,
    leader: Option<Exit>,
    /// rdlock handed the terminal (its stdin) to the group.
    terminal: bool,
}

/// rdlock's stdin, when it is a terminal whose foreground process group is rdlock's.
fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process; it is only passed to
    // isatty/tcgetpgrp/tcsetpgrp, which fail cleanly on a bad descriptor.
    unsafe { BorrowedFd::borrow_raw(0) }
}

fn in_terminal_foreground() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
        && tcgetpgrp(stdin()).is_ok_and(|fg| fg == getpgrp())
}

impl Job {
    /// Starts `command` in a process group of its own; when rdlock is the terminal's
    /// foreground job, the command's group becomes it (set by the child before `exec`
    /// and by rdlock after `fork`, as shells do, so that neither order loses).
    pub(crate) fn spawn(command: &mut Command) -> std::io::Result<Self> {
        #[cfg(target_os = "linux")]
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let terminal = in_terminal_foreground();
        // rdlock ignores SIGTTOU while its command may have the terminal: taking the
        // terminal back from the background, and rdlock's own log lines, must not stop
        // it. The command starts with the disposition rdlock had.
        let ttou = if terminal {
            // SAFETY: SIG_IGN installs no handler code.
            unsafe { signal(Signal::SIGTTOU, SigHandler::SigIgn) }.ok()
        } else {
            None
        };
        // SAFETY: between fork and exec the closure only makes async-signal-safe system
        // calls (setpgid, getpid, tcsetpgrp, signal); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                if terminal {
                    let _ = tcsetpgrp(stdin(), getpid());
                }
                if let Some(ttou) = ttou {
                    let _ = signal(Signal::SIGTTOU, ttou);
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        // The child may already have exec'd (EACCES): it did this itself then.
        let _ = setpgid(pgid, pgid);
        if terminal {
            let _ = tcsetpgrp(stdin(), pgid);
        }
        Ok(Self {
            pgid,
            leader: None,
            terminal,
        })
    }

    pub(crate) fn leader_exit(&self) -> Option<Exit> {
        self.leader
    }

    /// Sends `signal` to every process of the group.
    pub(crate) fn signal(&self, signal: Signal) {
        let _ = killpg(self.pgid, signal);
    }

    /// `signal` by number: for the real-time signals, which nix's `Signal` lacks.
    pub(crate) fn signal_raw(&self, signal: nix::libc::c_int) {
        // SAFETY: killpg(2) has no memory-safety preconditions.
        let _ = unsafe { nix::libc::killpg(self.pgid.as_raw(), signal) };
    }

    /// Whether any process of the group is left (a zombie of rdlock's counts until it
    /// is reaped; `reap` first).
    pub(crate) fn group_alive(&self) -> bool {
        // EPERM: a process of the group exists that rdlock may not signal.
        !matches!(killpg(self.pgid, None), Err(Errno::ESRCH))
    }

    /// Reaps every child that has exited (the leader, and orphans of the group adopted
    /// as subreaper); returns the signal that stopped the leader, if it stopped.
    pub(crate) fn reap(&mut self) -> Option<Signal> {
        // waitpid(2) itself, not nix's: nix turns the status of a process that a
        // real-time signal ended into EINVAL after reaping it, and the leader's end
        // would be lost (rdlock waiting on forever).
        let mut stopped = None;
        loop {
            let mut status: nix::libc::c_int = 0;
            // SAFETY: `status` is a valid, writable int.
            let pid = unsafe {
                nix::libc::waitpid(-1, &mut status, nix::libc::WNOHANG | nix::libc::WUNTRACED)
            };
            if pid == 0 {
                break; // children left, none changed
            }
            if pid < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                break; // ECHILD: no child left
            }
            if pid != self.pgid.as_raw() {
                continue; // an adopted orphan, reaped; or its stop
            }
            if nix::libc::WIFEXITED(status) {
                self.leader = Some(Exit::Code(nix::libc::WEXITSTATUS(status)));
            } else if nix::libc::WIFSIGNALED(status) {
                self.leader = Some(Exit::Signal(nix::libc::WTERMSIG(status)));
            } else if nix::libc::WIFSTOPPED(status) {
                stopped = Signal::try_from(nix::libc::WSTOPSIG(status)).ok();
            }
        }
        stopped
    }

    /// Whether, on a terminal, a process of the command's tree (in its group) is stopped
    /// while the leader is not: a Ctrl-Z that catches a shell between `vfork` and `exec`
    /// stops only the vfork child, and the shell waits in the kernel for it — a job that
    /// would never be continued. Linux: the tree is walked through
    /// `/proc/<pid>/task/<pid>/children` (a few reads every 50 ms, on a terminal only).
    pub(crate) fn part_stopped(&self) -> bool {
        if !self.terminal || self.leader.is_some() {
            return false;
        }
        let group = self.pgid.as_raw();
        let mut stack = vec![group];
        let mut visited = 0;
        while let Some(pid) = stack.pop() {
            visited += 1;
            if visited > 256 {
                break;
            }
            let path = format!("/proc/{pid}/task/{pid}/children");
            let Ok(children) = std::fs::read_to_string(path) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                match state_and_group(child) {
                    Some(('T', g)) if g == group => return true,
                    Some((_, g)) if g == group => stack.push(child),
                    _ => {}
                }
            }
        }
        false
    }

    /// The leader (or, see `part_stopped`, a process of its tree) stopped. On a
    /// terminal (Ctrl-Z reaches the command's group alone),
    /// rdlock stops its own job too, so that the shell sees the job stopped and takes
    /// the terminal back; when the job is continued, so is the command. Off a terminal,
    /// whoever stopped the command will continue it: nothing to do.
    pub(crate) fn leader_stopped(&mut self) {
        if !self.terminal {
            return;
        }
        if !can_be_continued() {
            // No job-control shell would ever continue rdlock: the kernel discards
            // Ctrl-Z for such a group, so the command goes on too.
            self.signal(Signal::SIGCONT);
            return;
        }
        self.take_terminal_back();
        // SIGSTOP to rdlock's whole group, which is the shell's job (rdlock and the
        // rest of its pipeline), as Ctrl-Z would have stopped it without the handoff.
        let _ = kill(Pid::from_raw(0), Signal::SIGSTOP);
        self.resume();
    }

    /// rdlock got SIGTSTP: the command's group is stopped with it, then rdlock itself
    /// (never its parent's group); continued, rdlock continues the command.
    pub(crate) fn suspend(&mut self) {
        if !can_be_continued() {
            return; // as the kernel does with SIGTSTP for an orphaned process group
        }
        self.signal(Signal::SIGTSTP);
        self.take_terminal_back();
        let _ = kill(getpid(), Signal::SIGSTOP);
        self.resume();
    }

    /// rdlock was continued: the command's group gets the terminal again if rdlock is
    /// back in the foreground, and SIGCONT.
    pub(crate) fn resume(&mut self) {
        if self.terminal && tcgetpgrp(stdin()).is_ok_and(|fg| fg == getpgrp()) {
            let _ = tcsetpgrp(stdin(), self.pgid);
        }
        self.signal(Signal::SIGCONT);
    }

    /// Gives the terminal back to rdlock's group if the command's group still has it
    /// (or had it and is gone); a terminal someone else took since is left alone.
    pub(crate) fn take_terminal_back(&self) {
        if !self.terminal {
            return;
        }
        let Ok(fg) = tcgetpgrp(stdin()) else { return };
        if fg == self.pgid || matches!(killpg(fg, None), Err(Errno::ESRCH)) {
            let _ = tcsetpgrp(stdin(), getpgrp());
        }
    }
}

/// Whether rdlock's process group is not orphaned: some ancestor outside the group, in
/// the same session (a job-control shell), can continue it once it stops. rdlock's own
/// chain of ancestors is looked at (through /proc beyond its parent).
fn can_be_continued() -> bool {
    let group = getpgrp();
    let Ok(session) = getsid(None) else {
        return false;
    };
    let mut parent = getppid();
    for _ in 0..64 {
        if parent.as_raw() <= 1 {
            return false;
        }
        match getpgid(Some(parent)) {
            Ok(g) if g != group => return getsid(Some(parent)).is_ok_and(|s| s == session),
            Ok(_) => match parent_of(parent) {
                Some(p) => parent = p,
                None => return false,
            },
            Err(_) => return false,
        }
    }
    false
}

/// A process's state letter and process group, from `/proc/<pid>/stat`.
fn state_and_group(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .map(Pid::from_raw)
}
