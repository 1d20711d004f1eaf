//! A release's manifest against what runs: its objects, their identity,
//! and the fields the chart sets whose live value differs. Pure functions
//! of JSON values; [`crate::live`] reads the live side.

use kube::core::GroupVersionKind;
use serde_json::Value;

/// The objects of a rendered manifest (empty documents skipped).
pub fn manifest_objects(manifest: &str) -> Vec<Value> {
    match serde_saphyr::from_multiple::<Value>(manifest) {
        Ok(docs) => docs.into_iter().filter(Value::is_object).collect(),
        Err(e) => {
            tracing::warn!("a release manifest does not parse: {e}");
            Vec::new()
        }
    }
}

pub(crate) fn identity(object: &Value) -> Option<(GroupVersionKind, String, Option<String>)> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let kind = object.get("kind")?.as_str()?;
    let name = object.pointer("/metadata/name")?.as_str()?;
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Some((
        GroupVersionKind::gvk(group, version, kind),
        name.to_string(),
        namespace,
    ))
}

/// Fields the chart sets whose live value differs, as `path: chart X, live
/// Y`. Compared: everything but `status` and `metadata`, plus the labels
/// and annotations the chart sets; maps as subsets (the API server adds
/// defaults), lists element by element with the same length.
pub fn differences(declared: &Value, live: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let (Some(declared), Some(live)) = (declared.as_object(), live.as_object()) else {
        return found;
    };
    for (key, value) in declared {
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for part in ["labels", "annotations"] {
                    if let Some(declared) = value.get(part) {
                        let live = live.get("metadata").and_then(|m| m.get(part));
                        compare(
                            declared,
                            live.unwrap_or(&Value::Null),
                            &mut format!("metadata.{part}"),
                            &mut found,
                        );
                    }
                }
            }
            _ => compare(
                value,
                live.get(key).unwrap_or(&Value::Null),
                &mut key.clone(),
                &mut found,
            ),
        }
    }
    found
}

fn compare(declared: &Value, live: &Value, path: &mut String, found: &mut Vec<String>) {
    match (declared, live) {
        (Value::Object(declared), Value::Object(live)) => {
            for (key, value) in declared {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                compare(value, live.get(key).unwrap_or(&Value::Null), path, found);
                path.truncate(len);
            }
        }
        (Value::Array(declared), Value::Array(live)) if declared.len() == live.len() => {
            for (index, (d, l)) in declared.iter().zip(live).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                compare(d, l, path, found);
                path.truncate(len);
            }
        }
        // A declared null or empty map/list is "nothing set".
        (Value::Null, _) => {}
        (Value::Object(m), Value::Null) if m.is_empty() => {}
        (Value::Array(a), Value::Null) if a.is_empty() => {}
        (declared, live) if same_scalar(declared, live) => {}
        (declared, live) => found.push(format!(
            "{path}: chart {}, live {}",
            short(declared),
            short(live)
        )),
    }
}

/// Equal, or equal once the API server's normalisation is undone: numbers
/// given as strings, and quantities written another way (`0.5` and `500m`).
fn same_scalar(declared: &Value, live: &Value) -> bool {
    if declared == live {
        return true;
    }
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (text(declared), text(live)) {
        (Some(d), Some(l)) => {
            d == l
                || matches!((quantity(&d), quantity(&l)), (Some(a), Some(b)) if (a - b).abs() <= f64::EPSILON * a.abs().max(1.0))
        }
        _ => false,
    }
}

/// A Kubernetes quantity (`100m`, `1.5Gi`, `2e3`) as a number.
fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.strip_suffix('E')
        .and_then(|n| n.parse::<f64>().ok())
        .map(|n| n * 1e18)
        .or_else(|| text.parse::<f64>().ok())
}

fn short(value: &Value) -> String {
    let text = match value {
        Value::Null => "unset".to_string(),
        other => other.to_string(),
    };
    if text.len() > 80 {
        let mut end = 77;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &text[..end])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_drift() {
        let declared = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "web:1"}]}}},
        });
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "x", "labels": {"app": "web", "extra": "y"}},
            "spec": {"replicas": 2, "progressDeadlineSeconds": 600, "template": {"spec": {
                "containers": [{"name": "web", "image": "web:1", "imagePullPolicy": "IfNotPresent"}]}}},
            "status": {"replicas": 2},
        });
        assert!(differences(&declared, &live).is_empty());
    }

    #[test]
    fn changed_fields_are_named_with_both_values() {
        let declared = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let live = json!({"metadata": {"labels": {"app": "other"}}, "spec": {"replicas": 5, "ports": [{"port": 81}]}});
        assert_eq!(
            differences(&declared, &live),
            [
                "metadata.labels.app: chart \"web\", live \"other\"",
                "spec.ports[0].port: chart 80, live 81",
                "spec.replicas: chart 2, live 5",
            ]
        );
    }

    #[test]
    fn a_list_of_another_length_and_a_removed_key_are_drift() {
        let declared = json!({"data": {"a": "1", "b": "2"}, "spec": {"args": ["x"]}});
        let live = json!({"data": {"a": "1"}, "spec": {"args": ["x", "y"]}});
        assert_eq!(
            differences(&declared, &live),
            [
                "data.b: chart \"2\", live unset",
                "spec.args: chart [\"x\"], live [\"x\",\"y\"]",
            ]
        );
    }

    #[test]
    fn quantities_and_numbers_written_another_way_are_equal() {
        let declared =
            json!({"spec": {"cpu": "0.5", "memory": "1Gi", "port": "8080", "empty": {}}});
        let live = json!({"spec": {"cpu": "500m", "memory": "1024Mi", "port": 8080}});
        assert!(differences(&declared, &live).is_empty());
    }

    #[test]
    fn a_manifest_splits_into_objects() {
        let manifest = "---\n# Source: web/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n# Source: empty\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: other\n";
        let objects = manifest_objects(manifest);
        assert_eq!(objects.len(), 2);
        let (gvk, name, namespace) = identity(&objects[1]).unwrap();
        assert_eq!((gvk.kind.as_str(), name.as_str()), ("Service", "b"));
        assert_eq!(namespace.as_deref(), Some("other"));
        let (gvk, _, _) = identity(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}),
        )
        .unwrap();
        assert_eq!((gvk.group.as_str(), gvk.version.as_str()), ("apps", "v1"));
    }
}
