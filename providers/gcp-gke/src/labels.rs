//! GCP resource labels: the ownership label and the spec's tags, in the
//! form GCP accepts (keys `[a-z][a-z0-9_-]{0,62}`, values `[a-z0-9_-]{0,63}`).
//!
//! The owner `<namespace>/<name>` is written as `<namespace>_<name>` with
//! each `.` of the name written as `_`: namespaces are DNS labels (no `.`
//! or `_`) and names DNS subdomains (no `_`), so the first `_` separates
//! them and the rest are dots, and the encoding reads back exactly. A value
//! longer than 63 characters keeps its first 54 and ends in `-` and 8 hex
//! digits of a hash of the whole owner; such a value is recognised by
//! comparing it with the encoding of the object asking, not decoded.

use std::collections::HashMap;

use fleetforge_api::Cluster;

/// The label naming the object that created a cluster or node pool.
pub const OWNER_LABEL: &str = "fleetforge-owner";

const MAX_LENGTH: usize = 63;
const HASHED_PREFIX: usize = 54;

/// The owner of `obj` as the engine spells it: `<namespace>/<name>`.
pub fn owner_of(obj: &Cluster) -> String {
    format!(
        "{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The owner label's value for `owner` (`<namespace>/<name>`).
pub fn encode_owner(owner: &str) -> String {
    let (namespace, name) = owner.split_once('/').unwrap_or(("", owner));
    let text = clean(&format!("{namespace}_{}", name.replace('.', "_")));
    if text.len() <= MAX_LENGTH {
        return text;
    }
    format!("{}-{:08x}", &text[..HASHED_PREFIX], fnv1a(owner))
}

/// The owner a label value names: `obj`'s own owner when the value is its
/// encoding, else the value read back as `<namespace>/<name>`.
pub fn decode_owner(value: &str, obj: &Cluster) -> String {
    let mine = owner_of(obj);
    if encode_owner(&mine) == value {
        return mine;
    }
    match value.split_once('_') {
        Some((namespace, name)) => format!("{namespace}/{}", name.replace('_', ".")),
        None => value.to_string(),
    }
}

/// The spec's tags as labels, with the owner label, which they cannot
/// override. Keys and values are lowercased, other characters than
/// `[a-z0-9_-]` become `_`, and both are cut to 63 characters; a key not
/// starting with a letter gets a `t` in front.
pub fn labels(obj: &Cluster) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = obj
        .spec
        .tags
        .iter()
        .filter_map(|(k, v)| Some((sanitize_key(k)?, sanitize_value(v))))
        .collect();
    labels.insert(OWNER_LABEL.to_string(), encode_owner(&owner_of(obj)));
    labels
}

fn sanitize_value(text: &str) -> String {
    clean(text).chars().take(MAX_LENGTH).collect()
}

/// `text` lowercased, with `_` for each character labels do not allow.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn sanitize_key(text: &str) -> Option<String> {
    let value = sanitize_value(text);
    match value.chars().next() {
        None => None,
        Some(c) if c.is_ascii_lowercase() => Some(value),
        Some(_) => Some(format!("t{value}").chars().take(MAX_LENGTH).collect()),
    }
}

/// FNV-1a, 32 bits: a stable short hash that needs no dependency.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(namespace: &str, name: &str, tags: serde_json::Value) -> Cluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"providerConfigRef": {"name": "gcp"}, "tags": tags},
        }))
        .unwrap()
    }

    #[test]
    fn owners_round_trip_through_the_label() {
        let obj = cluster("team-a", "web.prod", serde_json::json!({}));
        assert_eq!(encode_owner("team-a/web.prod"), "team-a_web_prod");
        let other = cluster("x", "y", serde_json::json!({}));
        assert_eq!(decode_owner("team-a_web_prod", &other), "team-a/web.prod");
        assert_eq!(decode_owner("team-a_web_prod", &obj), "team-a/web.prod");
    }

    #[test]
    fn long_owners_are_hashed_and_still_recognised() {
        let name = "n".repeat(80);
        let obj = cluster("team-a", &name, serde_json::json!({}));
        let value = encode_owner(&owner_of(&obj));
        assert_eq!(value.len(), 63);
        assert_eq!(decode_owner(&value, &obj), owner_of(&obj));
        assert_ne!(value, encode_owner(&format!("team-a/{name}x")));
    }

    #[test]
    fn tags_are_sanitized_and_cannot_override_the_owner() {
        let obj = cluster(
            "team-a",
            "c1",
            serde_json::json!({"Team": "Platform Eng", "9lives": "x", OWNER_LABEL: "evil", "": "v"}),
        );
        let labels = labels(&obj);
        assert_eq!(labels["team"], "platform_eng");
        assert_eq!(labels["t9lives"], "x");
        assert_eq!(labels[OWNER_LABEL], "team-a_c1");
        assert_eq!(labels.len(), 3);
    }
}
