//! Helm values of one tool on one target: layers merged in a fixed order,
//! then strings templated from the target's facts.
//!
//! Merging: maps merge key by key, recursively; anything else (lists,
//! strings, numbers) in a later layer replaces the earlier value; a `null`
//! in a later layer removes the key, as Helm's own `--set key=null` does.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{Map, Value};

/// Merges `overlay` into `base`.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => merge_maps(base, overlay),
        (base, overlay) => *base = overlay.clone(),
    }
}

fn merge_maps(base: &mut Map<String, Value>, overlay: &Map<String, Value>) {
    for (key, value) in overlay {
        match (base.get_mut(key), value) {
            (_, Value::Null) => {
                base.remove(key);
            }
            (Some(existing @ Value::Object(_)), Value::Object(_)) => merge(existing, value),
            _ => {
                base.insert(key.clone(), strip_nulls(value));
            }
        }
    }
}

/// A value without null map entries: a null means "remove" at any depth.
fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merges `layers` in order over an empty map.
pub fn merged<'a>(layers: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut values = Value::Object(Map::new());
    for layer in layers {
        merge(&mut values, layer);
    }
    values
}

/// Facts about a target that values may refer to as `{{ cluster.name }}`,
/// `{{ cluster.labels["team"] }}` and so on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetFacts {
    /// `Cluster` or `VirtualCluster`.
    pub kind: String,
    /// Name of the target object.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its provider (`local`, `aws`, ...), when known.
    pub provider: String,
    /// Its region, when known.
    pub region: String,
    /// Its Kubernetes version, as reported.
    pub version: String,
    /// Its API server URL.
    pub endpoint: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A value that could not be templated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("values.{path}: {message}")]
pub struct TemplateError {
    /// Where in the values, for example `ingress.host`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Renders every string in `values` that contains `{{` or `{%` as a
/// template over `cluster` (the target's facts). A reference to anything
/// that is not a fact is an error naming it, never an empty string.
pub fn render(values: &Value, facts: &TargetFacts) -> Result<Value, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let context = serde_json::json!({ "cluster": facts });
    render_at(values, &env, &context, &mut Vec::new())
}

fn render_at(
    value: &Value,
    env: &Environment<'_>,
    context: &Value,
    path: &mut Vec<String>,
) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(text) if text.contains("{{") || text.contains("{%") => Value::String(
            render_string(text, env, context).map_err(|message| TemplateError {
                path: path.join("."),
                message,
            })?,
        ),
        Value::Object(map) => {
            let mut rendered = Map::new();
            for (key, item) in map {
                path.push(key.clone());
                rendered.insert(key.clone(), render_at(item, env, context, path)?);
                path.pop();
            }
            Value::Object(rendered)
        }
        Value::Array(items) => {
            let mut rendered = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                path.push(index.to_string());
                rendered.push(render_at(item, env, context, path)?);
                path.pop();
            }
            Value::Array(rendered)
        }
        other => other.clone(),
    })
}

fn render_string(text: &str, env: &Environment<'_>, context: &Value) -> Result<String, String> {
    let template = env.template_from_str(text).map_err(|e| {
        format!(
            "{text:?} is not a valid template: {}",
            e.detail().unwrap_or(&e.to_string())
        )
    })?;
    for reference in template.undeclared_variables(true) {
        if !resolves(context, &reference) {
            return Err(format!(
                "{text:?} refers to {reference}, which is not a fact of the target \
                 (known: cluster.kind, cluster.name, cluster.namespace, cluster.provider, \
                 cluster.region, cluster.version, cluster.endpoint, cluster.labels, \
                 cluster.annotations)"
            ));
        }
    }
    template
        .render(minijinja::value::Serde(context))
        .map_err(|e| format!("{text:?} cannot be rendered: {}", describe(&e)))
}

fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// Whether a dotted path such as `cluster.name` exists in `context`.
fn resolves(context: &Value, reference: &str) -> bool {
    let mut current = context;
    for part in reference.split('.') {
        match current.get(part) {
            Some(next) => current = next,
            None => return false,
        }
    }
    true
}

