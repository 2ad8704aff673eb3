//! A process death at a chosen point: the stand-ins count their effects (every write that lands),
//! and the effect numbered `at` is the last one: the caller never hears back, as when an
//! invocation is killed right after a write. The test drops the run (see [`Crash::wait`]) and
//! resumes from what was written.

use std::cell::Cell;
use std::rc::Rc;

#[derive(Clone, Default)]
pub struct Crash {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    effects: Cell<u64>,
    at: Cell<Option<u64>>,
    crashed: Cell<bool>,
}

impl Crash {
    /// Crash right after the `at`-th effect from now (1 = the next one).
    pub fn arm(&self, at: u64) {
        self.inner.at.set(Some(self.inner.effects.get() + at));
        self.inner.crashed.set(false);
    }

    /// No crash to come; the next invocations are a new process (a crashed run must have been
    /// dropped first).
    pub fn disarm(&self) {
        self.inner.at.set(None);
        self.inner.crashed.set(false);
    }

    /// Effects counted so far.
    pub fn effects(&self) -> u64 {
        self.inner.effects.get()
    }

    pub fn crashed(&self) -> bool {
        self.inner.crashed.get()
    }

    /// Called by a stand-in after an effect landed: never returns when this is the crash point
    /// (or the process already crashed).
    pub async fn after_effect(&self) {
        if self.inner.crashed.get() {
            std::future::pending::<()>().await;
        }
        let n = self.inner.effects.get() + 1;
        self.inner.effects.set(n);
        if self.inner.at.get() == Some(n) {
            self.inner.crashed.set(true);
            self.inner.at.set(None);
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once the crash happened (race it against the run, and drop the run).
    pub async fn wait(&self) {
        // A virtual millisecond at a time: a busy loop would keep paused time from advancing.
        while !self.inner.crashed.get() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}
