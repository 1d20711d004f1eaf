//! VirtualClusters: the vcluster Helm chart installed as a real release on a
//! host Cluster, the virtual cluster's kubeconfig (vcluster writes it to the
//! Secret `vc-<name>`, key `config`, in its namespace) read back, its server
//! address made reachable from the controller, and published as the
//! connection Secret `<name>-kubeconfig` (key `value`), as Cluster API does.
//! Deleting uninstalls the release and removes the namespace. A virtual
//! cluster with no host Cluster runs on the management cluster, in its own
//! namespace, installed by the controller as itself (which needs the
//! `fleetforge-vcluster-host` role bound in that namespace).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetforge_api::tool_set::ChartSource;
use fleetforge_api::virtual_cluster::{
    VirtualClusterChart, VirtualClusterPhase, VirtualClusterStatus,
};
use fleetforge_api::{Cluster, FIELD_MANAGER, VirtualCluster, annotation, condition, label};
use fleetforge_core::conditions::{self, Desired};
use fleetforge_core::events::{EventType, Recorder};
use fleetforge_core::finalizer;
use fleetforge_runtime::clients::TargetClients;
use fleetforge_runtime::informer::Informer;
use fleetforge_tools::driver::{Driver, HelmDriver, Session, Target};
use fleetforge_tools::helm::{self, OWNER_LABEL, ReleaseRequest};
use fleetforge_tools::values_equal;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

/// The upstream chart installed when `spec.chart` is left out.
pub const DEFAULT_CHART: (&str, &str, &str) = ("https://charts.loft.sh", "vcluster", "0.36.0");

/// Settings of the VirtualCluster controller.
#[derive(Debug, Clone)]
pub struct VirtualClusterOptions {
    /// Where relative chart paths are resolved.
    pub charts_dir: std::path::PathBuf,
    /// A kubeconfig for the management cluster as the controller itself
    /// (see [`fleetforge_tools::target::kubeconfig_of`]), for virtual
    /// clusters hosted there; None refuses them.
    pub management_kubeconfig: Option<String>,
}

struct Context {
    client: Client,
    /// The helm driver, shared with the tools controllers (one cap on
    /// helm processes).
    helm: Arc<HelmDriver>,
    /// Clients into the virtual clusters.
    clients: Arc<TargetClients>,
    recorder: Recorder,
    charts_dir: std::path::PathBuf,
    management_kubeconfig: Option<String>,
}

/// Errors retried as a whole.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl fleetforge_runtime::ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPIError",
        }
    }
}

/// Runs the VirtualCluster controller until the process stops, or says
/// why it cannot start; `objects` is the process's informer of
/// VirtualClusters (its runner runs it).
pub async fn run(
    runtime: &fleetforge_runtime::Runtime,
    client: Client,
    objects: &Informer<VirtualCluster>,
    options: VirtualClusterOptions,
    helm: Arc<HelmDriver>,
    clients: Arc<TargetClients>,
) -> Result<(), String> {
    let context = Arc::new(Context {
        helm,
        clients,
        recorder: Recorder::new(client.clone(), "fleetforge-vcluster"),
        client: client.clone(),
        charts_dir: options.charts_dir.clone(),
        management_kubeconfig: options.management_kubeconfig.clone(),
    });
    let events = objects
        .subscribe()
        .changes_by(fleetforge_core::watch::change_hash, |_: &VirtualCluster| {});
    runtime
        .run(
            "VirtualCluster",
            Controller::for_shared_stream(events, objects.store()),
            context,
            reconcile,
        )
        .await;
    Ok(())
}

/// Where a VirtualCluster stands after one pass.
struct Outcome {
    phase: VirtualClusterPhase,
    ready: Desired,
    synced: Desired,
    host: Option<String>,
    version: Option<String>,
    endpoint: Option<String>,
    requeue: Duration,
}

impl Outcome {
    fn waiting(phase: VirtualClusterPhase, reason: &str, message: String) -> Self {
        Self {
            phase,
            ready: Desired::no(condition::READY, reason, message.clone()),
            synced: Desired::yes(condition::SYNCED, reason, message),
            host: None,
            version: None,
            endpoint: None,
            requeue: Duration::from_secs(3),
        }
    }

