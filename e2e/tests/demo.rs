//! `scripts/demo` as a user runs it, on a clean state: the management
//! control plane, the controller and examples/platform come up, and both
//! local clusters become Ready; their kubeconfig Secrets reach them; a node
//! deleted out of band is reported as drift and restored (or only reported
//! under `driftPolicy: Report`); a pool scales; a cluster stopped or deleted
//! out of band is restarted or recreated; deleting a Cluster removes
//! its kwokctl cluster and processes; a developer requests, lists, extends
//! and deletes a dedicated environment with `fleetforge env` (errors one
//! line each, the namespace's quota enforced); a second run is idempotent; and
//! `scripts/demo down` leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleetforge_e2e::browser::Browser;
use fleetforge_e2e::{fleetforge_bin, kubectl, run_ok, workspace_root};
use fleetforge_testenv::{free_port, pids_mentioning, tools};

/// Runs `scripts/demo ARGS` with the controller's metrics on `port` and
/// the fleet view on `ui_port`: (stdout, stderr).
fn demo(home: &Path, port: u16, ui_port: u16, args: &[&str]) -> (String, String) {
    let output = run_ok(
        Command::new(workspace_root().join("scripts/demo"))
            .args(args)
            .env("FLEETFORGE_HOME", home)
            .env("FLEETFORGE_BIN", fleetforge_bin())
            .env("FLEETFORGE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("FLEETFORGE_UI_ADDR", format!("127.0.0.1:{ui_port}"))
            .env("CI", "true"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    eprintln!("{stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

/// `fleetforge plan PATH` against the management cluster: its exit code
/// and what it printed.
fn plan(kubeconfig: &Path, path: &Path) -> (i32, String) {
    let output = Command::new(fleetforge_bin())
        .args(["plan", &path.display().to_string()])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "fleetforge plan: {stderr}");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

fn kubeconfig_from(stdout: &str) -> PathBuf {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("export KUBECONFIG="))
        .unwrap_or_else(|| panic!("no `export KUBECONFIG=` line in:\n{stdout}"))
        .into()
}

/// The columns of the row for `name` in a table as kubectl or the CLI
/// prints it.
fn row_of<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
        .split_whitespace()
        .collect()
}

/// Polls `check` every 500 ms until it returns Some, or panics after
/// `limit` saying what it waited for and what it saw last.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() > deadline => {
                panic!("waited {limit:?} for {what}; last saw: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Stops everything the demo started, even when the test fails half-way
/// (the demo's processes are detached and would outlive the test).
struct DemoDown {
    home: PathBuf,
    port: u16,
}

impl Drop for DemoDown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.home.join("controller.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "the end of controller.log:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = Command::new(workspace_root().join("scripts/demo"))
            .arg("down")
            .env("FLEETFORGE_HOME", &self.home)
            .env("FLEETFORGE_BIN", fleetforge_bin())
            .env(
                "FLEETFORGE_METRICS_ADDR",
                format!("127.0.0.1:{}", self.port),
            )
            .output();
        for pid in pids_mentioning(&self.home.display().to_string()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The kubeconfig in a Cluster's connection Secret.
fn secret_kubeconfig(management: &Path, cluster: &str) -> String {
    kubectl(
        management,
        &[
            "get",
            "secret",
            "-n",
            "platform",
            &format!("{cluster}-kubeconfig"),
            "-o",
            "go-template={{.data.value | base64decode}}",
        ],
    )
}

/// The nodes of `pool`, or None while the cluster does not answer.
fn try_nodes(kubeconfig: &Path, pool: &str) -> Option<Vec<String>> {
    let output = Command::new(tools::binary("kubectl").unwrap())
        .args([
            "get",
            "nodes",
            "-l",
            &format!("fleetforge.dev/node-pool={pool}"),
            "-o",
            "name",
            "--request-timeout=5s",
        ])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(String::from)
            .collect()
    })
}

fn nodes(kubeconfig: &Path, pool: &str) -> Vec<String> {
    let mut names: Vec<String> = kubectl(
        kubeconfig,
        &[
            "get",
            "nodes",
            "-l",
            &format!("fleetforge.dev/node-pool={pool}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    names.sort();
    names
}

fn events(kubeconfig: &Path, cluster: &str, reason: &str) -> String {
    kubectl(
        kubeconfig,
        &[
            "get",
            "events",
            "-n",
            "platform",
            "--field-selector",
            &format!("involvedObject.name={cluster},reason={reason}"),
            "-o",
            "jsonpath={.items[*].message}",
        ],
    )
}

fn condition(kubeconfig: &Path, cluster: &str, kind: &str) -> String {
    kubectl(
        kubeconfig,
        &[
            "get",
            "cluster",
            "-n",
            "platform",
            cluster,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}}"),
        ],
    )
}

#[test]
fn the_demo_runs_the_platform_on_local_clusters() {
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().to_string_lossy().to_string();
    let port = free_port().unwrap();
    let ui_port = free_port().unwrap();
    let _down = DemoDown {
        home: home.path().to_path_buf(),
        port,
    };

    let started = Instant::now();
    let (stdout, stderr) = demo(home.path(), port, ui_port, &[]);
    let management = kubeconfig_from(&stdout);
    eprintln!("demo up took {:?}", started.elapsed());
    // The demo ends with the fleet view's address, and the view, started
    // with it, lists the demo's clusters in a browser, with the phases
    // the API server has.
    let url = format!("http://127.0.0.1:{ui_port}/");
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.contains(&url)),
        "{stderr}"
    );
    let browser = Browser::start(&home.path().join("browser"), 1400, 900);
    browser.navigate(&url);
    let rows = browser.wait_for(
        "the demo's clusters in the fleet view",
        Duration::from_secs(60),
        "return Array.from(document.querySelectorAll('#live table.fleet tbody tr[data-key]')).map(r => r.dataset.key + ' ' + r.querySelector('td.phase').textContent.trim());",
        |v| v.as_array().is_some_and(|rows| rows.len() == 3),
    );
    let phases = kubectl(
        &management,
        &[
            "get",
            "clusters",
            "-A",
            "-o",
            "jsonpath={range .items[*]}Cluster/{.metadata.namespace}/{.metadata.name} {.status.phase}{\"\\n\"}{end}",
        ],
    );
    let mut want: Vec<&str> = phases.lines().collect();
    want.sort();
    assert_eq!(rows, serde_json::json!(want));
    assert!(want.iter().all(|row| row.ends_with(" Ready")), "{want:?}");
    drop(browser);
    assert!(
        management.starts_with(&home_text),
        "{}",
        management.display()
    );

    // Both example clusters are Ready, with real values in every column.
    kubectl(
        &management,
        &[
            "wait",
            "--for=condition=Ready",
            "clusters",
            "--all",
            "-n",
            "platform",
            "--timeout=120s",
        ],
    );
    let table = kubectl(&management, &["get", "clusters", "-n", "platform"]);
    for name in ["dev-1", "staging"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &columns[1..7],
            ["local", "local", "v1.36.3", "Ready", "True", "False"],
            "{table}"
        );
    }

    // The connection Secret reaches the workload cluster.
    let staging = home.path().join("staging.kubeconfig");
    std::fs::write(&staging, secret_kubeconfig(&management, "staging")).unwrap();
    assert_eq!(nodes(&staging, "apps"), ["apps-0", "apps-1", "apps-2"]);
    assert_eq!(nodes(&staging, "system"), ["system-0"]);
    let dev1 = home.path().join("kubeconfigs/platform.dev-1.yaml");
    assert_eq!(nodes(&dev1, "workers"), ["workers-0"], "min 1, no desired");

    // Each cluster's profile is installed: `kubectl get toolinstalls` says
    // so, and the releases are real (the web front end's host is templated
    // from the cluster's name).
    kubectl(
        &management,
        &[
            "wait",
            "--for=condition=Ready",
            "toolinstalls",
            "dev-1-profile",
            "staging-profile",
            "-n",
            "platform",
            "--timeout=120s",
        ],
    );
    let tools = kubectl(&management, &["get", "toolinstalls", "-n", "platform"]);
    for name in ["dev-1-profile", "staging-profile"] {
        let row = tools
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{tools}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&columns[1..6], ["1", "1", "0", "0", "False"], "{tools}");
    }
    let hosts = kubectl(
        &dev1,
        &[
            "get",
            "configmap",
            "web-settings",
            "-n",
            "apps",
            "-o",
            "jsonpath={.data.host}",
        ],
    );
    assert_eq!(hosts, "dev-1.platform.fleetforge.local");

    // The platform repo's rollout of the dev profile stands (nothing to
    // roll: every cluster has the profile as declared), and a plan of the
    // repo against what runs finds nothing to do.
    kubectl(
        &management,
        &[
            "wait",
            "--for=condition=Ready",
            "fleetrollout",
            "dev-profile",
            "-n",
            "platform",
            "--timeout=120s",
        ],
    );
    let (code, printed) = plan(&management, &workspace_root().join("examples/platform"));
    assert_eq!(code, 0, "{printed}");
    assert!(printed.starts_with("No changes"), "{printed}");

    // The platform repo's own environment is Ready, its kubeconfig written
    // next to the clusters', its profile installed.
    let environments = kubectl(&management, &["get", "environments", "-n", "platform"]);
    let row = row_of(&environments, "demo");
    assert_eq!(
        &row[1..4],
        ["dedicated", "platform-team", "Ready"],
        "{environments}"
    );
    let demo_env = home.path().join("kubeconfigs/env.platform.demo.yaml");
    assert_eq!(nodes(&demo_env, "workers"), ["workers-0"]);
    assert_eq!(
        kubectl(
            &demo_env,
            &[
                "get",
                "configmap",
                "web-settings",
                "-n",
                "apps",
                "-o",
                "jsonpath={.data.host}"
            ]
        ),
        "demo.platform.fleetforge.local"
    );

    // Poll every 2 s so drift shows up quickly.
    kubectl(
        &management,
        &[
            "patch",
            "providerconfig",
            "local",
            "--type=merge",
            "-p",
            r#"{"spec":{"pollInterval":"2s"}}"#,
        ],
    );

    // Out-of-band damage: a node deleted is drift, reported and restored.
    kubectl(&staging, &["delete", "node", "apps-1"]);
    wait_for(
        "the deleted node to be restored",
        Duration::from_secs(60),
        || {
            let apps = nodes(&staging, "apps");
            (apps == ["apps-0", "apps-1", "apps-2"])
                .then_some(())
                .ok_or(format!("{apps:?}"))
        },
    );
    let detected = events(&management, "staging", "DriftDetected");
    assert!(
        detected.contains("nodePools[apps].desired: spec 3, actual 2"),
        "{detected}"
    );
    wait_for("DriftCorrected", Duration::from_secs(30), || {
        let corrected = events(&management, "staging", "DriftCorrected");
        (!corrected.is_empty()).then_some(()).ok_or(corrected)
    });

    // driftPolicy Report only reports.
    kubectl(
        &management,
        &[
            "patch",
            "cluster",
            "-n",
            "platform",
            "dev-1",
            "--type=merge",
            "-p",
            r#"{"spec":{"driftPolicy":"Report"}}"#,
        ],
    );
    kubectl(
        &management,
        &[
            "wait",
            "--for=jsonpath={.status.observedGeneration}=2",
            "cluster",
            "-n",
            "platform",
            "dev-1",
            "--timeout=30s",
        ],
    );
    kubectl(&dev1, &["delete", "node", "workers-0"]);
    wait_for("dev-1 Drifted=True", Duration::from_secs(30), || {
        let drifted = condition(&management, "dev-1", "Drifted");
        (drifted == "True").then_some(()).ok_or(drifted)
    });
    let reported = events(&management, "dev-1", "DriftDetected");
    assert!(reported.contains("reported only"), "{reported}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        nodes(&dev1, "workers").is_empty(),
        "Report must not correct"
    );

    // Scaling a pool in the platform repo: `fleetforge plan` says what
    // will happen (exit 2), the controller does exactly that once the repo
    // is applied, and the plan is empty again.
    let repo = home.path().join("platform");
    copy_dir(&workspace_root().join("examples/platform"), &repo);
    edit(
        &repo.join("clusters/staging.yaml"),
        "desired: 3",
        "desired: 5",
    );
    edit(
        &repo.join("clusters/dev-1.yaml"),
        "driftPolicy: Correct",
        "driftPolicy: Report",
    );
    let (code, printed) = plan(&management, &repo);
    assert_eq!(code, 2, "{printed}");
    assert_eq!(
        printed,
        "Cluster platform/staging\n  ~ scale node pool apps to 5 (min 2, max 6)\n\nPlan: 1 changes.\n"
    );
    kubectl(
        &management,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=fleetforge-dev",
            "-R",
            "-f",
            &repo.display().to_string(),
        ],
    );
    wait_for("apps scaled to 5", Duration::from_secs(60), || {
        let apps = nodes(&staging, "apps");
        (apps.len() == 5).then_some(()).ok_or(format!("{apps:?}"))
    });

    // The scale is applied: from now on a difference is drift.
    kubectl(
        &management,
        &[
            "wait",
            "--for=jsonpath={.status.observedGeneration}=2",
            "cluster",
            "-n",
            "platform",
            "staging",
            "--timeout=60s",
        ],
    );

    let (code, printed) = plan(&management, &repo);
    assert_eq!(code, 0, "{printed}");

    // Stopped out of band: Degraded (Ready=False) and restarted.
    let kwokctl = |args: &[&str]| {
        run_ok(
            Command::new(tools::binary("kwokctl").unwrap())
                .args(args)
                .env("KWOK_WORKDIR", home.path().join("clusters"))
                .env("PATH", tools::bin_dir()),
        )
    };
    kwokctl(&["stop", "cluster", "--name", "staging"]);
    wait_for("staging restarted", Duration::from_secs(90), || {
        let correcting = events(&management, "staging", "CorrectingDrift");
        let restarted = correcting.contains("update provider settings state");
        let apps = if restarted {
            try_nodes(&staging, "apps")
        } else {
            None
        };
        (apps.as_ref().map(Vec::len) == Some(5))
            .then_some(())
            .ok_or(format!("CorrectingDrift: {correcting}; apps: {apps:?}"))
    });
    let detected = events(&management, "staging", "DriftDetected");
    assert!(
        detected.contains("state: spec Running, actual"),
        "{detected}"
    );

    // Deleted out of band: recreated, with its pools (and a new address,
    // published in the same Secret).
    let unused = home.path().join("kubeconfig.unused");
    kwokctl(&[
        "delete",
        "cluster",
        "--name",
        "staging",
        &format!("--kubeconfig={}", unused.display()),
    ]);
    wait_for("staging recreated", Duration::from_secs(90), || {
        let missing = events(&management, "staging", "ExternalResourceMissing");
        let apps = if missing.is_empty() {
            None
        } else {
            std::fs::write(&staging, secret_kubeconfig(&management, "staging")).unwrap();
            try_nodes(&staging, "apps")
        };
        (apps.as_ref().map(Vec::len) == Some(5))
            .then_some(())
            .ok_or(format!(
                "ExternalResourceMissing: {missing}; apps: {apps:?}"
            ))
    });

    // A developer's environment, through the CLI: errors are one line;
    // `env request mine --profile dev --ttl 1h` (no host for virtual ones
    // here) becomes a dedicated environment, Ready with the profile and a
    // working kubeconfig; list, extend and delete work; the namespace's
    // quota of Environments is enforced at admission.
    let env = |args: &[&str]| {
        Command::new(fleetforge_bin())
            .arg("env")
            .args(args)
            .args(["-n", "platform"])
            .env("KUBECONFIG", &management)
            .env("FLEETFORGE_HOME", home.path())
            .output()
            .unwrap()
    };
    let refused = |args: &[&str]| {
        let output = env(args);
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        stderr
    };
    assert_eq!(
        refused(&["request", "mine", "--profile", "nope"]),
        "fleetforge env: error: --profile: unknown profile nope (known: dev)\n"
    );
    assert!(
        refused(&["request", "mine", "--ttl", "soon"])
            .starts_with("fleetforge env: error: --ttl: ")
    );
    let started = Instant::now();
    let requested = env(&["request", "mine", "--profile", "dev", "--ttl", "1h"]);
    eprintln!("env request mine took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&requested.stdout);
    let stderr = String::from_utf8_lossy(&requested.stderr);
    assert!(requested.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no Cluster in this namespace hosts virtual environments (label fleetforge.dev/environments=true); requesting a dedicated cluster in ProviderConfig local"),
        "{stderr}"
    );
    assert!(stdout.starts_with("mine is Ready (expires at "), "{stdout}");
    let mine = home.path().join("kubeconfigs/env.platform.mine.yaml");
    assert!(
        stdout.contains(&format!("export KUBECONFIG={}", mine.display())),
        "{stdout}"
    );
    assert_eq!(nodes(&mine, "workers"), ["workers-0"]);
    assert!(
        !kubectl(&mine, &["get", "configmap", "web-settings", "-n", "apps"]).is_empty(),
        "the profile is installed"
    );
    // Its owner is who the API server says the requester is.
    let whoami = kubectl(
        &management,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    let listed = String::from_utf8(env(&["list"]).stdout).unwrap();
    let row = row_of(&listed, "mine");
    assert_eq!(
        (row[1], row[2], row[3]),
        ("dedicated", whoami.as_str(), "Ready"),
        "{listed}"
    );
    assert!(listed.contains("2 vCPU, 8Gi"), "{listed}");
    let extended = String::from_utf8(env(&["extend", "mine", "--ttl", "3h"]).stdout).unwrap();
    assert!(extended.starts_with("mine now expires at "), "{extended}");
    kubectl(
        &management,
        &[
            "patch",
            "resourcequota",
            "environments",
            "-n",
            "platform",
            "--type=merge",
            "-p",
            r#"{"spec":{"hard":{"count/environments.fleetforge.dev":"1"}}}"#,
        ],
    );
    wait_for(
        "the quota to count demo and mine against a limit of 1",
        Duration::from_secs(60),
        || {
            let status = kubectl(
                &management,
                &[
                    "get",
                    "resourcequota",
                    "environments",
                    "-n",
                    "platform",
                    "-o",
                    "jsonpath={.status}",
                ],
            );
            (status.contains(r#""hard":{"count/environments.fleetforge.dev":"1"}"#)
                && status.contains(r#""used":{"count/environments.fleetforge.dev":"2"}"#))
            .then_some(())
            .ok_or(status)
        },
    );
    let over = refused(&["request", "mine-2", "--dedicated"]);
    assert!(over.contains("exceeded quota: environments"), "{over}");
    let deleted = String::from_utf8(env(&["delete", "mine"]).stdout).unwrap();
    assert_eq!(deleted, "mine is gone\n");
    let left = kubectl(
        &management,
        &["get", "clusters", "-n", "platform", "-o", "name"],
    );
    assert!(!left.contains("/mine\n"), "{left}");

    // A second run keeps the same control plane and controller.
    let pid = std::fs::read_to_string(home.path().join("controller.pid")).unwrap();
    assert_eq!(
        kubeconfig_from(&demo(home.path(), port, ui_port, &[]).0),
        management
    );
    assert_eq!(
        std::fs::read_to_string(home.path().join("controller.pid")).unwrap(),
        pid
    );

    // The management API server away for longer than a lease lasts (a
    // laptop suspend): the controller keeps running and reconciling.
    let apiserver: Vec<u32> =
        pids_mentioning(&home.path().join("management").display().to_string())
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                    String::from_utf8_lossy(program).ends_with("kube-apiserver")
                })
            })
            .collect();
    assert!(
        !apiserver.is_empty(),
        "the management kube-apiserver was not found"
    );
    let signal = |name: &str| {
        for pid in &apiserver {
            Command::new("kill")
                .args([name, &pid.to_string()])
                .status()
                .unwrap();
        }
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(20));
    signal("-CONT");
    let controller_pid: u32 = pid.trim().parse().unwrap();
    assert!(
        Path::new(&format!("/proc/{controller_pid}")).exists(),
        "the controller exited while the API server was away; its log:\n{}",
        std::fs::read_to_string(home.path().join("controller.log")).unwrap_or_default()
    );
    // kubectl retries while the API server wakes up; the scale must then
    // be carried out by the controller that lived through the outage.
    wait_for(
        "the API server to answer again",
        Duration::from_secs(60),
        || {
            Command::new(tools::binary("kubectl").unwrap())
                .args(["get", "--raw", "/readyz"])
                .env("KUBECONFIG", &management)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
                .ok_or_else(|| "not ready".to_string())
        },
    );
    kubectl(
        &management,
        &[
            "patch",
            "cluster",
            "-n",
            "platform",
            "staging",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/spec/nodePools/1/desired", "value": 4}]"#,
        ],
    );
    wait_for(
        "the scale after the outage to be carried out",
        Duration::from_secs(90),
        || {
            let apps = nodes(&staging, "apps");
            (apps.len() == 4).then_some(()).ok_or(format!("{apps:?}"))
        },
    );
    let log = std::fs::read_to_string(home.path().join("controller.log")).unwrap_or_default();
    assert!(log.contains("leader election is off"), "{log}");

    // Deleting a Cluster removes its kwokctl cluster and its processes.
    let dev1_dir = home.path().join("clusters/clusters/dev-1");
    assert!(!pids_mentioning(&dev1_dir.display().to_string()).is_empty());
    kubectl(
        &management,
        &[
            "delete",
            "cluster",
            "-n",
            "platform",
            "dev-1",
            "--timeout=60s",
        ],
    );
    assert!(!dev1_dir.exists(), "{} remains", dev1_dir.display());
    assert!(pids_mentioning(&dev1_dir.display().to_string()).is_empty());

    demo(home.path(), port, ui_port, &["down"]);
    wait_for("no process left", Duration::from_secs(20), || {
        let left = pids_mentioning(&home_text);
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    });
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ui_port)).is_err(),
        "the fleet view stopped with the demo"
    );
}
