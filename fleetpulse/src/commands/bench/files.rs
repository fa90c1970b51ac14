//! `bench pipeline`'s file measurements, side by side: the decode-only rate of an NDJSON file,
//! `fleetpulse pipeline --input FILE --output DIR` as a process of its own, and DuckDB's batch
//! aggregation of the same file.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use schemas::{Codec, InputFormat};

/// Lines of `file` decoded as the source decodes them, on this thread: the file's decode-only
/// rate, the ceiling of a replay.
fn decode_only(file: &Path) -> anyhow::Result<f64> {
    use std::io::BufRead;
    let codec = Codec::builtin();
    let started = Instant::now();
    let mut reader = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let (mut line, mut lines, mut decoded) = (Vec::new(), 0u64, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        lines += 1;
        let value = line.strip_suffix(b"\n").unwrap_or(&line);
        if codec.decode_telemetry_ref(value, InputFormat::Auto).is_ok() {
            decoded += 1;
        }
    }
    tracing::debug!(decoded, "decode only");
    Ok(lines as f64 / started.elapsed().as_secs_f64())
}

/// Seconds of a child process's whole run, start-up included; fails with its stderr.
fn timed(command: &mut std::process::Command) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((seconds, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The file measurements: its decode-only rate, `fleetpulse pipeline --input FILE --output DIR`
/// with one worker (a process of its own, start-up included), and DuckDB's batch aggregation of
/// the same file (`duckdb_aggregate.py`, start-up included), side by side.
pub(super) fn file_replays(scripts: &Path, file: &Path) -> anyhow::Result<()> {
    let lines =
        std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(file)?)).count() as f64;
    let decode = decode_only(file)?;
    println!(
        "decode only, {lines:.0} lines of {}   {decode:>10.0} events/s",
        file.display()
    );
    let out = std::env::temp_dir().join(format!("bench-{}-files", std::process::id()));
    let (seconds, _) = timed(
        std::process::Command::new(std::env::current_exe()?)
            .args(["pipeline", "--workers", "1", "--listen", "127.0.0.1:0"])
            .arg("--input")
            .arg(file)
            .arg("--output")
            .arg(&out),
    )?;
    let _ = std::fs::remove_dir_all(&out);
    let replay = lines / seconds;
    println!(
        "replay to files, 1 worker (whole process) {replay:>10.0} events/s   replay/decode {:.2}",
        replay / decode
    );
    let duckdb = timed(std::process::Command::new(scripts.join("python-env.sh")).arg("bench"))
        .and_then(|(_, python)| {
            timed(
                std::process::Command::new(python.trim())
                    .arg(scripts.join("duckdb_aggregate.py"))
                    .arg(file),
            )
        });
    match duckdb {
        Ok((duck_s, _)) => println!(
            "DuckDB, 1-minute aggregates (whole process) {:>8.0} events/s   fleetpulse/DuckDB {:.2} ({seconds:.2} s / {duck_s:.2} s)",
            lines / duck_s,
            duck_s / seconds,
        ),
        Err(e) => println!("DuckDB: not measured ({e:#})"),
    }
    Ok(())
}