    /// The release matches the spec; looked at again at the poll interval.
    fn settled(
        phase: VirtualClusterPhase,
        ready: Desired,
        host: String,
        version: String,
        endpoint: Option<String>,
    ) -> Self {
        Self {
            phase,
            ready,
            synced: Desired::yes(
                condition::SYNCED,
                "Synced",
                "the vcluster release matches the spec",
            ),
            host: Some(host),
            version: Some(version),
            endpoint,
            requeue: fleetforge_runtime::backoff::jittered(Duration::from_secs(60), 0.1),
        }
    }

    fn refused(reason: &str, message: String) -> Self {
        Self {
            phase: VirtualClusterPhase::Failed,
            ready: Desired::no(condition::READY, reason, message.clone()),
            synced: Desired::no(condition::SYNCED, reason, message),
            host: None,
            version: None,
            endpoint: None,
            requeue: Duration::from_secs(60),
        }
    }
}

async fn reconcile(vc: Arc<VirtualCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = vc.namespace().unwrap_or_default();
    let api: Api<VirtualCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    if vc.metadata.deletion_timestamp.is_some() {
        return finalize(&vc, &ctx, &api).await;
    }
    if vc.spec.paused {
        return Ok(Action::await_change());
    }
    finalizer::ensure(&api, &*vc).await?;
    let outcome = sync(&vc, &ctx).await?;
    for (type_, reason, note) in events(&vc, &outcome) {
        ctx.recorder
            .publish(&vc.object_ref(&()), type_, reason, "Reconcile", &note)
            .await;
    }
    let requeue = outcome.requeue;
    write_status(&vc, &api, outcome).await?;
    Ok(Action::requeue(requeue))
}

/// An event when the phase changes.
fn events(vc: &VirtualCluster, outcome: &Outcome) -> Vec<(EventType, &'static str, String)> {
    let before = vc.status.as_ref().and_then(|s| s.phase);
    if before == Some(outcome.phase) {
        return Vec::new();
    }
    match outcome.phase {
        VirtualClusterPhase::Ready => vec![(
            EventType::Normal,
            "Ready",
            format!(
                "{} answers at {}",
                vc.name_any(),
                outcome.endpoint.as_deref().unwrap_or_default()
            ),
        )],
        VirtualClusterPhase::Failed => {
            vec![(EventType::Warning, "Failed", outcome.synced.message.clone())]
        }
        _ => Vec::new(),
    }
}

/// Where a virtual cluster runs.
struct Host {
    /// The host Cluster's name, or `management`.
    name: String,
    /// How helm and the controller reach it.
    session: Arc<dyn Session>,
    /// The management cluster itself: the controller acts there as itself,
    /// inside the VirtualCluster's namespace only (it may not create or
    /// delete namespaces, nor read Secrets elsewhere).
    management: bool,
}

/// The host and a connection to it, or why not yet.
async fn host(vc: &VirtualCluster, ctx: &Context) -> Result<Result<Host, Outcome>, Error> {
    let namespace = vc.namespace().unwrap_or_default();
    let Some(reference) = &vc.spec.host.cluster_ref else {
        let Some(kubeconfig) = &ctx.management_kubeconfig else {
            return Ok(Err(Outcome::refused(
                "HostUnsupported",
                "spec.host: this controller was started without access to its own cluster to give helm; name a Cluster in spec.host.clusterRef".into(),
            )));
        };
        if vc
            .spec
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != namespace)
        {
            return Ok(Err(Outcome::refused(
                "HostUnsupported",
                format!(
                    "spec.namespace: on the management cluster a virtual cluster runs in its own namespace ({namespace}); leave spec.namespace out"
                ),
            )));
        }
        return match session(ctx, "/management", kubeconfig.as_bytes()).await {
            Ok(session) => Ok(Ok(Host {
                name: "management".into(),
                session,
                management: true,
            })),
            Err(message) => Ok(Err(Outcome::waiting(
                VirtualClusterPhase::Pending,
                "HostUnreachable",
                message,
            ))),
        };
    };
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(cluster) = clusters.get_opt(&reference.name).await? else {
        return Ok(Err(Outcome::waiting(
            VirtualClusterPhase::Pending,
            "HostNotFound",
            format!(
                "spec.host.clusterRef: no Cluster {} in namespace {namespace}",
                reference.name
            ),
        )));
    };
    let ready = cluster
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, condition::READY));
    if !ready {
        return Ok(Err(Outcome::waiting(
            VirtualClusterPhase::Pending,
            "HostNotReady",
            format!("waiting for Cluster {} to be Ready", reference.name),
        )));
    }
    let secret = cluster.spec.connection_secret_name(&reference.name);
    let kubeconfig = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&secret)
        .await?
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove("value"));
    let Some(kubeconfig) = kubeconfig else {
        return Ok(Err(Outcome::waiting(
            VirtualClusterPhase::Pending,
            "HostUnreachable",
            format!("waiting for the kubeconfig Secret {secret}"),
        )));
    };
    let key = format!("{namespace}/Cluster/{}", reference.name);
    match session(ctx, &key, &kubeconfig.0).await {
        Ok(session) => Ok(Ok(Host {
            name: reference.name.clone(),
            session,
            management: false,
        })),
        Err(message) => Ok(Err(Outcome::waiting(
            VirtualClusterPhase::Pending,
            "HostUnreachable",
            message,
        ))),
    }
}

