//! The fleet view of `fleetforge dev up`: `fleetforge ui` started in the
//! background beside the controller, with the management plane's
//! kubeconfig (so it reads as the demo's admin), logging to `ui.log` in
//! the fleetforge home; `dev down` stops it.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::dev::{http_ok, runs_this_binary, say, signal};

fn pid_file(home: &Path) -> PathBuf {
    home.join("ui.pid")
}

/// The fleet view's log.
pub fn log_file(home: &Path) -> PathBuf {
    home.join("ui.log")
}

/// The fleet view's pid and address, if the one recorded still runs.
fn running(home: &Path) -> Option<(u32, String)> {
    let recorded = std::fs::read_to_string(pid_file(home)).ok()?;
    let mut parts = recorded.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let address = parts.next().unwrap_or_default().to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_ui = cmdline.split(|b| *b == 0).nth(1) == Some(b"ui".as_slice());
    is_ui.then_some((pid, address))
}

/// Starts the fleet view on `addr` unless it already runs there with
/// this build; waits until it answers.
pub fn start(home: &Path, kubeconfig: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    if let Some((pid, address)) = running(home) {
        if runs_this_binary(pid) && address == addr.to_string() {
            say(format!("fleet view runs (pid {pid}, http://{addr}/)"));
            return Ok(());
        }
        say(format!(
            "fleet view (pid {pid}) runs an older build or another address: restarting it"
        ));
        stop(home)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(home))?;
    let exe = std::env::current_exe().context("finding the fleetforge binary")?;
    let mut child = Command::new(exe)
        .arg("ui")
        .arg("--listen")
        .arg(addr.to_string())
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not stop it.
        .process_group(0)
        .spawn()
        .context("starting the fleet view")?;
    let pid = child.id();
    std::fs::write(pid_file(home), format!("{pid} {addr}\n"))?;
    say(format!(
        "starting the fleet view at http://{addr}/ (pid {pid}, log {})",
        log_file(home).display()
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_ok(addr, "/healthz") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the fleet view exited ({status}); see {}",
                log_file(home).display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the fleet view did not answer in 30s; see {}",
                log_file(home).display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the fleet view, if it runs.
pub fn stop(home: &Path) -> anyhow::Result<()> {
    let Some((pid, _)) = running(home) else {
        let _ = std::fs::remove_file(pid_file(home));
        return Ok(());
    };
    say(format!("stopping the fleet view (pid {pid})"));
    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(home).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if running(home).is_some() {
        signal(pid, "KILL");
    }
    std::fs::remove_file(pid_file(home))?;
    Ok(())
}
