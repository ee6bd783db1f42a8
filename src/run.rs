//! [`Run`]: a future that holds a lock while it polls the caller's future, and the
//! [`RunContext`] a [`Lock::run_with`](crate::Lock::run_with) job is given.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::errors::RdLockError;
use crate::guard::LockGuard;
use crate::lease::{Lease, LeaseState, LossCause};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future returned by [`Lock::run`](crate::Lock::run) and
/// [`Lock::run_timeout`](crate::Lock::run_timeout).
///
/// It waits for the lock, then polls the caller's future only while the lease is held.
/// It is an ordinary future, not a spawned task: the caller's future may borrow from
/// the caller's stack.
///
/// # Example
///
/// ```no_run
/// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
/// let run: rdlock::Run<'_, _> = lock.run(async { 1 + 1 });
/// assert_eq!(run.await?, 2);
/// # Ok(())
/// # }
/// ```
#[pin_project]
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Run<'a, F: Future> {
    #[pin]
    fut: Option<F>,
    stage: Stage<'a, F::Output>,
}

enum Stage<'a, T> {
    Acquiring(BoxFuture<'a, Result<LockGuard, RdLockError>>),
    Running {
        guard: LockGuard,
        lost: Pin<Box<WaitForCancellationFutureOwned>>,
    },
    Releasing {
        release: BoxFuture<'static, ()>,
        output: Option<T>,
    },
    Done,
}

impl<'a, F: Future> Run<'a, F> {
    pub(crate) fn new(acquire: BoxFuture<'a, Result<LockGuard, RdLockError>>, fut: F) -> Self {
        Self {
            fut: Some(fut),
            stage: Stage::Acquiring(acquire),
        }
    }
}

impl<F: Future> Future for Run<'_, F> {
    type Output = Result<F::Output, RdLockError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.stage {
                Stage::Acquiring(acquire) => match ready!(acquire.as_mut().poll(cx)) {
                    Ok(guard) => {
                        let lost = Box::pin(guard.lease_token().cancelled_owned());
                        *this.stage = Stage::Running { guard, lost };
                    }
                    Err(e) => {
                        *this.stage = Stage::Done;
                        this.fut.set(None);
                        return Poll::Ready(Err(e));
                    }
                },
                Stage::Running { guard, lost } => {
                    // Checked before every poll of the caller's future, so that it never
                    // runs on a lease whose deadline has passed, even when the watchdog
                    // could not run to notice.
                    if lost.as_mut().poll(cx).is_ready() || !guard.is_held() {
                        // Drop the caller's future first: it must stop before anyone
                        // else can take the lock. Dropping the guard then releases it
                        // in the background, in case the loss was only a deadline.
                        this.fut.set(None);
                        let error = match guard.loss_cause() {
                            Some(LossCause::MaxHold) => RdLockError::MaxHoldReached,
                            _ => RdLockError::LeaseLost,
                        };
                        *this.stage = Stage::Done;
                        return Poll::Ready(Err(error));
                    }
                    let Some(fut) = this.fut.as_mut().as_pin_mut() else {
                        return Poll::Ready(Err(RdLockError::LeaseLost));
                    };
                    let output = ready!(fut.poll(cx));
                    this.fut.set(None);
                    // The work is done; a failed release only means the lease expires
                    // by itself. If `Run` is dropped while the release is in flight,
                    // `release()` completes it in the background.
                    let release: BoxFuture<'static, ()> =
                        match std::mem::replace(this.stage, Stage::Done) {
                            Stage::Running { guard, .. } => Box::pin(async move {
                                let _ = guard.release().await;
                            }),
                            _ => Box::pin(async {}),
                        };
                    *this.stage = Stage::Releasing {
                        release,
                        output: Some(output),
                    };
                }
                Stage::Releasing { release, output } => {
                    ready!(release.as_mut().poll(cx));
                    let output = output.take();
                    *this.stage = Stage::Done;
                    return match output {
                        Some(output) => Poll::Ready(Ok(output)),
                        None => Poll::Ready(Err(RdLockError::LeaseLost)),
                    };
                }
                Stage::Done => return Poll::Pending,
            }
        }
    }
}

impl<F: Future> std::fmt::Debug for Run<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match self.stage {
            Stage::Acquiring(_) => "acquiring",
            Stage::Running { .. } => "running",
            Stage::Releasing { .. } => "releasing",
            Stage::Done => "done",
        };
        f.debug_struct("Run")
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

/// What a [`Lock::run_with`](crate::Lock::run_with) job is given: the acquisition's
/// fencing token and views of its lease. Cheap to clone; it does not keep the lock
/// (the [`Run`] future does).
///
/// # Example
///
/// ```no_run
/// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
/// lock.run_with(|ctx: rdlock::RunContext| async move {
///     for batch in 0..100 {
///         if !ctx.is_held() {
///             break; // `run` stops polling the job anyway; spawned work must check
///         }
///         // store.write(ctx.fencing_token(), batch).await
///     }
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RunContext {
    fence: u64,
    state: Arc<Lease>,
}

impl RunContext {
    pub(crate) fn new(fence: u64, state: Arc<Lease>) -> Self {
        Self { fence, state }
    }

    /// The fencing token of this acquisition, as
    /// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// let fence = lock.run_with(|ctx| async move { ctx.fencing_token() }).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// As [`LockGuard::is_held`](crate::LockGuard::is_held); also `false` once the run
    /// has ended (the lock released or being released), so that spawned work that
    /// kept a clone does not go on under a successor.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(ctx: rdlock::RunContext) {
    /// if !ctx.is_held() { return; }
    /// # }
    /// ```
    #[must_use]
    pub fn is_held(&self) -> bool {
        self.state.is_held()
    }

    /// As [`LockGuard::lost`](crate::LockGuard::lost): completes once the lease is
    /// lost, or once the run has ended (the lock released or being released).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(ctx: rdlock::RunContext) {
    /// ctx.lost().await;
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = ()> + '_ {
        self.state.lost()
    }

    /// As [`LockGuard::state`](crate::LockGuard::state): held, suspect or lost (also
    /// lost once the run has ended).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(ctx: rdlock::RunContext) {
    /// if ctx.state() == rdlock::LeaseState::Held {
    ///     // an irreversible step, only while the lease is confirmed
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn state(&self) -> LeaseState {
        self.state.state()
    }

    /// As [`LockGuard::suspect`](crate::LockGuard::suspect): completes once the lease
    /// is suspect or lost, or the run has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(ctx: rdlock::RunContext) {
    /// ctx.suspect().await;
    /// eprintln!("lease suspect");
    /// # }
    /// ```
    pub fn suspect(&self) -> impl Future<Output = ()> + '_ {
        self.state.suspect()
    }

    /// As [`LockGuard::cancellation_token`](crate::LockGuard::cancellation_token): a
    /// token cancelled when the lease is lost or the lock is released (the job ended
    /// or `run` was dropped). Hand it to spawned subtasks so that they stop with the
    /// lock.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(ctx: rdlock::RunContext) {
    /// let stop = ctx.cancellation_token();
    /// tokio::spawn(async move {
    ///     stop.run_until_cancelled(async { /* work */ }).await;
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn cancellation_token(&self) -> CancellationToken {
        self.state.scope().child_token()
    }
}

impl fmt::Debug for RunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunContext")
            .field("fencing_token", &self.fence)
            .field("held", &self.is_held())
            .finish()
    }
}
