//! The `fleetpulse` binary: parses the command line and hands over to the library.

// The pipeline keeps a few small allocations per tracked device and frees bursts of records;
// mimalloc keeps both compact (glibc's arenas hold on to freed bursts per thread).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fleetpulse::cli::main()
}
