//! Headless Chromium for the tests of browser-facing pages: started with a fresh profile and the
//! flags these machines need, driven over the DevTools protocol.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::Running;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Headless Chromium (Debian's, installed by `scripts/test.sh`), driven over the DevTools
/// protocol: the page's live state can be read when it is there, not after a guessed sleep.
pub struct Browser {
    _process: Running,
    _profile: tempfile::TempDir,
    page: Ws,
    next_id: u64,
    /// The page's session on the browser connection, once attached.
    session: Option<String>,
}

impl Browser {
    /// Starts a fresh headless Chromium showing `url`.
    pub async fn open(url: &str) -> Browser {
        let chromium = which("chromium").expect("chromium (scripts/services.sh install chromium)");
        let profile = tempfile::tempdir().unwrap();
        let process = Running(
            std::process::Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1280,800",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Chromium writes the port it chose and its browser endpoint into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        assert!(
            testkit::wait_for(Duration::from_secs(30), || {
                std::fs::read_to_string(&port_file).is_ok_and(|t| t.lines().count() >= 2)
            }),
            "chromium started"
        );
        let active = std::fs::read_to_string(&port_file).unwrap();
        let mut lines = active.lines();
        let (port, path) = (lines.next().unwrap(), lines.next().unwrap());
        let (page, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
        let mut browser = Browser {
            _process: process,
            _profile: profile,
            page,
            next_id: 0,
            session: None,
        };
        let target = browser
            .call("Target.createTarget", serde_json::json!({ "url": url }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                serde_json::json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().map(str::to_string);
        browser
    }

    /// Sends a DevTools command and returns its result.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = serde_json::json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = serde_json::json!(session);
        }
        self.page
            .send(Message::Text(command.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .expect("a DevTools answer")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expression` in the page, as JSON.
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Saves a PNG of the page at `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine as _;
        let r = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// Where `program` is on the PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}
