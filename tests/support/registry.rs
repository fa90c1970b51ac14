//! A `fleetpulse registry` process on a free port, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// The running server.
pub struct RegistryProcess {
    child: Child,
    pub url: String,
}

impl RegistryProcess {
    /// Starts the server; `extra` are more arguments (e.g. `--state-file`).
    pub fn start(extra: &[&str]) -> RegistryProcess {
        let mut child = super::fleetpulse()
            .args(["registry", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fleetpulse registry");
        let stdout = child.stdout.take().expect("stdout");
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on"))
            .expect("the registry says where it listens");
        let url = line.rsplit(' ').next().expect("url").to_string();
        RegistryProcess { child, url }
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