/// A helm session with the host whose kubeconfig is `kubeconfig`.
async fn session(ctx: &Context, key: &str, kubeconfig: &[u8]) -> Result<Arc<dyn Session>, String> {
    ctx.helm
        .session(Target {
            key,
            kubeconfig,
            annotations: &BTreeMap::new(),
        })
        .await
}

/// The host's client (the helm driver always has one).
fn host_client(host: &Host) -> Client {
    host.session
        .client()
        .cloned()
        .expect("a helm session has a client")
}

/// The release's namespace: `spec.namespace`, else `vcluster-<name>` on a
/// host Cluster and the VirtualCluster's own on the management cluster.
fn release_namespace(vc: &VirtualCluster, host: &Host) -> String {
    if host.management {
        return vc.namespace().unwrap_or_default();
    }
    vc.spec
        .namespace
        .clone()
        .unwrap_or_else(|| format!("vcluster-{}", vc.name_any()))
}

/// `spec.chart` (or the default upstream chart) as a Helm chart source.
fn chart_source(chart: Option<&VirtualClusterChart>, charts_dir: &std::path::Path) -> ChartSource {
    let (repository, name, version) = match chart {
        Some(c) => (c.repository.as_str(), c.name.as_str(), c.version.as_str()),
        None => DEFAULT_CHART,
    };
    let version = Some(version.to_string());
    if repository.starts_with("http://") || repository.starts_with("https://") {
        ChartSource {
            repository: Some(repository.to_string()),
            name: Some(name.to_string()),
            version,
            ..ChartSource::default()
        }
    } else if repository.starts_with("oci://") {
        ChartSource {
            oci: Some(format!("{}/{name}", repository.trim_end_matches('/'))),
            version,
            ..ChartSource::default()
        }
    } else {
        ChartSource {
            path: Some(charts_dir.join(repository).display().to_string()),
            version,
            ..ChartSource::default()
        }
    }
}

/// The chart values: the control plane's volume claim goes with the
/// vcluster (vcluster's default keeps it, and on the management cluster no
/// namespace deletion takes it), what `sharedTools` needs (the vcluster
/// syncs to the host what the host's tools serve), and `spec.values` over
/// all of it (`retentionPolicy: Retain` there keeps the data).
fn chart_values(vc: &VirtualCluster) -> Value {
    let mut shared = json!({"controlPlane": {"statefulSet": {"persistence": {"volumeClaim": {"retentionPolicy": "Delete"}}}}});
    for tool in &vc.spec.shared_tools {
        let needs = if tool == "cert-manager" {
            json!({"integrations": {"certManager": {"enabled": true}}})
        } else if ["ingress", "contour", "traefik"]
            .iter()
            .any(|i| tool.contains(i))
        {
            json!({"sync": {"toHost": {"ingresses": {"enabled": true}}}})
        } else {
            continue;
        };
        fleetforge_tools::values::merge(&mut shared, &needs);
    }
    let user = vc.spec.values.clone().unwrap_or_else(|| json!({}));
    fleetforge_tools::values::merged([&shared, &user])
}

/// The server a kubeconfig names: `exportKubeConfig.server` when the values
/// set it (how the vcluster is exposed), else what vcluster wrote.
fn declared_server(values: &Value) -> Option<String> {
    values
        .pointer("/exportKubeConfig/server")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The kubeconfig with every cluster's server set to `server`.
fn with_server(kubeconfig: &str, server: Option<&str>) -> Result<(String, String), String> {
    let mut parsed = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| e.to_string())?;
    let mut found = None;
    for named in &mut parsed.clusters {
        if let Some(cluster) = named.cluster.as_mut() {
            if let Some(server) = server {
                cluster.server = Some(server.to_string());
            }
            found = found.or(cluster.server.clone());
        }
    }
    let found = found.ok_or("the kubeconfig names no server")?;
    let text = serde_saphyr::to_string(&parsed).map_err(|e| e.to_string())?;
    Ok((text, found))
}

