//! One cancellation token for shutdown: SIGINT (Ctrl-C) and SIGTERM cancel it.
//!
//! Long-running loops check the token, stop taking new input, then drain and flush.
//! A second signal while draining exits at once with status 130, for a user who does not
//! want to wait.

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Starts a background thread that cancels `token` on the first SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
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
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
                log::warn!("second signal: exiting without waiting for deliveries");
                std::process::exit(130);
            })
        })
        .map_err(Error::Signals)?;
    Ok(())
}
