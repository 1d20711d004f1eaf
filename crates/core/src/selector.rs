//! Label selectors from specs, parsed so that one that does not parse is
//! an error naming its field, never a selector that matches nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Expression, Selector};

/// The selector at `field` (for example `spec.targets.clusterSelector`), or
/// why it cannot be used, naming the requirement at fault.
pub fn parse(field: &str, selector: &LabelSelector) -> Result<Selector, String> {
    let mut parsed: Selector = selector
        .match_labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{index}]");
        let key = requirement.key.clone();
        let values = requirement.values.clone().unwrap_or_default();
        let expression = match (requirement.operator.as_str(), values.is_empty()) {
            ("In", false) => Expression::In(key, values.into_iter().collect()),
            ("NotIn", false) => Expression::NotIn(key, values.into_iter().collect()),
            ("Exists", true) => Expression::Exists(key),
            ("DoesNotExist", true) => Expression::DoesNotExist(key),
            (operator @ ("In" | "NotIn"), true) => {
                return Err(format!("{at}.values: {operator} needs at least one value"));
            }
            (operator @ ("Exists" | "DoesNotExist"), false) => {
                return Err(format!("{at}.values: {operator} takes no values"));
            }
            (operator, _) => {
                return Err(format!(
                    "{at}.operator: {operator:?} is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        };
        parsed.extend(std::iter::once(expression));
    }
    Ok(parsed)
}

/// The stages of a FleetRollout, their selectors parsed: which stage (the
/// first that selects it) a target belongs to.
#[derive(Debug, Clone)]
pub struct Stages(Vec<(Option<Selector>, Vec<String>)>);

impl Stages {
    /// The stages of `stages`, or why a selector cannot be used, naming it.
    pub fn parse(stages: &[fleetforge_api::fleet_rollout::RolloutStage]) -> Result<Self, String> {
        stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let selector = stage
                    .selector
                    .as_ref()
                    .map(|s| parse(&format!("spec.stages[{i}].selector"), s))
                    .transpose()?;
                Ok((selector, stage.names.clone().unwrap_or_default()))
            })
            .collect::<Result<_, String>>()
            .map(Self)
    }

    /// The index of the stage target `name` with `labels` belongs to.
    pub fn of(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Option<usize> {
        use kube::core::SelectorExt;
        self.0.iter().position(|(selector, names)| {
            names.iter().any(|n| n == name) || selector.as_ref().is_some_and(|s| s.matches(labels))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_valid_selector_matches_as_kubernetes_does() {
        let parsed = parse(
            "spec.selector",
            &selector(serde_json::json!({
                "matchLabels": {"tier": "dev"},
                "matchExpressions": [
                    {"key": "team", "operator": "In", "values": ["a", "b"]},
                    {"key": "frozen", "operator": "DoesNotExist"},
                ],
            })),
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(parsed.matches(&labels(&[("tier", "dev"), ("team", "a")])));
        assert!(!parsed.matches(&labels(&[("tier", "dev"), ("team", "c")])));
        assert!(!parsed.matches(&labels(&[("tier", "dev"), ("team", "a"), ("frozen", "y")])));
    }

    #[test]
    fn a_selector_that_does_not_parse_names_the_field_at_fault() {
        let cases = [
            (
                serde_json::json!({"key": "tier", "operator": "Equals", "values": ["dev"]}),
                "spec.targets.clusterSelector.matchExpressions[0].operator: \"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
            ),
            (
                serde_json::json!({"key": "tier", "operator": "In"}),
                "spec.targets.clusterSelector.matchExpressions[0].values: In needs at least one value",
            ),
            (
                serde_json::json!({"key": "tier", "operator": "Exists", "values": ["x"]}),
                "spec.targets.clusterSelector.matchExpressions[0].values: Exists takes no values",
            ),
        ];
        for (requirement, expected) in cases {
            let bad = selector(serde_json::json!({"matchExpressions": [requirement]}));
            assert_eq!(
                parse("spec.targets.clusterSelector", &bad).unwrap_err(),
                expected
            );
        }
    }
}
