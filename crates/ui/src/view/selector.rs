//! Label selectors as people type them into the filter box, with the
//! syntax of `kubectl get -l`: `env=dev`, `env==dev`, `tier!=db`, `gpu`,
//! `!gpu`, `env in (dev,staging)`, `env notin (prod)`, joined by commas.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the label is absent, as in Kubernetes).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the label is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// Parses `text`; an empty text selects everything. The error says
    /// which part could not be read.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            requirements.push(parse_term(&term)?);
        }
        Ok(Self(requirements))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas outside parentheses, dropping empty terms.
fn split_terms(text: &str) -> Result<Vec<String>, String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in {text:?}"))?;
                current.push(c);
            }
            ',' if depth == 0 => terms.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {text:?}"));
    }
    terms.push(current);
    Ok(terms
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect())
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key.trim(), term)?));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key_of(key.trim(), term)?,
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            key_of(key.trim(), term)?,
            value.trim().to_string(),
        ));
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words[..] {
        let rest = rest.trim();
        let (negated, set) = if let Some(set) = rest.strip_prefix("notin") {
            (true, set)
        } else if let Some(set) = rest.strip_prefix("in") {
            (false, set)
        } else {
            return Err(format!(
                "{term:?}: expected key=value, key!=value, key in (a,b), key notin (a,b), key or !key"
            ));
        };
        let values = set
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("{term:?}: the values of in/notin go in parentheses"))?
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>();
        if values.is_empty() {
            return Err(format!("{term:?}: in/notin needs at least one value"));
        }
        let key = key_of(key, term)?;
        return Ok(if negated {
            Requirement::NotIn(key, values)
        } else {
            Requirement::In(key, values)
        });
    }
    Ok(Requirement::Exists(key_of(term, term)?))
}

fn key_of(key: &str, term: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("{term:?}: {key:?} is not a label key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_as_kubectl_does() {
        let dev = labels(&[("env", "dev"), ("team", "web")]);
        let prod = labels(&[("env", "prod"), ("gpu", "true")]);
        let bare = labels(&[]);
        // (selector, matches dev, matches prod, matches bare)
        let cases = [
            ("", true, true, true),
            ("env=dev", true, false, false),
            ("env==dev", true, false, false),
            ("env!=dev", false, true, true),
            ("gpu", false, true, false),
            ("!gpu", true, false, true),
            ("env in (dev, staging)", true, false, false),
            ("env notin (prod)", true, false, true),
            ("env=dev,team=web", true, false, false),
            ("env=dev,team=db", false, false, false),
            (" env = prod , gpu ", false, true, false),
            ("fleetforge.dev/profile-of", false, false, false),
        ];
        for (text, want_dev, want_prod, want_bare) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(selector.matches(&dev), want_dev, "{text:?} on dev");
            assert_eq!(selector.matches(&prod), want_prod, "{text:?} on prod");
            assert_eq!(selector.matches(&bare), want_bare, "{text:?} on no labels");
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let cases = [
            ("env in dev", "parentheses"),
            ("env in ()", "at least one value"),
            ("env in (dev", "unbalanced '('"),
            ("env)", "unbalanced ')'"),
            ("<x>=1", "is not a label key"),
            ("env like dev", "expected key=value"),
        ];
        for (text, fragment) in cases {
            let error = Selector::parse(text).expect_err(text);
            assert!(error.contains(fragment), "{text:?}: {error}");
        }
    }
}
