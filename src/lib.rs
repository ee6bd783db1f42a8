//! Distributed locks on Redis: RAII guards over watchdog-renewed leases, waiters woken
//! by Redis notifications, and fencing tokens.
//!
//! ```no_run
//! use rdlock::RdLockConnectionManager;
//!
//! # async fn demo() -> Result<(), rdlock::RdLockError> {
//! let manager = RdLockConnectionManager::new("redis://127.0.0.1:6379").await?;
//! let lock = manager.new_lock("nightly-report");
//! let guard = lock.lock().await?; // waits, woken by Redis notifications
//! run_report(guard.fencing_token()).await; // may run far longer than the lease:
//!                                           // a watchdog renews it
//! drop(guard); // watchdog cancelled, lock released asynchronously
//! # Ok(())
//! # }
//! # async fn run_report(_: u64) {}
//! ```
//!
//! # How it works
//!
//! - **A lock is a lease.** [`Lock::lock`] stores a random owner token (uuid v4) at
//!   the lock's key with the lease as expiry, in one Lua script that also increments
//!   the lock's fencing counter. While the [`LockGuard`] lives, a watchdog task renews
//!   the lease every `lease / 3` with a script that only touches the key if it still
//!   holds the guard's token. A crashed holder blocks others for at most one lease.
//! - **Waiting is driven by notifications, in line.** A manager's tasks that wait for
//!   one lock queue locally; across managers ("processes"), a failed attempt puts the
//!   process in the lock's queue in Redis, and a release passes the turn to the first
//!   process in line (a short reservation of the key) with one message on the lock's
//!   release channel, which wakes that process only: see [Queue of
//!   processes](#queue-of-processes). Every manager has one subscriber connection,
//!   shared by all its waiters. When the server has keyspace notifications on, an
//!   expiring key wakes waiters too. Every wait is also bounded by the holder's
//!   remaining lease, so a lost message costs at most that.
//! - **Loss is reported.** If the key is deleted, taken over, or renewals fail until
//!   the local lease deadline (measured from before the acquire was sent, minus a
//!   drift margin of 1 % + 2 ms, on the monotonic clock and on the wall clock, so
//!   that a suspended machine notices on waking), [`LockGuard::is_held`] turns
//!   `false` and [`LockGuard::lost`] completes. Hand [`LockGuard::fencing_token`] (in
//!   [`Lock::run_with`], [`RunContext::fencing_token`]) to the systems you write to,
//!   so that they can reject a holder whose lease ended while it was paused; they
//!   must reject tokens equal to the highest they accepted, unless Redis loses no
//!   acknowledged write (see [`LockGuard::fencing_token`]).
//! - **Nothing is left behind.** Dropping a guard cancels its watchdog and releases
//!   the key on the current runtime without blocking; dropping a `lock()` future at
//!   any point undoes an attempt that may have reached Redis, by its token; dropping
//!   `release()` or `run` while the release is in flight completes it in the
//!   background. [`RdLockConnectionManager::shutdown`] waits for all of these, and
//!   for attempts in flight, which it undoes.
//!
//! # Held, suspect, lost
//!
//! [`LockGuard::state`] returns a [`LeaseState`]: `Held` (the last renewal confirmed
//! the token), `Suspect` (the last renewal failed or is overdue, or the backend
//! replaced its command connection or saw its topology change since the last
//! confirmation — back to `Held` after a renewal that confirms the token) or `Lost`.
//! [`LockGuard::is_held`] is `true` in both of the first two: use it (or
//! [`LockGuard::lost`]) to decide when to stop, and `state` (or
//! [`LockGuard::suspect`]) to hold back steps that a fencing token cannot protect.
//! [`Lock::with_max_hold`] bounds how long the watchdog renews; the loss it causes has
//! [`LossCause::MaxHold`], and [`Lock::run`] returns [`RdLockError::MaxHoldReached`].
//!
//! # Metrics
//!
//! With the feature `metrics` (off by default), rdlock records through the
//! [`metrics`](https://docs.rs/metrics) facade; install any recorder (Prometheus,
//! OpenTelemetry, StatsD...). The names and labels are a contract:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `rdlock_acquire_wait_seconds` | histogram: each `lock`, `lock_timeout`, `try_lock` call | `outcome` = `acquired` \| `timeout` \| `unavailable` \| `error` \| `cancelled` |
//! | `rdlock_hold_seconds` | histogram: acquisition to release, drop or loss | |
//! | `rdlock_leases_lost_total` | counter, once per lost guard | `cause` = `taken_over` \| `expired` \| `unreachable` \| `max_hold` ([`LossCause::as_str`]) |
//! | `rdlock_renewals_total` | counter: renewals that confirmed the token | |
//! | `rdlock_renewal_failures_total` | counter: renewals that did not (error, timeout, key not ours) | |
//! | `rdlock_renewal_seconds` | histogram: each renewal attempt | |
//! | `rdlock_waiting_tasks` | gauge: `lock` / `lock_timeout` calls in progress | |
//! | `rdlock_held_guards` | gauge: guards whose lease has not ended | |
//! | `rdlock_release_fallbacks_total` | counter: guards dropped without a runtime to release them, or by a runtime shutting down (left to their lease) | |
//!
//! Every metric also has the label `lock` when the [`Lock`] was given a metrics name
//! ([`Lock::with_metrics_name`]); lock ids are never a label (unbounded cardinality).
//! The 1.x [`lock::BasicLock`] is not measured.
//!
//! # Redis keys
//!
//! For a lock id `<id>` (with `%`, `{`, `}` escaped as `%25`, `%7B`, `%7D`):
//!
//! | name | content |
//! |---|---|
//! | `rdlock:{<id>}:lock` | the owner token, expiring with the lease |
//! | `rdlock:{<id>}:fence` | the fencing counter; it never expires and must not be deleted, or tokens start again from 1 (a server that loses its last writes sets it back too: see [`LockGuard::fencing_token`]) |
//! | `rdlock:{<id>}:owner` | who holds the lock ([`HolderInfo`]), with the lock's lease |
//! | `rdlock:{<id>}:queue` | the processes waiting for the lock, oldest first (a list of random manager ids); lives at least as long as the lock |
//! | `rdlock:{<id>}:waiters` | `1` while a waiter with 1.x compatibility waits: set by its failed attempt with the holder's remaining lease, extended by renewals, deleted by a release that frees the key |
//! | `rdlock:{<id>}:release` | the channel of turn messages (`turn <process> <standby>...`, `claimed`) and, when the key is freed for waiters with 1.x compatibility, `released` |
//!
//! While a turn is reserved for a process, the lock key holds `q:<process>` for
//! [`RESERVATION`] (250 ms), with no owner record: [`Lock::holder`] then reports a
//! holder without owner details.
//!
//! All names of a lock share the hash tag `{<id>}`, so the scripts run on Redis Cluster.
//!
//! # Local hand-off
//!
//! Tasks of one manager that wait for the same id queue in a FIFO; each entry carries
//! the waiter's [`Lock`], so what differs between `Lock` values of one id (lease,
//! label, maximum hold, metrics name, 1.x compatibility) is known to the releasing
//! guard. When a guard is released ([`LockGuard::release`] or its drop) and the first
//! queued task can take it, one script checks the guard's token and, in the same atomic
//! step, stores a fresh token for that task with *its* lease, increments the fencing
//! counter and writes its owner record (acquisition time from the client's clock). The
//! task builds its guard from the reply exactly as from an acquire: registration for
//! shutdown, watchdog, [`LeaseState`], metrics and spans. Holder to holder: one round
//! trip instead of two, and no `PUBLISH`.
//!
//! - **Exclusion:** the key goes from one token to the next inside one script, only if
//!   the old token is still there: it is never free in between, never owned by two. The
//!   releasing guard has ended (watchdog stopped, `is_held() == false`) before the
//!   script is sent.
//! - **Validity and fencing:** the recipient's local lease deadline counts from before
//!   the script was sent, and a reply that came after that lease could have ended is
//!   released, not used — as is a hand-off its recipient takes that late (a queued
//!   `lock()` future not polled for a lease: it then acquires afresh); its fencing
//!   token is the next value of the same counter.
//! - **A lost key** (token mismatch) is not handed off: the script writes nothing,
//!   `release` reports [`RdLockError::LockNotAcquired`], the waiter acquires afresh.
//! - **Unknown outcome** (an error reply, or `release()` dropped while the script is in
//!   flight): the giver's token, then the recipient's, are released in the background
//!   (each only if the key holds it), then the waiter acquires afresh.
//! - **Cancel safety:** a recipient cancelled before or while the script is in flight,
//!   or before it took the acquisition, drops it: it is released by its token and the
//!   turn goes to the next waiter. These releases are tasks of the manager:
//!   [`RdLockConnectionManager::shutdown`] waits for them, and an acquisition handed
//!   over while shutdown runs is refused and released the same way.
//! - **Budget:** at most [`HANDOFF_BUDGET`] (8) hand-offs in a row while other
//!   processes are in the lock's queue; then the hand-off script gives the turn to the
//!   first of them and queues this process again at the end (its next task waits for
//!   that turn). With nobody else queued, hand-offs go on without a release; if
//!   waiters with 1.x compatibility marked themselves (the waiters marker) and are not
//!   in line, the key is released for them at the end of a budget, and the next local
//!   task lets them try first.
//! - **Not for** locks with 1.x compatibility (the 1.x key would have to move too),
//!   Redlock (independent masters) or replica sync (the hand-off would need its
//!   `WAIT`): a plain release and a fresh acquire there. [`Lock::try_lock`] never
//!   queues, so it never receives a hand-off; [`lock::BasicLock`] does not queue locally.
//!
//! # Queue of processes
//!
//! Processes (managers) take turns through a list in Redis, so that a release wakes
//! one process and nobody makes an attempt bound to fail; a process that died in line
//! costs the others one [`RESERVATION`], not a lease. The design, the bounds and the
//! argument for its safety (a reservation is not ownership: only the named process's
//! acquire script turns it into a token) are in the `queue` module's source
//! documentation, summed up here:
//!
//! - a failed attempt (not [`Lock::try_lock`]'s) adds its process at the end of the
//!   queue; an acquisition takes it out;
//! - a release with processes in line reserves the key for the first one for 250 ms
//!   and publishes `turn <it> <standbys>`; only that process wakes a task, which takes
//!   the key; its claim publishes `claimed`;
//! - the next (up to 4) processes in line are standbys: the *n*-th checks the key
//!   after *n* × 300 ms unless `claimed` or another turn came first, so a process that
//!   died in line (or hangs) costs about 300 ms each; beyond four dead in a row,
//!   waiters fall back to the holder's remaining lease they last saw;
//! - a process whose last waiter gives up (deadline, cancelled future, shutdown) leaves
//!   the queue and passes on a turn reserved for it;
//! - not on Redlock; waiters with 1.x compatibility queue too, but the release of a
//!   holder with compatibility passes no turn (it wakes every waiter, as
//!   before); `BasicLock`s queue under their manager's id like its `Lock`s;
//! - a subscription outlives its last waiter by a second, so that a process taking
//!   turns with others stays subscribed and its waits need one attempt each (the one
//!   that queues it).
//!
//! # Decisions
//!
//! - Leases are whole milliseconds in [`MIN_LEASE`]`..=`[`MAX_LEASE`].
//! - A key with no expiry at a lock's name (written by something else) is checked again
//!   every second while waiting; a key of another type gives `WRONGTYPE`.
//! - `lock()` keeps waiting while Redis is unreachable or answers "retry later"
//!   (`LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`,
//!   `NOREPLICAS`), retrying with backoff up to 2 s; `try_lock()` reports these as
//!   [`RdLockError::Unreachable`] without retrying; the watchdog retries renewals
//!   through them until the lease's local deadline.
//! - Deadlines are kept: `lock_timeout(d)` returns by `d` (the first attempt is
//!   given at least 100 ms) even while a reply is overdue; `try_lock()` waits for its
//!   one reply at most the command timeout (2 s).
//! - The rdlock 1.x API ([`RdLockConnectionManager::new_basic_lock`],
//!   [`lock::BasicLock`], [`errors::RdLockError`]) is kept.
//! - Rolling upgrades from 1.x: [`Lock::with_v1_compat`] also takes the 1.x key
//!   `/rdlock/<id>/.lock` in the same script, so 1.x and 2.x processes exclude each
//!   other; [`lock::BasicLock`] does so by default on one server
//!   ([`BasicLock::without_v1_compat`](lock::BasicLock::without_v1_compat) turns it
//!   off). [`Lock::force_release`] of such a lock deletes the 1.x key too (the
//!   administrator's intent: the lock is free afterwards). On a cluster it is refused
//!   ([`RdLockError::V1CompatUnsupported`]).
//! - Tasks of one manager waiting for the same lock queue locally in arrival order;
//!   only the head contends in Redis, and a release hands the key straight to the next
//!   queued task (see [`Lock`] and "Local hand-off" below).
//! - A command that times out retires the manager's command connection (redis-rs
//!   reconnects on I/O errors only): after requests were lost without the connection
//!   closing, replies could otherwise answer the wrong request. The scripts that act
//!   for an owner echo its token, and a reply with the wrong echo is treated the same
//!   way, so it can never pass for a grant, a renewal or a release.
//! - Every command waits at most the manager's response timeout for its reply (2 s
//!   by default; [`ManagerBuilder::response_timeout`] for slow links). A timeout set
//!   there is checked against each lock's lease: a renewal, sent at `lease / 3`, must be
//!   able to wait one timeout before the lease's local deadline, or the acquire
//!   methods return [`RdLockError::InvalidLease`]. The default is not checked, so every
//!   lease from [`MIN_LEASE`] works as in 2.0. Options go on the builder, never on new
//!   constructor variants: the backends to come take the same builder.
//! - Pub/sub loses what is published while a channel is not subscribed. Whenever a
//!   lock's subscription becomes confirmed (the subscriber's first connection, every
//!   reconnect, a new subscription acknowledged), the lock's waiters retry once; a
//!   waiter's wake-up future exists before each attempt, so a release is either
//!   delivered or followed by such a retry. The subscriber sends many channels per
//!   `SUBSCRIBE`/`UNSUBSCRIBE`, pipelined, so bursts of new locks cost a few round trips.
//! - Fence counters are permanent keys, one per id ever locked (about 75 bytes each on
//!   Redis 7.0 for short ids): prefer stable lock ids to one id per job.
//! - The acquire script stores an owner record ([`HolderInfo`]), with the acquisition
//!   time by the client's clock; it needs Redis 6.2 or later (tested on 7.0).
//! - A release publishes its wake-up message only when someone waits: a failed acquire
//!   attempt sets the marker `rdlock:{<id>}:waiters` with the holder's remaining lease
//!   (renewals and local hand-offs extend it with the lease), and the release script
//!   deletes lock, owner record and marker in one `DEL`, publishing only if the marker
//!   was there. No wake-up is lost for it: a waiter waits only after a failed attempt,
//!   which wrote the marker atomically with seeing the lock held, and every later
//!   failed attempt re-arms it; the marker lives at least as long as the lease it
//!   announces waiters for, and only a release deletes it (and publishes). That
//!   message wakes every waiter of the lock in every manager, so each one it does not
//!   let in fails again and re-arms the marker (a waiter left asleep would not, and
//!   would wait out the PTTL it saw). An uncontended cycle is two
//!   scripts running five commands (`SET NX`, `INCR`, `SET`; `GET`, `DEL`).
//!
//! # Redis Cluster
//!
//! [`RdLockConnectionManager::cluster`] (or [`ManagerBuilder::cluster`]) connects to a
//! Redis Cluster through any of the seed nodes given; everything else — [`Lock`],
//! [`LockGuard`], `run`, `holder`, `force_release`, `shutdown`, fencing, `BasicLock` —
//! is the same code as on one server (one wait loop, one watchdog, one notifier).
//!
//! - **Commands.** Each lock's keys share one hash tag, so each script runs on the
//!   master of one slot, through redis-rs's cluster client, configured with the
//!   manager's response timeout (per request, redirections included), 3 retries and
//!   20-200 ms waits between them; rdlock's own deadlines bound the rest. A command
//!   that times out, or a reply without the token's echo, replaces the cluster
//!   connection, rebuilt from every node known (not only the seeds, which may be the
//!   nodes that died). `NOSCRIPT` on a new or flushed primary is healed by loading the
//!   script on every node. The cluster's passing states (`MOVED`/`ASK` that the
//!   retries did not absorb, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`,
//!   `LOADING`, a node without a connection) count as transient: `lock()` and the
//!   watchdog keep going, `try_lock()` reports [`RdLockError::Unreachable`].
//! - **Wake-ups: classic pub/sub, one subscriber.** The release script's classic
//!   `PUBLISH` is broadcast over the cluster bus to every node, so one plain subscriber
//!   connection to any one node, master or replica, hears every release whatever the
//!   slot: a failover or a slot migration does not touch its subscriptions (measured:
//!   wake-ups 3-30 ms after the release). When its node dies, the subscriber reconnects
//!   to the next node it knows (the seeds and the nodes of `CLUSTER SLOTS`),
//!   resubscribes, and wakes every waiter, as on one server. Sharded pub/sub
//!   (`SSUBSCRIBE`/`SPUBLISH`) was not chosen: it needs one subscriber per master, the
//!   server pushes an unsolicited `sunsubscribe` when a slot migrates or its primary is
//!   demoted (to be redone on the new owner), and redis-rs 1.8.1, measured, took that
//!   push for the reply to another command on the same connection (wrong replies) and
//!   silently dropped the channel. Its gain, no bus fan-out of each release message to
//!   every node, does not matter at lock rates. Connections stay O(1) in the number of
//!   waiters: the cluster client plus one subscriber connection.
//! - **Keyspace events are not used** on a cluster: they are node-local (a subscriber
//!   on one node never sees another node's expiries). A waiter whose holder crashed
//!   wakes when the holder's lease runs out, as on a server without them.
//!   [`RdLockConnectionManager::keyspace_events`] is `false`.
//! - **Failovers and held locks.** Replication is asynchronous. A `CLUSTER FAILOVER`
//!   (graceful) and a slot migration keep held locks: renewals reach the new owner
//!   (tested). When a master dies, renewals fail until a replica is promoted (about
//!   the node timeout plus a second); a guard whose lease ends first reports the loss
//!   by its local deadline. A master that *hangs* (paused, partitioned, connections
//!   open) is worse for liveness: redis-rs learns topology from `MOVED` replies and
//!   errors, never from timeouts, so commands for its slots time out until rdlock
//!   rebuilds the cluster connection. A command that times out, or that its caller's
//!   deadline cuts short after 250 ms, starts that rebuild in the background, repeated
//!   until every master of the new slot map answers; until it lands (measured: 2-4 s
//!   after the promotion), commands for those slots fail with
//!   [`RdLockError::Unreachable`]: `lock()` and the watchdog retry, and renewals and
//!   releases (which act only while the key holds the owner's token, so may run
//!   twice) are retried once on the rebuilt connection (measured: a release took 3 s,
//!   its timeout and the rebuild, and succeeded). The promoted replica may lack the master's last writes: a
//!   lock acquired just before the crash may be gone (another client can then take
//!   it while the first still believes it holds it until its next renewal fails), and
//!   the fencing counter may go back, so **fencing tokens can repeat** after a
//!   failover (measured: the last 6-10 tokens handed out before a master was stopped
//!   were handed out again). A fenced resource that rejects tokens *equal to or
//!   below* the largest it accepted stays safe. Redis's `WAIT` narrows the window but
//!   does not close it. A master that hangs and resumes *after* its replica was
//!   promoted still takes itself for the master until gossip tells it otherwise: the
//!   requests that reached it while it hung (a response timeout longer than the hang)
//!   or that come from a client whose slot map still names it are served, and it can
//!   grant a lock that another guard holds on the promoted replica, so two guards
//!   hold at once (reproduced: tests/cluster_review.rs, ignored). Only fencing tokens
//!   protect the resource then.
//!
//! # Redis Sentinel
//!
//! [`RdLockConnectionManager::sentinel`] (or [`ManagerBuilder::sentinel`]) takes the
//! sentinels' addresses and the master's service name; everything else is the same
//! code as on one server. redis-rs's own Sentinel client resolves the master once and
//! stays pinned to it (redis-rs#1438): measured, it wrote to a restarted, empty old
//! master for ~10 s after a crash failover, and got `READONLY` for ever after a
//! graceful one — one lock, two holders. rdlock instead:
//!
//! - **resolves on every (re)connect**, asking every sentinel at once and taking the
//!   answer with the highest config epoch (a sentinel that has not heard of the
//!   promotion yet still names the old master), and checks that the node says `ROLE`
//!   master (`INFO replication` where `ROLE` is refused);
//! - **drops the connection at once** and resolves again when a command fails on I/O,
//!   times out or is answered `READONLY`/`MASTERDOWN`, when a sentinel publishes a
//!   failover's start or `+switch-master` (a subscription on every sentinel), and
//!   when a check every second finds the node demoted or another master named; no
//!   master is used while a sentinel reports a failover under way (the old master
//!   takes writes for seconds after the promotion, and loses them). Its command connection never reconnects by itself to the same address;
//!   commands wait for the new master (up to the response timeout each) and `lock()`
//!   waits through the failover;
//! - **moves the subscriber** to the new master when the master moves, which wakes
//!   every waiter (they retry on the new master).
//!
//! Measured on a local group (master + 2 replicas + 3 sentinels, `down-after-milliseconds
//! 1000`; tests/sentinel.rs, Redis 7.0 and Valkey 9.1): after a SIGKILL of the master
//! the same manager acquired on the promoted replica about 1 ms after the test saw the
//! promotion (it had moved on `+switch-master`); after `SENTINEL FAILOVER` too, with
//! waiters from before the failover woken within 25 ms of the release; the old master
//! restarted empty was never written to in the ~10 s until Sentinel demoted it.
//!
//! **What a failover does to held locks and tokens.** Replication is asynchronous: a
//! lock, and its fence increment, acknowledged by a master that crashes right after can
//! be missing on the promoted replica. Another client can then acquire the lock while
//! the first still believes it holds it (until its next renewal finds it gone), and
//! **fencing tokens can repeat**. A graceful failover (`SENTINEL FAILOVER`) waits for
//! the replica to catch up and keeps held locks; a guard whose renewals fail during a
//! crash failover longer than its lease reports the loss by its local deadline.
//! Two server settings narrow the window: `min-replicas-to-write 1` (with
//! `min-replicas-max-lag`) makes the master refuse writes (`NOREPLICAS`, which rdlock
//! waits through like an unreachable server) when no replica is in sync, and **replica
//! sync** ([`ManagerBuilder::replica_sync`], opt-in) releases and retries every
//! acquisition fewer than N replicas acknowledged in time (measured: 0 locks lost in
//! 90 crash failovers right after a synced acquisition; without it, every lock granted
//! while the replicas lagged was lost). Neither closes it — Sentinel may promote a
//! replica that did not ack, and `WAIT` is not durability — so a resource that must
//! never see two holders checks fencing tokens, rejecting tokens equal to or below
//! the largest it accepted.
//!
//! Managed services that forbid `ROLE` are handled by the `INFO replication` fallback;
//! `CONFIG` is never needed (keyspace events are not used behind Sentinel, as the next
//! master may not have them on). The sentinel URLs carry the sentinels' credentials and
//! TLS; the data nodes use [`ManagerBuilder::sentinel_master_params`].
//!
//! # Redlock
//!
//! [`RdLockConnectionManager::redlock`] (or [`ManagerBuilder::redlock`]) locks on N
//! independent masters: a lock is held while a quorum (N/2 + 1) holds its token. The
//! backend runs each acquire, renewal, release and read as a quorum operation — the
//! same script on every node in parallel, each request bounded by the per-node timeout
//! ([`ManagerBuilder::node_timeout`]) — and returns as soon as a quorum has decided;
//! the lock code above it is the same as on one server.
//!
//! - **Acquire:** validity from before the first request, minus 1 % + 2 ms; without a
//!   quorum, undone on every node by token; random back-off (1-100 ms) only after a
//!   split vote; otherwise the waiter waits for release messages or for enough of the
//!   holders' keys to expire.
//! - **Watchdog:** lost at the local deadline without a quorum round, or at once when
//!   no quorum is possible; a node that lost the key gets it back with `SET NX` (never
//!   over another token), unless `force_release` revoked the token there
//!   (`rdlock:{<id>}:revoked`, for the rest of its lease).
//! - **Waiting:** one subscriber per node; a waiter wakes when a quorum of nodes
//!   published the release of the same holder (the release message is the SHA-1 of
//!   its token), at the holders' PTTL, or when a subscriber (re)connects.
//! - **Fencing:** a quorum compare-and-set register: tokens strictly increase as long
//!   as a majority of the nodes keeps its data (fence keys never expire; a node
//!   restarts with its data, or stays down for at least one maximum lease).
//! - **Not promised:** Redlock assumes bounded pauses, delays and clock drift. A
//!   holder paused past its lease, a node clock that jumps, or a majority that restarts
//!   empty while a lock is held can give two holders (the last also repeats fencing
//!   tokens); fencing checked by the resource covers the first two. See the README,
//!   "Redlock".
//!
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![doc(test(attr(deny(warnings), allow(unused))))]

mod backend;
mod config;
pub mod errors;
mod gate;
mod guard;
mod handoff;
mod held;
mod holder;
mod lease;
pub mod lock;
mod manager;
mod meters;
mod names;
mod notifier;
mod queue;
mod run;
mod scripts;
mod watchdog;

pub use config::{ManagerBuilder, DEFAULT_RESPONSE_TIMEOUT, MIN_RESPONSE_TIMEOUT};
pub use errors::RdLockError;
pub use gate::HANDOFF_BUDGET;
pub use guard::LockGuard;
pub use holder::HolderInfo;
pub use lease::{LeaseState, LossCause};
pub use lock::{Lock, DEFAULT_LEASE, MAX_LEASE, MIN_LEASE};
pub use manager::{Footprint, RdLockConnectionManager, SHUTDOWN_TIMEOUT};
pub use queue::RESERVATION;
pub use run::{Run, RunContext};
