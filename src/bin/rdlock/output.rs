//! rdlock's own output. Every write ignores errors: a closed pipe (`rdlock ... 2>&1 |
//! head -1`) must never stop rdlock between taking a lock and releasing it, nor keep it
//! from forwarding a signal. (Rust ignores SIGPIPE, so such a write fails with EPIPE
//! instead of killing rdlock; `eprintln!` would panic on it.)

use std::fmt::Arguments;
use std::io::Write;

/// A line on stderr: `say!("rdlock: {x}")`.
macro_rules! say {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), true) };
}

/// Text on stderr without a newline (the terminal's status line).
macro_rules! say_partial {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), false) };
}

/// A line on stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}

pub(crate) use {out, say, say_partial};

pub(crate) fn stderr(args: Arguments<'_>, newline: bool) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    if newline {
        let _ = err.write_all(b"\n");
    }
    let _ = err.flush();
}

pub(crate) fn stdout(args: Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
