//! One cancellation token for shutdown: SIGINT (Ctrl-C) and SIGTERM cancel it.
//!
//! Long-running loops check the token, stop taking new input, then drain and flush.
//! A second signal while draining exits at once with status 130, for a user who does not
//! want to wait.
//!
//! Guarantee: with a `hard_limit`, the process exits at the latest that long after the
//! first signal (status 1, with a line saying so), whatever blocks. The drain itself is
//! bounded more tightly; this is the backstop for a call that ignores its own timeout.

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Starts a background thread that cancels `token` on the first SIGINT or SIGTERM, and
/// exits the process on a second signal or once `hard_limit` has passed since the first.
pub fn cancel_on_signals(
    token: CancellationToken,
    hard_limit: Option<std::time::Duration>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Signals)?;
    // Register the handlers before returning, so no early signal kills the process.
    let (mut sigint, mut sigterm) = runtime
        .block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(Error::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = sigint.recv() => log::info!("SIGINT: stopping; finishing deliveries (Ctrl-C again to quit at once)"),
                    _ = sigterm.recv() => log::info!("SIGTERM: stopping; finishing deliveries"),
                }
                token.cancel();
                let limit = async {
                    match hard_limit {
                        Some(limit) => tokio::time::sleep(limit).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                    _ = limit => {
                        log::error!(
                            "still not stopped {} s after the signal; exiting now (what was not committed is read again on restart)",
                            hard_limit.unwrap_or_default().as_secs()
                        );
                        std::process::exit(1);
                    }
                }
                log::warn!("second signal: exiting without waiting for deliveries");
                std::process::exit(130);
            })
        })
        .map_err(Error::Signals)?;
    Ok(())
}
