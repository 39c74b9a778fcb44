//! `datagen`: website-visit events for demos, fixtures and load tests. Its flags and
//! their checks are `streamkit::datagen::main`'s; the work is `streamkit::datagen::run`'s.

fn main() -> std::process::ExitCode {
    streamkit::datagen::main()
}
