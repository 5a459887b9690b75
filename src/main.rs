/// jemalloc rather than the system allocator: about 4 % fewer instructions per proxied
/// request (its frees are cheaper); its background thread (the `background_threads`
/// feature) returns what parked idle connections free. See `bench/results.md`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    wxgate::cli::main()
}
