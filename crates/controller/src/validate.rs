//! `fleetforge validate`: checks the YAML of a platform repository before it
//! is applied, offline against the CRDs' schemas and CEL rules, and on
//! request by a server-side dry run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fleetforge_api::{GROUP, VERSION};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::core::cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use kube::discovery::{ApiResource, Scope, pinned_kind};
use kube::{Resource, ResourceExt};
use regex::Regex;
use serde_json::{Map, Value, json};

use crate::manifests::{self, Manifest};

/// The field manager of the dry-run applies.
const FIELD_MANAGER: &str = "fleetforge-validate";
/// Where namespaced objects without a namespace go, as with kubectl.
const DEFAULT_NAMESPACE: &str = "default";
/// A lowercase RFC 1123 subdomain: the names of most kinds, ours included.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A lowercase RFC 1123 label: namespace names.
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Arguments of `fleetforge validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// A YAML file, or a directory whose `*.yaml` and `*.yml` files are read
    /// (recursively).
    pub path: PathBuf,
    /// Also dry-run every document against the cluster of KUBECONFIG (a
    /// server-side dry-run create, or apply when the object exists), which
    /// adds admission and whatever else only the server knows.
    #[arg(long)]
    pub server: bool,
}

/// Something wrong with a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as the API server writes it (`spec.nodePools[0].min`), or
    /// `-` when the problem is not about one field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    fn new(field: &str, message: impl Into<String>) -> Self {
        let field = if field.is_empty() { "-" } else { field };
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Validates `args.path` and prints one line per problem to stdout and a
/// summary to stderr. Ok(true) when nothing is wrong.
pub async fn run(args: ValidateArgs) -> anyhow::Result<bool> {
    let (manifests, load_errors) = manifests::load(&args.path);
    let schemas = Schemas::new()?;
    let mut server = if args.server {
        Some(ServerCheck::connect(&manifests).await?)
    } else {
        None
    };
    // A YAML error goes on to show the lines around it; its first line says it all.
    let mut report: Vec<(&Path, String)> = load_errors
        .iter()
        .map(|e| {
            let message = e.message.lines().next().unwrap_or_default();
            (e.file.as_path(), format!("{}: {message}", e.file.display()))
        })
        .collect();
    for manifest in &manifests {
        let mut problems = schemas.validate_document(manifest);
        if let Some(server) = server.as_mut() {
            // The server often words a problem exactly as the offline check.
            for problem in server.check(manifest).await? {
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
        }
        report.extend(problems.iter().map(|problem| {
            let line = format!("{}: {manifest}: {problem}", manifest.file.display());
            (manifest.file.as_path(), line)
        }));
    }
    // Stable: the documents of a file keep their order.
    report.sort_by(|a, b| a.0.cmp(b.0));
    for (_, line) in &report {
        println!("{line}");
    }
    let files: BTreeSet<&Path> = manifests
        .iter()
        .map(|m| m.file.as_path())
        .chain(load_errors.iter().map(|e| e.file.as_path()))
        .collect();
    eprintln!(
        "validate: {} in {}, {}",
        plural(manifests.len(), "document"),
        plural(files.len(), "file"),
        plural(report.len(), "error")
    );
    Ok(report.is_empty())
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The schemas of the fleetforge kinds, to validate documents without a
/// cluster as the API server would on create.
#[derive(Debug)]
pub struct Schemas {
    kinds: BTreeMap<String, KindSchema>,
    cel: Validator,
}

#[derive(Debug)]
struct KindSchema {
    /// The openAPIV3Schema, with the `apiVersion`, `kind` and `metadata` the
    /// API server adds to every CRD's schema.
    structural: Value,
    /// Its `x-kubernetes-validations`, compiled.
    rules: CompiledSchema,
    namespaced: bool,
}

impl Schemas {
    /// The schemas of [`fleetforge_api::crds`], version
    /// [`fleetforge_api::VERSION`].
    pub fn new() -> anyhow::Result<Self> {
        let mut kinds = BTreeMap::new();
        for crd in fleetforge_api::crds() {
            let schema = crd
                .spec
                .versions
                .iter()
                .find(|v| v.name == VERSION)
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .with_context(|| format!("CRD {} has no {VERSION} schema", crd.name_any()))?;
            let schema = serde_json::to_value(schema)?;
            let mut structural = schema.clone();
            if let Some(properties) = structural["properties"].as_object_mut() {
                properties.insert("apiVersion".into(), json!({"type": "string"}));
                properties.insert("kind".into(), json!({"type": "string"}));
                properties.insert(
                    "metadata".into(),
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            }
            let kind = KindSchema {
                structural,
                rules: compile_schema(&schema),
                namespaced: crd.spec.scope == "Namespaced",
            };
            kinds.insert(crd.spec.names.kind.clone(), kind);
        }
        Ok(Self {
            kinds,
            cel: Validator::new(),
        })
    }

    /// Everything wrong with one document, found without a cluster. Kinds of
    /// other API groups are only checked for `apiVersion`, `kind` and
    /// `metadata.name`.
    pub fn validate_document(&self, manifest: &Manifest) -> Vec<Problem> {
        let Some(object) = manifest.value.as_object() else {
            return vec![Problem::new("-", "not a Kubernetes object (a mapping)")];
        };
        let mut problems = Vec::new();
        for (field, value) in [
            ("apiVersion", manifest.api_version()),
            ("kind", manifest.kind()),
            ("metadata.name", manifest.name()),
        ] {
            if value.is_empty() {
                problems.push(Problem::new(field, "Required value"));
            }
        }
        let (group, version) = manifest
            .api_version()
            .split_once('/')
            .unwrap_or(("", manifest.api_version()));
        if group != GROUP || manifest.kind().is_empty() {
            return problems;
        }
        if version != VERSION {
            problems.push(Problem::new(
                "apiVersion",
                format!(
                    "Unsupported value: {:?}: {GROUP} serves {VERSION}",
                    manifest.api_version()
                ),
            ));
            return problems;
        }
        let Some(kind) = self.kinds.get(manifest.kind()) else {
            let known: Vec<String> = self.kinds.keys().map(|k| format!("{k:?}")).collect();
            problems.push(Problem::new(
                "kind",
                format!(
                    "Unsupported value: {:?}: {GROUP}/{VERSION} kinds are {}",
                    manifest.kind(),
                    known.join(", ")
                ),
            ));
            return problems;
        };
        check_metadata(manifest, kind.namespaced, &mut problems);
        // The API server drops status on create: the status subresource owns it.
        let mut object = object.clone();
        object.remove("status");
        let object = Value::Object(object);
        let structural_before = problems.len();
        check(&kind.structural, &object, "", &mut problems);
        // CEL on ill-typed input reports noise, not the mistake.
        if problems.len() == structural_before {
            self.check_rules(kind, &object, &mut problems);
        }
        problems
    }

    /// Runs the CEL rules. Transition rules (`oldSelf`) are skipped: there is
    /// no old object before the first apply.
    fn check_rules(&self, kind: &KindSchema, object: &Value, problems: &mut Vec<Problem>) {
        let Err(errors) = self.cel.validate_compiled(&kind.rules, object, None) else {
            return;
        };
        for error in errors {
            let message = match error.kind {
                ErrorKind::ValidationFailure => error.message,
                _ => format!("rule {:?} cannot be checked: {}", error.rule, error.message),
            };
            problems.push(Problem::new(&error.field_path, message));
        }
    }
}

fn check_metadata(manifest: &Manifest, namespaced: bool, problems: &mut Vec<Problem>) {
    let name = manifest.name();
    if !name.is_empty() && !is_name(DNS_SUBDOMAIN, 253, name) {
        problems.push(Problem::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
                 character (at most 253)"
            ),
        ));
    }
    if let Some(namespace) = manifest.namespace()
        && namespaced
        && !is_name(DNS_LABEL, 63, namespace)
    {
        problems.push(Problem::new(
            "metadata.namespace",
            format!("Invalid value: {namespace:?}: must be a lowercase RFC 1123 label"),
        ));
    }
    for field in ["labels", "annotations"] {
        let Some(entries) = manifest.value["metadata"]
            .get(field)
            .filter(|v| !v.is_null())
        else {
            continue;
        };
        match entries.as_object() {
            Some(entries) => {
                for (key, value) in entries.iter().filter(|(_, v)| !v.is_string()) {
                    problems.push(Problem::new(
                        &format!("metadata.{field}[{key}]"),
                        format!("Invalid value: {value}: must be a string (quote it)"),
                    ));
                }
            }
            None => problems.push(Problem::new(
                &format!("metadata.{field}"),
                "must be a map of strings",
            )),
        }
    }
}

fn is_name(pattern: &str, max_length: usize, name: &str) -> bool {
    name.len() <= max_length && Regex::new(pattern).is_ok_and(|re| re.is_match(name))
}

/// Checks `value` at `path` against the structural OpenAPI v3 `schema`, as
/// the API server does on create with strict field validation. `format` is
/// not checked.
fn check(schema: &Value, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    // The API server prunes a null that is not nullable; `required` sees it.
    if value.is_null() {
        return;
    }
    let mut problem = |message: String| problems.push(Problem::new(path, message));
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(is_integer(value) || value.is_string()) {
            problem(format!(
                "Invalid value: {}: must be an integer or a string",
                shown(value)
            ));
            return;
        }
    } else if let Some(ty) = schema["type"].as_str() {
        let fits = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => is_integer(value),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !fits {
            problem(format!(
                "Invalid value: {}: must be of type {ty}",
                shown(value)
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        problem(format!(
            "Unsupported value: {value}: supported values: {}",
            allowed.join(", ")
        ));
    }
    match value {
        Value::String(text) => {
            let length = text.chars().count() as f64;
            if let Some(min) = schema["minLength"].as_f64().filter(|min| length < *min) {
                problem(format!(
                    "Invalid value: {value}: must be at least {min} characters long"
                ));
            }
            if let Some(max) = schema["maxLength"].as_f64().filter(|max| length > *max) {
                problem(format!("Too long: must have at most {max} characters"));
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                match Regex::new(pattern) {
                    Ok(re) if re.is_match(text) => {}
                    Ok(_) => problem(format!("Invalid value: {value}: must match '{pattern}'")),
                    Err(e) => problem(format!("the schema's pattern '{pattern}' is invalid: {e}")),
                }
            }
        }
        Value::Number(number) => {
            let number = number.as_f64().unwrap_or_default();
            if let Some(min) = schema["minimum"].as_f64() {
                if flag(schema, "exclusiveMinimum") && number <= min {
                    problem(format!(
                        "Invalid value: {value}: must be greater than {min}"
                    ));
                } else if number < min {
                    problem(format!(
                        "Invalid value: {value}: must be greater than or equal to {min}"
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if flag(schema, "exclusiveMaximum") && number >= max {
                    problem(format!("Invalid value: {value}: must be less than {max}"));
                } else if number > max {
                    problem(format!(
                        "Invalid value: {value}: must be less than or equal to {max}"
                    ));
                }
            }
        }
        Value::Array(items) => check_array(schema, items, path, problems),
        Value::Object(fields) => check_object(schema, fields, path, problems),
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, problems: &mut Vec<Problem>) {
    let count = items.len() as f64;
    if let Some(min) = schema["minItems"].as_f64().filter(|min| count < *min) {
        problems.push(Problem::new(
            path,
            format!("Required value: must have at least {min} items"),
        ));
    }
    if let Some(max) = schema["maxItems"].as_f64().filter(|max| count > *max) {
        problems.push(Problem::new(
            path,
            format!("Too many: {count}: must have at most {max} items"),
        ));
    }
    // The identity of an item of a list-map is its keys; of a set, itself.
    let identity = |item: &Value| -> Value {
        match schema["x-kubernetes-list-map-keys"].as_array() {
            Some(keys) => keys
                .iter()
                .filter_map(Value::as_str)
                .map(|key| (key.to_string(), item[key].clone()))
                .collect::<Map<_, _>>()
                .into(),
            None => item.clone(),
        }
    };
    let unique = matches!(
        schema["x-kubernetes-list-type"].as_str(),
        Some("map" | "set")
    );
    let mut seen = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        if unique {
            let id = identity(item);
            if seen.contains(&id) {
                problems.push(Problem::new(&item_path, format!("Duplicate value: {id}")));
            }
            seen.push(id);
        }
        check(&schema["items"], item, &item_path, problems);
    }
}

fn check_object(
    schema: &Value,
    fields: &Map<String, Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    let empty = Map::new();
    let properties = schema["properties"].as_object().unwrap_or(&empty);
    for required in schema["required"].as_array().into_iter().flatten() {
        let Some(name) = required.as_str() else {
            continue;
        };
        let nullable = properties.get(name).is_some_and(|p| flag(p, "nullable"));
        if fields.get(name).is_none_or(|v| v.is_null() && !nullable) {
            problems.push(Problem::new(&join(path, name), "Required value"));
        }
    }
    let additional = &schema["additionalProperties"];
    for (name, value) in fields {
        if let Some(property) = properties.get(name) {
            check(property, value, &join(path, name), problems);
        } else if additional.is_object() {
            check(additional, value, &format!("{path}[{name}]"), problems);
        } else if !flag(schema, "x-kubernetes-preserve-unknown-fields")
            && *additional != Value::Bool(true)
        {
            let message = match suggestion(name, properties.keys()) {
                Some(known) => format!("unknown field {name:?}, did you mean {known:?}?"),
                None => format!("unknown field {name:?}"),
            };
            problems.push(Problem::new(&join(path, name), message));
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema[name].as_bool() == Some(true)
}

/// JSON has one number type; an integer field takes whole numbers (`3.0`
/// too, as the API server's validator does).
fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.fract() == 0.0)
}

/// A value in a message: scalars as JSON, structures by their type.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "object".to_string(),
        Value::Array(_) => "array".to_string(),
        scalar => scalar.to_string(),
    }
}

/// The known field a misspelt `name` most likely meant.
fn suggestion<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let name = name.to_lowercase();
    known
        .map(|k| (edit_distance(&name, &k.to_lowercase()), k))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Server-side dry runs against one cluster.
struct ServerCheck {
    client: Client,
    /// Discovery per `apiVersion` and kind: the resource and whether it is
    /// namespaced, or why the server does not serve it.
    resources: HashMap<(String, String), Result<(ApiResource, bool), String>>,
    /// Namespaces the documents create: objects in them are dry-run in
    /// `default`, because a dry run does not create the namespace.
    declared_namespaces: BTreeSet<String>,
}

impl ServerCheck {
    async fn connect(manifests: &[Manifest]) -> anyhow::Result<Self> {
        let client = Client::try_default()
            .await
            .context("--server needs a cluster: reading KUBECONFIG")?;
        client
            .apiserver_version()
            .await
            .context("--server needs a cluster: reaching its API server")?;
        let declared_namespaces = manifests
            .iter()
            .filter(|m| m.api_version() == "v1" && m.kind() == "Namespace")
            .map(|m| m.name().to_string())
            .collect();
        Ok(Self {
            client,
            resources: HashMap::new(),
            declared_namespaces,
        })
    }

    /// What the server refuses in `manifest`. Errors other than the API
    /// server's answers (the cluster is unreachable) end the run.
    async fn check(&mut self, manifest: &Manifest) -> anyhow::Result<Vec<Problem>> {
        if manifest.api_version().is_empty()
            || manifest.kind().is_empty()
            || manifest.name().is_empty()
        {
            return Ok(Vec::new());
        }
        let (resource, namespaced) = match self.resource(manifest).await {
            Ok(found) => found,
            Err(message) => return Ok(vec![Problem::new("-", message)]),
        };
        let namespace = namespaced.then(|| manifest.namespace().unwrap_or(DEFAULT_NAMESPACE));
        let mut outcome = self.dry_run(&resource, namespace, &manifest.value).await;
        if let (Err(kube::Error::Api(status)), Some(namespace)) = (&outcome, namespace)
            && status.code == 404
            && status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "namespaces")
            && self.declared_namespaces.contains(namespace)
        {
            let mut object = manifest.value.clone();
            if let Some(metadata) = object["metadata"].as_object_mut() {
                metadata.remove("namespace");
            }
            outcome = self
                .dry_run(&resource, Some(DEFAULT_NAMESPACE), &object)
                .await;
        }
        match outcome {
            Ok(()) => Ok(Vec::new()),
            Err(kube::Error::Api(status)) => {
                let mut causes = status.details.map(|d| d.causes).unwrap_or_default();
                // Said next to the errors that stopped the CEL rules: noise.
                causes.retain(|c| !c.message.contains("validation rules were not checked"));
                if causes.is_empty() {
                    return Ok(vec![Problem::new("-", status.message)]);
                }
                Ok(causes
                    .into_iter()
                    .map(|cause| {
                        let field = cause.field.replace("<nil>", "");
                        Problem::new(&field, cause.message)
                    })
                    .collect())
            }
            Err(e) => Err(e).with_context(|| format!("dry-running {manifest}")),
        }
    }

    async fn resource(&mut self, manifest: &Manifest) -> Result<(ApiResource, bool), String> {
        let key = (
            manifest.api_version().to_string(),
            manifest.kind().to_string(),
        );
        if let Some(found) = self.resources.get(&key) {
            return found.clone();
        }
        let (group, version) = key.0.split_once('/').unwrap_or(("", &key.0));
        let gvk = GroupVersionKind::gvk(group, version, &key.1);
        let found = pinned_kind(&self.client, &gvk)
            .await
            .map(|(resource, capabilities)| (resource, capabilities.scope == Scope::Namespaced))
            .map_err(|e| format!("the server does not serve {} {}: {e}", key.0, key.1));
        self.resources.insert(key, found.clone());
        found
    }

    /// A dry-run create with strict field validation, or a dry-run apply
    /// when the object exists.
    async fn dry_run(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<(), kube::Error> {
        let params = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.to_string()),
        };
        let url = DynamicObject::url_path(resource, namespace);
        let mut request = kube::core::Request::new(url)
            .create(
                &params,
                serde_json::to_vec(object).map_err(kube::Error::SerdeError)?,
            )
            .map_err(kube::Error::BuildRequest)?;
        // PostParams has no fieldValidation; without Strict the server drops
        // unknown fields with a warning nobody sees.
        let uri = format!("{}&fieldValidation=Strict", request.uri());
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => {
                let e = kube::core::request::Error::BuildRequest(e.into());
                return Err(kube::Error::BuildRequest(e));
            }
        }
        match self.client.request::<DynamicObject>(request).await {
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let api: Api<DynamicObject> = match namespace {
                    Some(namespace) => {
                        Api::namespaced_with(self.client.clone(), namespace, resource)
                    }
                    None => Api::all_with(self.client.clone(), resource),
                };
                let params = PatchParams::apply(FIELD_MANAGER)
                    .dry_run()
                    .force()
                    .validation_strict();
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                api.patch(name, &params, &Patch::Apply(object))
                    .await
                    .map(drop)
            }
            outcome => outcome.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(value: Value) -> Manifest {
        Manifest {
            file: PathBuf::from("platform/doc.yaml"),
            index: 0,
            value,
        }
    }

    fn cluster(spec: Value) -> Manifest {
        document(json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "dev-1", "namespace": "team-a"},
            "spec": spec,
        }))
    }

    fn pool(name: &str, min: i32, max: i32) -> Value {
        json!({"name": name, "machineType": "standard-2", "min": min, "max": max})
    }

    fn spec_with_pools(pools: Value) -> Value {
        json!({"providerConfigRef": {"name": "local"}, "version": "1.36", "nodePools": pools})
    }

    fn problems(manifest: &Manifest) -> Vec<String> {
        Schemas::new()
            .unwrap()
            .validate_document(manifest)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn walk(schema: Value, value: Value) -> Vec<String> {
        let mut problems = Vec::new();
        check(&schema, &value, "spec", &mut problems);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_cluster_has_no_problems() {
        let manifest = cluster(spec_with_pools(json!([pool("a", 1, 3), pool("b", 0, 2)])));
        assert_eq!(problems(&manifest), Vec::<String>::new());
    }

    #[test]
    fn a_field_of_the_wrong_type_is_reported_and_skips_the_rules() {
        let mut workers = pool("workers", 5, 3);
        workers["min"] = json!("5");
        let manifest = cluster(spec_with_pools(json!([workers])));
        assert_eq!(
            problems(&manifest),
            [r#"spec.nodePools[0].min: Invalid value: "5": must be of type integer"#]
        );
    }

    #[test]
    fn missing_required_fields_are_reported() {
        let manifest = cluster(spec_with_pools(
            json!([{"name": "workers", "min": 1, "max": 2}]),
        ));
        assert_eq!(
            problems(&manifest),
            ["spec.nodePools[0].machineType: Required value"]
        );
        let mut no_spec = cluster(json!({}));
        no_spec.value.as_object_mut().unwrap().remove("spec");
        assert_eq!(problems(&no_spec), ["spec: Required value"]);
    }

    #[test]
    fn a_value_outside_the_enum_is_reported_with_the_allowed_ones() {
        let mut spec = spec_with_pools(json!([]));
        spec["driftPolicy"] = json!("Fix");
        assert_eq!(
            problems(&cluster(spec)),
            [
                r#"spec.driftPolicy: Unsupported value: "Fix": supported values: "Correct", "Report""#
            ]
        );
    }

    #[test]
    fn a_string_not_matching_the_pattern_is_reported() {
        let mut spec = spec_with_pools(json!([]));
        spec["version"] = json!("1.36.2");
        assert_eq!(
            problems(&cluster(spec)),
            [r#"spec.version: Invalid value: "1.36.2": must match '^[0-9]+\.[0-9]+$'"#]
        );
    }

    #[test]
    fn bounds_of_numbers_strings_and_lists_are_checked() {
        let manifest = cluster(spec_with_pools(json!([pool("", 0, 5000)])));
        assert_eq!(
            problems(&manifest),
            [
                r#"spec.nodePools[0].max: Invalid value: 5000: must be less than or equal to 1000"#,
                r#"spec.nodePools[0].name: Invalid value: "": must be at least 1 characters long"#,
                r#"spec.nodePools[0].name: Invalid value: "": must match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"#,
            ]
        );
        let pools: Vec<Value> = (0..33).map(|i| pool(&format!("p{i}"), 1, 1)).collect();
        assert_eq!(
            problems(&cluster(spec_with_pools(pools.into()))),
            ["spec.nodePools: Too many: 33: must have at most 32 items"]
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_a_suggestion() {
        let spec =
            json!({"providerConfigRef": {"name": "local"}, "nodepools": [], "colour": "red"});
        assert_eq!(
            problems(&cluster(spec)),
            [
                r#"spec.colour: unknown field "colour""#,
                r#"spec.nodepools: unknown field "nodepools", did you mean "nodePools"?"#,
            ]
        );
    }

    #[test]
    fn duplicate_keys_of_a_list_map_are_reported() {
        let manifest = cluster(spec_with_pools(json!([
            pool("workers", 1, 2),
            pool("workers", 1, 3)
        ])));
        assert_eq!(
            problems(&manifest),
            [r#"spec.nodePools[1]: Duplicate value: {"name":"workers"}"#]
        );
    }

    #[test]
    fn cel_rules_of_the_types_are_evaluated() {
        assert_eq!(
            problems(&cluster(spec_with_pools(json!([pool("workers", 5, 3)])))),
            ["spec.nodePools[0].min: min must not be greater than max"]
        );
        let mut workers = pool("workers", 1, 3);
        workers["desired"] = json!(4);
        assert_eq!(
            problems(&cluster(spec_with_pools(json!([workers])))),
            ["spec.nodePools[0].desired: desired must lie between min and max"]
        );
        let config = document(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "local"},
            "spec": {"provider": "local", "nop": {"callDelay": "1s"}},
        }));
        assert_eq!(
            problems(&config),
            ["spec.nop: nop settings apply only to provider nop"]
        );
    }

    #[test]
    fn transition_rules_do_not_apply_without_an_old_object() {
        // providerConfigRef and region are immutable (rules on oldSelf).
        let mut spec = spec_with_pools(json!([]));
        spec["region"] = json!("eu-west-1");
        assert_eq!(problems(&cluster(spec)), Vec::<String>::new());
    }

    #[test]
    fn null_is_a_missing_value() {
        let mut workers = pool("workers", 1, 3);
        workers["desired"] = Value::Null;
        workers["machineType"] = Value::Null;
        assert_eq!(
            problems(&cluster(spec_with_pools(json!([workers])))),
            ["spec.nodePools[0].machineType: Required value"]
        );
    }

    #[test]
    fn metadata_needs_a_valid_name_and_string_labels() {
        let mut manifest = cluster(spec_with_pools(json!([])));
        manifest.value["metadata"] = json!({"name": "Dev_1", "labels": {"tier": 1}});
        let found = problems(&manifest);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with(
            r#"metadata.name: Invalid value: "Dev_1": a lowercase RFC 1123 subdomain"#
        ));
        assert_eq!(
            found[1],
            "metadata.labels[tier]: Invalid value: 1: must be a string (quote it)"
        );
        manifest.value["metadata"] = json!({"namespace": "team-a"});
        assert_eq!(problems(&manifest), ["metadata.name: Required value"]);
    }

    #[test]
    fn other_api_groups_only_need_api_version_kind_and_name() {
        let secret = document(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "system:odd"},
            "stringData": {"anything": "goes"}, "whatever": 1,
        }));
        assert_eq!(problems(&secret), Vec::<String>::new());
        let anonymous = document(json!({"metadata": {}}));
        assert_eq!(
            problems(&anonymous),
            [
                "apiVersion: Required value",
                "kind: Required value",
                "metadata.name: Required value"
            ]
        );
        assert_eq!(
            problems(&document(json!("just text"))),
            ["-: not a Kubernetes object (a mapping)"]
        );
    }

    #[test]
    fn unknown_kinds_and_versions_of_the_group_are_reported() {
        let mut manifest = cluster(spec_with_pools(json!([])));
        manifest.value["kind"] = json!("Clusters");
        let found = problems(&manifest);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(r#"kind: Unsupported value: "Clusters": fleetforge.dev/v1alpha1 kinds are "Cluster", "Environment""#),
            "{found:?}"
        );
        manifest.value["kind"] = json!("Cluster");
        manifest.value["apiVersion"] = json!("fleetforge.dev/v1");
        assert_eq!(
            problems(&manifest),
            [
                r#"apiVersion: Unsupported value: "fleetforge.dev/v1": fleetforge.dev serves v1alpha1"#
            ]
        );
    }

    #[test]
    fn status_is_ignored_as_the_api_server_drops_it() {
        let mut manifest = cluster(spec_with_pools(json!([])));
        manifest.value["status"] = json!({"phase": "Sleeping", "extra": true});
        assert_eq!(problems(&manifest), Vec::<String>::new());
    }

    #[test]
    fn the_walker_handles_maps_int_or_string_and_sets() {
        let schema = json!({
            "type": "object",
            "properties": {
                "size": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
                "zones": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "ratio": {"type": "number", "minimum": 0.0, "exclusiveMinimum": true},
            },
        });
        let valid = json!({"size": "2Gi", "tags": {"a": "abc"}, "zones": ["a", "b"], "free": {"x": {"y": 1}}, "ratio": 0.5});
        assert_eq!(walk(schema.clone(), valid), Vec::<String>::new());
        let invalid =
            json!({"size": true, "tags": {"a": "abcd", "b": 1}, "zones": ["a", "a"], "ratio": 0});
        assert_eq!(
            walk(schema, invalid),
            [
                "spec.ratio: Invalid value: 0: must be greater than 0",
                "spec.size: Invalid value: true: must be an integer or a string",
                "spec.tags[a]: Too long: must have at most 3 characters",
                "spec.tags[b]: Invalid value: 1: must be of type string",
                r#"spec.zones[1]: Duplicate value: "a""#,
            ]
        );
    }

    #[test]
    fn whole_numbers_are_integers() {
        let schema = json!({"type": "integer"});
        assert_eq!(walk(schema.clone(), json!(3.0)), Vec::<String>::new());
        assert_eq!(
            walk(schema, json!(2.5)),
            ["spec: Invalid value: 2.5: must be of type integer"]
        );
    }
}
