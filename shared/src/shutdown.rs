//! Shutdown passed down explicitly: `main` triggers it on SIGTERM/SIGINT, tests trigger it
//! directly, and every loop races its work against [`Shutdown::wait`].

use tokio::sync::watch;

/// The sending side, held by whoever decides to stop.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// The receiving side, cloned into every task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its first receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Starts the shutdown everywhere.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has started (at once if it already has, or if the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Runs `work` until it finishes (`Some`) or shutdown starts (`None`, `work` dropped).
    /// For setup that waits on the broker: lapin waits for an answer as long as the
    /// connection looks open, and a node that went away mid-conversation never sends one.
    pub async fn unless_stopped<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::select! {
            done = work => Some(done),
            () = self.wait() => None,
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
///
/// # Errors
/// The signal handlers could not be installed.
pub async fn os_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    Ok(())
}

/// Returns a shutdown that starts on SIGTERM or SIGINT.
pub fn on_os_signal() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        if let Err(e) = os_signal().await {
            tracing::error!(error = %e, "cannot listen for signals");
        }
        trigger.trigger();
    });
    shutdown
}
