//! Logging to stderr, never stdout: `name: message`, `name: warning: message`.
//!
//! The filter uses env_logger's syntax; the binary passes `RUST_LOG` in, so this module
//! reads no environment itself.

use std::io::Write;

/// Installs the logger once; later calls do nothing.
pub fn init(program: &'static str, filter: Option<&str>) {
    let _ = env_logger::Builder::new()
        .parse_filters(filter.unwrap_or("info"))
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "{program}: {}", record.args()),
            log::Level::Error => writeln!(buf, "{program}: error: {}", record.args()),
            log::Level::Warn => writeln!(buf, "{program}: warning: {}", record.args()),
            level => writeln!(
                buf,
                "{program}: {} {}: {}",
                level.as_str().to_lowercase(),
                record.target(),
                record.args()
            ),
        })
        .try_init();
}
