//! A real browser for tests: Debian's chromium, headless, driven through
//! chromedriver's WebDriver HTTP API by a small blocking client (HTTP/1.0
//! over a loopback socket, JSON bodies). `scripts/install-tools` installs
//! both packages.
//!
//! chromedriver runs as the init process of a PID namespace of its own
//! (`unshare --pid --fork --kill-child`), started through `setpriv
//! --pdeathsig KILL` like every test child: when the test binary ends,
//! however it ends, chromedriver dies, and with it every chromium process
//! in the namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use fleetforge_testenv::{OwnedProcess, free_port};
use serde_json::{Value, json};

/// Where chromium and chromedriver are installed (Debian's packages).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless chromium session, closed (and its processes killed) when
/// dropped.
#[derive(Debug)]
pub struct Browser {
    driver: OwnedProcess,
    port: u16,
    session: String,
    /// Keeps the profile directory until the browser is gone.
    _profile: tempfile::TempDir,
}

/// Whether this user may make PID namespaces (root, or unprivileged user
/// namespaces); without, chromedriver still dies with the test and the
/// session's end quits chromium.
fn namespaces_work() -> bool {
    std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--mount-proc", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a window of
    /// `width` x `height`, logging to `log_dir`.
    pub fn start(log_dir: &Path, width: u32, height: u32) -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).is_file(),
                "{binary} is missing: run scripts/install-tools (it installs Debian's chromium and chromium-driver)"
            );
        }
        std::fs::create_dir_all(log_dir).expect("creating the browser log directory");
        let port = free_port().expect("a free port");
        let mut args: Vec<String> = Vec::new();
        let program = if namespaces_work() {
            args.extend(
                [
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    CHROMEDRIVER,
                ]
                .map(String::from),
            );
            PathBuf::from("/usr/bin/unshare")
        } else {
            PathBuf::from(CHROMEDRIVER)
        };
        args.push(format!("--port={port}"));
        args.push("--allowed-ips=127.0.0.1".into());
        let mut driver = OwnedProcess::spawn(
            "chromedriver",
            &program,
            &args,
            &log_dir.join("chromedriver.log"),
        )
        .expect("chromedriver starts");
        driver
            .await_listening(port, Duration::from_secs(20))
            .expect("chromedriver listens");
        let profile = tempfile::tempdir().expect("a profile directory");
        // As root, chromium needs --no-sandbox; with no network out of
        // this machine, everything that phones home is off, or its
        // connections are refused and slow the start.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created = request(port, "POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("creating a chromium session: {e}\n{}", driver.log_tail()));
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_string();
        Self {
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        match request(self.port, method, &path, body) {
            Ok(value) => value["value"].clone(),
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    /// Opens `url` and waits for the page to load.
    pub fn navigate(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the
    /// page and returns what it returns.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Polls `script` (returning a value) every 100 ms until `done`
    /// accepts its value, or panics after `limit` with the last value.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.execute(script, json!([]));
            if done(&value) {
                return value;
            }
            if Instant::now() > deadline {
                panic!("waited {limit:?} for {what}; last saw {value}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page, beyond the window (through chromedriver's
    /// DevTools passthrough: WebDriver itself captures the window only).
    pub fn full_page_screenshot(&self) -> Vec<u8> {
        let size = self.execute(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];",
            json!([]),
        );
        let captured = self.call(
            "POST",
            "/goog/cdp/execute",
            Some(&json!({"cmd": "Page.captureScreenshot", "params": {
                "format": "png", "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            }})),
        );
        base64::engine::general_purpose::STANDARD
            .decode(captured["data"].as_str().expect("a base64 screenshot"))
            .expect("the screenshot is base64")
    }

    /// Presses `keys` (WebDriver key codes, `\u{E004}` for Tab) on the
    /// focused element.
    pub fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [
                    json!({"type": "keyDown", "value": c.to_string()}),
                    json!({"type": "keyUp", "value": c.to_string()}),
                ]
            })
            .collect();
        self.call(
            "POST",
            "/actions",
            Some(&json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// chromedriver's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.driver.log_tail()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Quits chromium; the driver (and its namespace) goes with the
        // OwnedProcess.
        let _ = request(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// One WebDriver request: JSON in, JSON out; an error with the body when
/// the status is not 2xx.
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    // chromedriver speaks HTTP/1.1 only; one request per connection, so
    // the answer ends when the connection closes.
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let (status, body) = read_response(&mut stream)?;
    let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(format!("HTTP {status}: {value}"))
    }
}

/// Reads one HTTP/1.1 answer: chromedriver keeps the connection open
/// whatever the request asks, so the body ends where its length (or its
/// last chunk) says.
fn read_response(stream: &mut TcpStream) -> Result<(u16, String), String> {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16384];
    // Lengths count bytes, so the check works on bytes, not on text.
    let complete = |raw: &[u8]| -> Option<()> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body = &raw[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with(b"0\r\n\r\n").then_some(());
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        (body.len() >= length).then_some(())
    };
    while complete(&raw).is_none() {
        let read = stream.read(&mut buffer).map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&buffer[..read]);
    }
    let response = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {response}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| format!("a bad chunk in {rest:?}"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("a bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| format!("a chunk shorter than {size}"))?;
        body.push_str(chunk);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// Decodes a PNG and counts its distinct colours: a blank page renders
/// as one or two, a page with a table and badges as hundreds.
pub fn distinct_colours(png_bytes: &[u8]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a PNG's size")];
    let frame = reader.next_frame(&mut pixels).expect("a PNG frame");
    let channels = frame.color_type.samples();
    let pixels = &pixels[..frame.buffer_size()];
    let colours: std::collections::HashSet<&[u8]> = pixels.chunks(channels).collect();
    colours.len()
}

/// Saves a screenshot of the whole page as `dir/name.png` after checking
/// it is not blank (at least `min_colours` distinct colours); returns its
/// path.
pub fn save_screenshot(browser: &Browser, dir: &Path, name: &str, min_colours: usize) -> PathBuf {
    let png = browser.full_page_screenshot();
    std::fs::create_dir_all(dir).expect("creating the screenshot directory");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, &png).expect("writing the screenshot");
    let colours = distinct_colours(&png);
    assert!(
        colours >= min_colours,
        "{} looks blank: {colours} distinct colours (want at least {min_colours})",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, width, height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            let mut data = Vec::new();
            for y in 0..height {
                for x in 0..width {
                    data.extend_from_slice(&pixel(x, y));
                }
            }
            writer.write_image_data(&data).unwrap();
        }
        out
    }

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
        assert!(dechunk("zz\r\n").is_err());
    }

    #[test]
    fn blank_images_have_one_colour() {
        assert_eq!(distinct_colours(&png(40, 30, |_, _| [255, 255, 255])), 1);
        assert_eq!(
            distinct_colours(&png(40, 30, |x, _| if x < 20 {
                [0, 0, 0]
            } else {
                [255, 0, 0]
            })),
            2
        );
        assert_eq!(
            distinct_colours(&png(16, 16, |x, y| [x as u8 * 16, y as u8 * 16, 7])),
            256
        );
    }
}
