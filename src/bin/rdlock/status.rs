//! `rdlock status` and `rdlock release --force`.

use std::io::{BufRead, IsTerminal};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdlock::{HolderInfo, RdLockConnectionManager};

use crate::exit;
use crate::json;
use crate::output::{out, say, say_partial};

pub(crate) async fn status(manager: &RdLockConnectionManager, id: &str, as_json: bool) -> u8 {
    let lock = manager.new_lock(id);
    let (holder, last_fence) = match tokio::try_join!(lock.holder(), lock.last_fencing_token()) {
        Ok(found) => found,
        Err(e) => return exit::report("cannot read the lock", &e),
    };
    if as_json {
        let holder_json = holder
            .as_ref()
            .map_or_else(|| "null".to_owned(), holder_to_json);
        out!(
            "{{\"id\":{},\"key\":{},\"held\":{},\"holder\":{holder_json},\"last_fencing_token\":{last_fence}}}",
            json::string(id),
            json::string(lock.key()),
            holder.is_some(),
        );
    } else {
        match &holder {
            Some(holder) => out!("{id}: held by {}", describe(holder)),
            None => out!("{id}: free"),
        }
        out!("last fencing token: {last_fence}");
    }
    0
}

pub(crate) async fn force_release(
    manager: &RdLockConnectionManager,
    id: &str,
    yes: bool,
    fence: Option<u64>,
) -> u8 {
    let lock = manager.new_lock(id);
    let mut expected = fence;
    if !yes {
        let holder = match lock.holder().await {
            Ok(holder) => holder,
            Err(e) => return exit::report("cannot read the lock", &e),
        };
        let Some(holder) = holder else {
            out!("{id}: not held");
            return 0;
        };
        if !std::io::stdin().is_terminal() {
            say!("rdlock: refusing to release {id} without --yes (no terminal to confirm on)");
            return exit::USAGE;
        }
        if fence.is_some_and(|f| f != holder.fencing_token) {
            say!(
                "rdlock: not released: {id} is held by {}",
                describe(&holder)
            );
            return 1;
        }
        say_partial!("Delete lock {id}, held by {}? [y/N] ", describe(&holder));
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            say!("rdlock: not released");
            return 1;
        }
        // What was shown is what may be deleted: not whoever took the lock while the
        // question was on the screen.
        expected = Some(holder.fencing_token);
    }
    let released = match expected {
        Some(fence) => lock.force_release_if(fence).await,
        None => lock.force_release().await,
    };
    match released {
        Ok(true) => {
            out!("{id}: released; waiters woken");
            0
        }
        Ok(false) => match (expected, lock.holder().await) {
            (Some(_), Ok(Some(now))) => {
                say!(
                    "rdlock: not released: {id} changed hands, it is now held by {}",
                    describe(&now)
                );
                1
            }
            _ => {
                out!("{id}: not held");
                0
            }
        },
        Err(e) => exit::report("cannot release the lock", &e),
    }
}

/// `pid 123 on host (label), for 12s, lease 18s left, fencing token 7`.
pub(crate) fn describe(holder: &HolderInfo) -> String {
    if holder.pid == 0 {
        return "an unknown owner (the key was not written by rdlock)".to_owned();
    }
    let mut text = format!("pid {} on {}", holder.pid, holder.host);
    if !holder.label.is_empty() {
        text.push_str(&format!(" ({})", holder.label));
    }
    if let Ok(held_for) = SystemTime::now().duration_since(holder.acquired_at) {
        text.push_str(&format!(", for {}", seconds(held_for)));
    }
    if let Some(left) = holder.remaining_lease {
        text.push_str(&format!(", lease {} left", seconds(left)));
    }
    text.push_str(&format!(", fencing token {}", holder.fencing_token));
    text
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn holder_to_json(holder: &HolderInfo) -> String {
    let acquired_ms = holder
        .acquired_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let remaining = holder
        .remaining_lease
        .map_or_else(|| "null".to_owned(), |d| d.as_millis().to_string());
    format!(
        "{{\"host\":{},\"pid\":{},\"label\":{},\"acquired_at_ms\":{acquired_ms},\"fencing_token\":{},\"remaining_lease_ms\":{remaining}}}",
        json::string(&holder.host),
        holder.pid,
        json::string(&holder.label),
        holder.fencing_token,
    )
}
