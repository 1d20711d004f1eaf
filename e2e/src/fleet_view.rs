//! `fleetforge ui` as a test runs it: the built binary on a free loopback
//! port with a given kubeconfig, stopped when dropped; and plain HTTP
//! requests to it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use fleetforge_testenv::{OwnedProcess, free_port};

use crate::fleetforge_bin;

/// A running fleet view.
#[derive(Debug)]
pub struct FleetView {
    /// The process.
    pub process: OwnedProcess,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl FleetView {
    /// Starts `fleetforge ui` with `kubeconfig` and `args` (say,
    /// `--namespace a`), logging to `log`; returns once it listens.
    pub fn start(kubeconfig: &Path, args: &[&str], log: &Path) -> Self {
        let port = free_port().expect("a free port");
        let mut all = vec![
            "ui".to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let kubeconfig = kubeconfig.display().to_string();
        let mut process = OwnedProcess::spawn_with_env(
            "fleetforge-ui",
            &fleetforge_bin(),
            &all,
            &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
            log,
        )
        .expect("fleetforge ui starts");
        process
            .await_listening(port, Duration::from_secs(30))
            .expect("fleetforge ui listens");
        Self { process, port }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A request (`GET` or a form `POST` when `form` is given) with extra
    /// `headers`: (status, headers and body as text).
    pub fn request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        form: Option<&str>,
    ) -> (u16, String) {
        http(self.port, path, headers, form)
    }
}

/// A plain HTTP/1.0 request to 127.0.0.1:`port`: (status, the whole
/// response as text, headers included).
pub fn http(port: u16, path: &str, headers: &[(&str, &str)], form: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the fleet view listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let method = if form.is_some() { "POST" } else { "GET" };
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(form) = form {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}
