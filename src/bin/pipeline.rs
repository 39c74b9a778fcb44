//! `pipeline`: the article's streaming job (website-visit → EventLog → website-out) and
//! the seed repository's aggregations, with a dead-letter branch. Its flags and their
//! checks are `streamkit::pipeline::main`'s; the work is `streamkit::pipeline::run`'s.

fn main() -> std::process::ExitCode {
    streamkit::pipeline::main()
}
