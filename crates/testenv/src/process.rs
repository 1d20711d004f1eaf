//! Child processes that cannot outlive the test binary.
//!
//! Every child is started through `setpriv --pdeathsig KILL`, so the kernel
//! kills it when the thread that forked it exits. Test threads come and go, so
//! all forks happen on one spawner thread that lives as long as the process:
//! when the test binary exits (normally, by panic or by SIGKILL) every child
//! dies with it. Owned handles also kill their child on drop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::sync::mpsc;
use std::thread;

use crate::Error;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

static SPAWNER: LazyLock<mpsc::Sender<SpawnRequest>> = LazyLock::new(|| {
    let (requests, inbox) = mpsc::channel::<SpawnRequest>();
    thread::Builder::new()
        .name("testenv-spawner".into())
        .spawn(move || {
            // The sender is a static and never dropped, so this loop (and the
            // thread the children's death signal is tied to) runs until exit.
            for (mut command, reply) in inbox {
                let _ = reply.send(command.spawn());
            }
        })
        .expect("starting the testenv spawner thread");
    requests
});

/// A running child process, killed when dropped, and killed by the kernel
/// when the test binary ends.
#[derive(Debug)]
pub struct OwnedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl OwnedProcess {
    /// Starts `program` with `args`, its stdout and stderr going to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self, Error> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// Like [`OwnedProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self, Error> {
        let out = File::create(log).map_err(|e| Error::io("creating a process log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("creating a process log", e))?;
        let mut command = Command::new("setpriv");
        command
            .arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let (reply, response) = mpsc::channel();
        SPAWNER
            .send((command, reply))
            .expect("the spawner thread lives for the whole process");
        let child = response
            .recv()
            .expect("the spawner thread always replies")
            .map_err(|source| Error::Spawn {
                name: name.to_string(),
                source,
            })?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The component name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: self.log_tail(),
            }),
            Err(e) => Err(Error::io("checking a child process", e)),
        }
    }

    /// Waits up to `within` for the process to accept connections on
    /// loopback `port`; fails early if it exits, and with its log's tail.
    pub fn await_listening(&mut self, port: u16, within: std::time::Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let connected = std::net::TcpStream::connect_timeout(
                &(Ipv4Addr::LOCALHOST, port).into(),
                std::time::Duration::from_secs(1),
            );
            match connected {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(Error::NotReady {
                        what: format!("{} to listen on 127.0.0.1:{port}", self.name),
                        waited: within,
                        last: format!("{e}; its log ends with:\n{}", self.log_tail()),
                    });
                }
                Err(_) => {}
            }
            self.ensure_running()?;
            thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The last lines the process wrote, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 4096)
    }

    /// Whether the process has exited, and how: `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop (SIGTERM) and waits up to `timeout` for it;
    /// returns its exit status, or `None` if it is still running.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Resident memory of the process in bytes, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").map(|kib| kib * 1024)
}

/// Proportional set size in bytes (pages shared with other processes, like
/// those of the multi-call Kubernetes binary, divided among them), from
/// `/proc/<pid>/smaps_rollup`.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").map(|kib| kib * 1024)
}

fn proc_kib(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The last `max` bytes of a file, lossily decoded.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may
/// take it before ours binds; callers retry start-up on a bind failure.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port", e))
}

/// Process ids whose command line mentions `needle` (from /proc).
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}