async fn sync(vc: &VirtualCluster, ctx: &Context) -> Result<Outcome, Error> {
    let name = vc.name_any();
    let namespace = vc.namespace().unwrap_or_default();
    let host = match host(vc, ctx).await? {
        Ok(found) => found,
        Err(outcome) => return Ok(outcome),
    };
    let host_name = host.name.clone();
    let on_host = |mut outcome: Outcome| {
        outcome.host = Some(host_name.clone());
        outcome
    };
    let release_ns = release_namespace(vc, &host);
    let chart = chart_source(vc.spec.chart.as_ref(), &ctx.charts_dir);
    let values = chart_values(vc);
    let owner = format!("{namespace}.{name}");

    let scope = host.management.then_some(release_ns.as_str());
    let releases = match host.session.releases(scope).await {
        Ok(releases) => releases,
        Err(helm::HelmError::Forbidden(message)) if host.management => {
            return Ok(on_host(Outcome::refused(
                "HostForbidden",
                format!(
                    "the controller may not install into namespace {release_ns} of the management cluster ({message}); \
                     bind ClusterRole fleetforge-vcluster-host to it there with a RoleBinding \
                     (deploy/rbac/vcluster-host-binding.yaml)"
                ),
            )));
        }
        Err(e) => {
            return Ok(on_host(Outcome::waiting(
                VirtualClusterPhase::Pending,
                "HostUnreachable",
                e.to_string(),
            )));
        }
    };
    let release = releases.get(&(release_ns.clone(), name.clone()));
    if let Some(other) = release.and_then(|r| r.labels.get(OWNER_LABEL))
        && other != &owner
    {
        return Ok(on_host(Outcome::refused(
            "ReleaseTaken",
            format!("release {release_ns}/{name} on {host_name} belongs to {other}"),
        )));
    }
    let declared_version = chart.version.clone().unwrap_or_default();
    let up_to_date = release.is_some_and(|r| {
        r.status == "deployed"
            && r.chart_version.trim_start_matches('v') == declared_version.trim_start_matches('v')
            && values_equal(&r.values, &values)
    });
    if !up_to_date {
        let labels: BTreeMap<String, String> = [(OWNER_LABEL.to_string(), owner.clone())].into();
        let request = ReleaseRequest {
            name: &name,
            namespace: &release_ns,
            create_namespace: !host.management,
            chart: &chart,
            values: &values,
            labels: &labels,
        };
        if let Err(e) = host.session.upgrade(&request).await {
            let mut outcome = on_host(Outcome::refused("InstallFailed", format!("helm: {e}")));
            outcome.requeue = Duration::from_secs(30);
            return Ok(outcome);
        }
        let verb = if release.is_some() {
            "upgraded"
        } else {
            "installed"
        };
        ctx.recorder
            .publish(
                &vc.object_ref(&()),
                EventType::Normal,
                "Installed",
                "Install",
                &format!(
                    "{verb} the vcluster chart {declared_version} into {release_ns} on {host_name}"
                ),
            )
            .await;
    }

    // Asleep: the control plane is scaled to zero, there is no API to reach.
    if values
        .pointer("/controlPlane/statefulSet/highAvailability/replicas")
        .and_then(Value::as_i64)
        == Some(0)
    {
        return Ok(Outcome::settled(
            VirtualClusterPhase::Sleeping,
            Desired::no(
                condition::READY,
                "Sleeping",
                format!("{name} is asleep: its control plane is scaled to zero"),
            ),
            host_name,
            declared_version,
            None,
        ));
    }

    // vcluster writes its kubeconfig once its API serves.
    let secrets: Api<Secret> = Api::namespaced(host_client(&host), &release_ns);
    let vc_secret = format!("vc-{name}");
    let kubeconfig = match secrets.get_opt(&vc_secret).await {
        Ok(Some(secret)) => secret.data.and_then(|d| {
            d.get("config")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        }),
        Ok(None) => None,
        Err(e) => {
            return Ok(on_host(Outcome::waiting(
                VirtualClusterPhase::Provisioning,
                "HostUnreachable",
                e.to_string(),
            )));
        }
    };
    let Some(kubeconfig) = kubeconfig else {
        let mut outcome = on_host(Outcome::waiting(
            VirtualClusterPhase::Provisioning,
            "WaitingForKubeconfig",
            format!(
                "waiting for the vcluster to write Secret {release_ns}/{vc_secret} on {host_name}"
            ),
        ));
        outcome.version = Some(declared_version);
        return Ok(outcome);
    };
    let (kubeconfig, server) = match with_server(&kubeconfig, declared_server(&values).as_deref()) {
        Ok(found) => found,
        Err(e) => {
            return Ok(on_host(Outcome::refused(
                "KubeconfigUnusable",
                format!("Secret {release_ns}/{vc_secret}: {e}"),
            )));
        }
    };
    let reachable = match ctx.clients.get(kubeconfig.as_bytes()).await {
        Ok(inside) => inside
            .client
            .apiserver_version()
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = reachable {
        let mut outcome = on_host(Outcome::waiting(
            VirtualClusterPhase::Provisioning,
            "Unreachable",
            format!(
                "the virtual cluster's API at {server} does not answer ({e}); if it is exposed \
                 elsewhere, set spec.values.exportKubeConfig.server to an address the controller reaches"
            ),
        ));
        // Starting (or waking) takes seconds: look again soon. A virtual
        // cluster that served and stopped answering is an outage: less often.
        let was_ready =
            vc.status.as_ref().and_then(|s| s.phase) == Some(VirtualClusterPhase::Ready);
        outcome.requeue = Duration::from_secs(if was_ready { 10 } else { 2 });
        return Ok(outcome);
    }
    publish_secret(vc, ctx, &kubeconfig).await?;
    Ok(Outcome::settled(
        VirtualClusterPhase::Ready,
        Desired::yes(
            condition::READY,
            "Available",
            format!("{name} answers at {server}"),
        ),
        host_name,
        declared_version,
        Some(server),
    ))
}

fn connection_secret_name(vc: &VirtualCluster) -> String {
    vc.spec
        .write_connection_secret_to_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| format!("{}-kubeconfig", vc.name_any()))
}

