//! The tasks of one session, owned by it: the tunnel's pumps, the HTTP/2 server's stream
//! handlers and whatever a service spawns for a call. Ending the session aborts them all,
//! so none outlives its build, whatever state its stream is in.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinSet;

/// A handle on a session's task set; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Tasks(Arc<Mutex<Option<JoinSet<()>>>>);

impl Default for Tasks {
    fn default() -> Self {
        Tasks(Arc::new(Mutex::new(Some(JoinSet::new()))))
    }
}

impl Tasks {
    /// Runs `task` as one of the session's tasks; after [`Tasks::end`] it is dropped
    /// unstarted.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = set.as_mut() {
            // Finished tasks stay in the set until joined: reap them as new ones come.
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }

    /// Aborts every task; later spawns are refused.
    pub(crate) fn end(&self) {
        let taken = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut set) = taken {
            set.abort_all();
        }
    }
}

/// The HTTP/2 server runs each stream's handler through this, so handlers are session tasks.
impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.spawn(async move {
            future.await;
        });
    }
}
