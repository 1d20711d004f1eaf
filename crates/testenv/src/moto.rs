//! Starts moto, a third-party AWS emulator, in server mode for provider
//! tests: `moto_server` from the Python virtual environment
//! `scripts/install-tools` builds (`tools/requirements.txt`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::Error;
use crate::process::{OwnedProcess, free_port};
use crate::tools::workspace_root;

/// How long moto may take to import its backends and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Start attempts, for when another process takes the free port first.
const START_ATTEMPTS: u32 = 3;

/// The virtual environment holding moto: `FLEETFORGE_TOOLS_VENV` if set,
/// else `.tools/venv` at the workspace root.
pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETFORGE_TOOLS_VENV") {
        return PathBuf::from(dir);
    }
    workspace_root().join(".tools").join("venv")
}

/// A running moto server on 127.0.0.1, stopped when dropped (and killed
/// with the test binary).
#[derive(Debug)]
pub struct Moto {
    process: OwnedProcess,
    url: String,
    log: PathBuf,
}

impl Moto {
    /// Starts a moto server on a free port and waits until it answers.
    pub fn start() -> Result<Self, Error> {
        let program = venv_dir().join("bin").join("moto_server");
        if !program.is_file() {
            return Err(Error::MissingTool { path: program });
        }
        let mut attempt = 1;
        loop {
            match Self::start_on(&program, free_port()?) {
                Err(Error::Exited { log_tail, .. })
                    if attempt < START_ATTEMPTS
                        && log_tail.to_lowercase().contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_on(program: &std::path::Path, port: u16) -> Result<Self, Error> {
        let root = crate::data_root();
        std::fs::create_dir_all(&root).map_err(|e| Error::io("creating the testenv root", e))?;
        let log = root.join(format!("moto-{}-{port}.log", std::process::id()));
        let args = [
            "-H".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.to_string(),
        ];
        let mut process = OwnedProcess::spawn("moto_server", program, &args, &log)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            process.ensure_running()?;
            match answers(port) {
                Ok(()) => break,
                Err(last) if Instant::now() > deadline => {
                    return Err(Error::NotReady {
                        what: format!("moto_server on port {port}"),
                        waited: READY_TIMEOUT,
                        last,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(Self {
            process,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// The endpoint URL, for example `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's operating-system process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether an HTTP server answers on `port`, or what went wrong.
fn answers(port: u16) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head == b"HTTP/" {
        Ok(())
    } else {
        Err(format!("answered {:?}", String::from_utf8_lossy(&head)))
    }
}