async fn publish_secret(vc: &VirtualCluster, ctx: &Context, kubeconfig: &str) -> Result<(), Error> {
    let namespace = vc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = connection_secret_name(vc);
    let owner = vc.controller_owner_ref(&());
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {label::MANAGED_BY: "fleetforge", label::INSTANCE: vc.name_any()},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "type": "Opaque",
        "stringData": {"value": kubeconfig},
    });
    secrets
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

async fn write_status(
    vc: &VirtualCluster,
    api: &Api<VirtualCluster>,
    outcome: Outcome,
) -> Result<(), Error> {
    let previous = vc.status.clone().unwrap_or_default();
    let generation = vc.metadata.generation;
    let conditions = conditions::merge(
        &previous.conditions,
        &[outcome.ready, outcome.synced],
        generation,
        &conditions::now(),
    );
    let status = VirtualClusterStatus {
        phase: Some(outcome.phase),
        conditions,
        observed_generation: generation,
        host: outcome.host,
        version: outcome.version,
        endpoint: outcome.endpoint,
    };
    fleetforge_runtime::status::apply_if_changed(
        api,
        &vc.name_any(),
        FIELD_MANAGER,
        Some(&previous),
        &status,
    )
    .await?;
    Ok(())
}

/// Deletion: uninstall the release, remove its namespace on the host and
/// the connection Secret, then drop the finalizer.
async fn finalize(
    vc: &VirtualCluster,
    ctx: &Context,
    api: &Api<VirtualCluster>,
) -> Result<Action, Error> {
    if !finalizer::has(vc) {
        return Ok(Action::await_change());
    }
    let name = vc.name_any();
    let force = vc
        .annotations()
        .get(annotation::FORCE_REMOVE)
        .is_some_and(|v| v == "true");
    match host(vc, ctx).await? {
        Ok(host) => {
            let release_ns = release_namespace(vc, &host);
            let uninstalled = host.session.uninstall(&name, &release_ns).await;
            if let Err(e) = uninstalled
                && !force
            {
                ctx.recorder
                    .publish(
                        &vc.object_ref(&()),
                        EventType::Warning,
                        "UninstallFailed",
                        "Delete",
                        &e.to_string(),
                    )
                    .await;
                return Ok(Action::requeue(Duration::from_secs(15)));
            }
            // On a host Cluster the namespace is the vcluster's and goes
            // with it; on the management cluster it is the VirtualCluster's
            // own, so only what vcluster wrote outside the release goes.
            let (removed, outcome) = if host.management {
                let secrets: Api<Secret> = Api::namespaced(host_client(&host), &release_ns);
                let removed = secrets
                    .delete(&format!("vc-{name}"), &DeleteParams::default())
                    .await
                    .map(|_| ());
                (removed, format!("Secret vc-{name}"))
            } else {
                let namespaces: Api<Namespace> = Api::all(host_client(&host));
                let removed = namespaces
                    .delete(&release_ns, &DeleteParams::default())
                    .await
                    .map(|_| ());
                (removed, format!("namespace {release_ns}"))
            };
            match removed {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) if !force => {
                    tracing::warn!(vcluster = %name, "deleting {outcome}: {e}");
                    return Ok(Action::requeue(Duration::from_secs(15)));
                }
                Err(_) => {}
            }
            ctx.recorder
                .publish(
                    &vc.object_ref(&()),
                    EventType::Normal,
                    "Uninstalled",
                    "Delete",
                    &format!("uninstalled {name} and removed {outcome} on {}", host.name),
                )
                .await;
        }
        // A host that is gone (or going) takes the virtual cluster with it;
        // an unreachable one holds the finalizer unless forced.
        Err(outcome) if outcome.synced.reason == "HostUnreachable" && !force => {
            ctx.recorder
                .publish(
                    &vc.object_ref(&()),
                    EventType::Warning,
                    "UninstallBlocked",
                    "Delete",
                    &format!(
                        "{}; annotate with {}=true to remove without uninstalling",
                        outcome.synced.message,
                        annotation::FORCE_REMOVE
                    ),
                )
                .await;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        Err(_) => {}
    }
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &vc.namespace().unwrap_or_default());
    match secrets
        .delete(&connection_secret_name(vc), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    finalizer::remove(api, vc).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_source_follows_the_repository_form() {
        let dir = std::path::Path::new("/repo");
        let default = chart_source(None, dir);
        assert_eq!(
            default.repository.as_deref(),
            Some("https://charts.loft.sh")
        );
        assert_eq!(default.name.as_deref(), Some("vcluster"));
        let oci = chart_source(
            Some(&VirtualClusterChart {
                repository: "oci://ghcr.io/loft-sh/charts/".into(),
                name: "vcluster".into(),
                version: "0.36.0".into(),
            }),
            dir,
        );
        assert_eq!(
            oci.oci.as_deref(),
            Some("oci://ghcr.io/loft-sh/charts/vcluster")
        );
        let local = chart_source(
            Some(&VirtualClusterChart {
                repository: "charts/vcluster".into(),
                name: "vcluster".into(),
                version: "0.1.0".into(),
            }),
            dir,
        );
        assert_eq!(local.path.as_deref(), Some("/repo/charts/vcluster"));
    }

    #[test]
    fn shared_tools_set_the_chart_values_that_use_the_hosts_and_user_values_win() {
        let vc: VirtualCluster = serde_json::from_value(json!({
            "metadata": {"name": "team-a", "namespace": "platform"},
            "spec": {
                "host": {"clusterRef": {"name": "host"}},
                "sharedTools": ["cert-manager", "ingress-nginx", "metrics-server"],
                "values": {"integrations": {"certManager": {"enabled": false}}},
            },
        }))
        .unwrap();
        assert_eq!(
            chart_values(&vc),
            json!({
                "controlPlane": {"statefulSet": {"persistence": {"volumeClaim": {"retentionPolicy": "Delete"}}}},
                "integrations": {"certManager": {"enabled": false}},
                "sync": {"toHost": {"ingresses": {"enabled": true}}},
            })
        );
    }

    #[test]
    fn the_server_is_rewritten_only_when_declared() {
        let kubeconfig = "apiVersion: v1\nkind: Config\nclusters:\n- name: vc\n  cluster:\n    server: https://localhost:8443\ncontexts: []\nusers: []\n";
        let (_, server) = with_server(kubeconfig, None).unwrap();
        assert_eq!(server, "https://localhost:8443");
        let (text, server) = with_server(kubeconfig, Some("https://vc.example.com")).unwrap();
        assert_eq!(server, "https://vc.example.com");
        assert!(text.contains("https://vc.example.com"), "{text}");
        assert_eq!(
            declared_server(&json!({"exportKubeConfig": {"server": "https://vc.example.com"}}))
                .as_deref(),
            Some("https://vc.example.com")
        );
    }
}
