//! Where the command line's log records go: stderr, one record per line, in the form the journal
//! or a terminal reads best. Every subcommand logs through it (set up once, in `main`).
use std::io::Write as _;

/// Logs to stderr, one record per line: `LEVEL target: message`. Under systemd (JOURNAL_STREAM
/// set) each line starts with its syslog priority (`<3>` error ... `<7>` debug), which journald
/// turns into the entry's priority, and carries no timestamp (journald stamps it); elsewhere with
/// a timestamp. Colors only on a terminal. The programs' aya-log records come through the same
/// `log` stream.
pub fn init(level: &str) {
    use env_logger::fmt::WriteStyle;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    builder.write_style(WriteStyle::Auto);
    if journald {
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{} {}: {}", record.level(), record.target(), record.args())
        });
    } else {
        builder.format(|buf, record| {
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "{} {style}{:<5}{style:#} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    builder.init();
}
