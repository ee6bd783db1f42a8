//! [`Run`]: a future that holds a lock while it polls the caller's future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::errors::RdLockError;
use crate::guard::LockGuard;

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
                        *this.stage = Stage::Done;
                        return Poll::Ready(Err(RdLockError::LeaseLost));
                    }
                    let Some(fut) = this.fut.as_mut().as_pin_mut() else {
                        return Poll::Ready(Err(RdLockError::LeaseLost));
                    };
                    let output = ready!(fut.poll(cx));
                    this.fut.set(None);
                    // The work is done; a failed release only means the lease expires
                    // by itself.
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