/// A unified diff of two value trees as YAML, for a dry run's plan.
pub fn diff(installed: &Value, declared: &Value) -> String {
    let before = to_yaml(installed);
    let after = to_yaml(declared);
    similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(2)
        .header("installed", "declared")
        .to_string()
}

fn to_yaml(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_facts() -> TargetFacts {
        TargetFacts {
            kind: "Cluster".into(),
            name: "dev-1".into(),
            namespace: "platform".into(),
            provider: "local".into(),
            region: "local".into(),
            version: "v1.36.3".into(),
            endpoint: "https://127.0.0.1:6443".into(),
            labels: [("team".to_string(), "payments".to_string())].into(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn maps_merge_deeply_lists_are_replaced_and_later_layers_win() {
        let tool = json!({"replicas": 1, "image": {"repository": "web", "tag": "1.0"}, "args": ["a", "b"]});
        let common = json!({"image": {"tag": "1.1"}, "args": ["c"]});
        let cluster = json!({"replicas": 3});
        assert_eq!(
            merged([&tool, &common, &cluster]),
            json!({"replicas": 3, "image": {"repository": "web", "tag": "1.1"}, "args": ["c"]})
        );
    }

    #[test]
    fn null_removes_a_key_at_any_depth() {
        let tool = json!({"resources": {"limits": {"cpu": "1"}}, "debug": true});
        let overlay =
            json!({"resources": {"limits": null}, "debug": null, "extra": {"a": null, "b": 1}});
        assert_eq!(
            merged([&tool, &overlay]),
            json!({"resources": {}, "extra": {"b": 1}})
        );
    }

    #[test]
    fn a_map_replaces_a_scalar_and_a_scalar_replaces_a_map() {
        let base = json!({"a": 1, "b": {"c": 2}});
        let overlay = json!({"a": {"x": 1}, "b": "flat"});
        assert_eq!(
            merged([&base, &overlay]),
            json!({"a": {"x": 1}, "b": "flat"})
        );
    }

    #[test]
    fn strings_are_templated_from_the_target() {
        let values = json!({
            "ingress": {"host": "{{ cluster.name }}.{{ cluster.namespace }}.example.com"},
            "team": "{{ cluster.labels.team }}",
            "hosts": ["{{ cluster.name | upper }}", "static"],
            "replicas": 2,
        });
        assert_eq!(
            render(&values, &mk_facts()).unwrap(),
            json!({
                "ingress": {"host": "dev-1.platform.example.com"},
                "team": "payments",
                "hosts": ["DEV-1", "static"],
                "replicas": 2,
            })
        );
    }

    #[test]
    fn an_unknown_reference_fails_naming_it_and_where_it_is() {
        let values = json!({"ingress": {"host": "{{ cluster.nmae }}.example.com"}});
        let error = render(&values, &mk_facts()).unwrap_err();
        assert_eq!(error.path, "ingress.host");
        assert!(error.message.contains("refers to cluster.nmae"), "{error}");
        assert!(error.to_string().starts_with("values.ingress.host: "));
    }

    #[test]
    fn a_missing_label_fails_instead_of_rendering_empty() {
        let values = json!({"zone": "{{ cluster.labels['zone'] }}"});
        let error = render(&values, &mk_facts()).unwrap_err();
        assert_eq!(error.path, "zone");
        assert!(error.message.contains("undefined"), "{error}");
    }

    #[test]
    fn a_broken_template_is_reported() {
        let error = render(&json!({"a": ["{{ cluster.name "]}), &mk_facts()).unwrap_err();
        assert_eq!(error.path, "a.0");
        assert!(error.message.contains("not a valid template"), "{error}");
    }

    #[test]
    fn the_dry_run_diff_shows_changed_lines() {
        let diff = diff(
            &json!({"replicas": 1, "tag": "a"}),
            &json!({"replicas": 2, "tag": "a"}),
        );
        assert!(diff.contains("-replicas: 1"), "{diff}");
        assert!(diff.contains("+replicas: 2"), "{diff}");
        assert!(diff.contains(" tag: a"), "{diff}");
    }
}
