//! Schema fixes applied to every generated CRD, so that what schemars
//! writes is what the API server understands.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The `format` values the Kubernetes API server recognises in a CRD's
/// OpenAPI v3 schema (apiextensions-apiserver's supported formats); any
/// other makes it print `unrecognized format` on every install.
pub const KUBERNETES_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "date-time",
    "int32",
    "int64",
    "float",
    "double",
];

/// `crd` with every schema `format` one Kubernetes knows. Rust's unsigned
/// integers come out of schemars as `uint32`/`uint64` (with `minimum: 0`);
/// they become `int64`, which holds every `u32` and, with the minimum kept,
/// says the same. Any other unknown format is dropped.
pub fn with_kubernetes_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises");
    for version in value["spec"]["versions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
            fix_formats(schema);
        }
    }
    serde_json::from_value(value).expect("the fixed CRD deserialises")
}

fn fix_formats(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(format)) = map.get("format") {
                match format.as_str() {
                    known if KUBERNETES_FORMATS.contains(&known) => {}
                    "uint" | "uint8" | "uint16" | "uint32" | "uint64" => {
                        map.insert("format".into(), Value::String("int64".into()));
                        map.entry("minimum").or_insert(Value::from(0));
                    }
                    _ => {
                        map.remove("format");
                    }
                }
            }
            // `properties` maps names to schemas; a property may itself be
            // named `format`, which is a schema, not a format string.
            map.values_mut().for_each(fix_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(fix_formats),
        _ => {}
    }
}

/// Every `format` anywhere in `crd`'s schemas.
pub fn formats_of(crd: &CustomResourceDefinition) -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(format)) = map.get("format") {
                    found.push(format.clone());
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let value = serde_json::to_value(crd).expect("a CRD serialises");
    let mut found = Vec::new();
    walk(&value["spec"]["versions"], &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_format_is_one_kubernetes_knows() {
        for crd in crate::crds() {
            for format in formats_of(&crd) {
                assert!(
                    KUBERNETES_FORMATS.contains(&format.as_str()),
                    "{}: format {format} is unknown to Kubernetes",
                    crd.metadata.name.as_deref().unwrap_or_default()
                );
            }
        }
    }

    #[test]
    fn unsigned_formats_become_non_negative_int64() {
        let mut schema = serde_json::json!({
            "type": "object",
            "properties": {
                "burst": {"type": "integer", "format": "uint32", "minimum": 1},
                "seed": {"type": "integer", "format": "uint64"},
                "format": {"type": "string", "format": "color"},
            },
        });
        fix_formats(&mut schema);
        assert_eq!(
            schema["properties"]["burst"],
            serde_json::json!({"type": "integer", "format": "int64", "minimum": 1})
        );
        assert_eq!(
            schema["properties"]["seed"],
            serde_json::json!({"type": "integer", "format": "int64", "minimum": 0})
        );
        assert_eq!(
            schema["properties"]["format"],
            serde_json::json!({"type": "string"})
        );
    }
}
