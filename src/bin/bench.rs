//! `bench`: the benchmarks of `bench/*.sh` (feature `bench`). See `streamkit::bench`.

fn main() {
    streamkit::bench::main();
}
