//! Reads the static AWS keys a ProviderConfig's Secret holds: JSON or an
//! INI profile, as `aws configure` writes it.

use std::collections::HashMap;
use std::fmt;

use fleetforge_core::{ErrorKind, ProviderError};

/// Static AWS keys. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKeys {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticKeys { <redacted> }")
    }
}

const ACCESS_KEY_ID: &str = "aws_access_key_id";
const SECRET_ACCESS_KEY: &str = "aws_secret_access_key";
const SESSION_TOKEN: &str = "aws_session_token";

/// Reads `bytes`: a JSON object with `aws_access_key_id`,
/// `aws_secret_access_key` and optional `aws_session_token`, or an INI file
/// whose `[default]` profile (or only profile) has those keys. Errors are
/// `AuthFailed` and name what is missing, never a value.
pub fn parse(bytes: &[u8]) -> Result<StaticKeys, ProviderError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid("it is not UTF-8 text".to_string()))?
        .trim();
    if text.is_empty() {
        return Err(invalid("it is empty".to_string()));
    }
    let fields = if text.starts_with('{') {
        // serde_json's messages quote no input, only positions.
        let map: HashMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| invalid(format!("it is not a JSON object ({})", position(&e))))?;
        map.into_iter()
            .filter_map(|(key, value)| match value {
                serde_json::Value::String(s) => Some((key, s)),
                _ => None,
            })
            .collect()
    } else {
        ini_profile(text)?
    };
    let field = |name: &str| {
        fields
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let access_key_id =
        field(ACCESS_KEY_ID).ok_or_else(|| invalid(format!("it has no {ACCESS_KEY_ID}")))?;
    let secret_access_key = field(SECRET_ACCESS_KEY)
        .ok_or_else(|| invalid(format!("it has no {SECRET_ACCESS_KEY}")))?;
    Ok(StaticKeys {
        access_key_id,
        secret_access_key,
        session_token: field(SESSION_TOKEN),
    })
}

fn position(error: &serde_json::Error) -> String {
    format!("line {}, column {}", error.line(), error.column())
}

/// The keys of the `[default]` profile, or of the only profile, or of a file
/// without sections.
fn ini_profile(text: &str) -> Result<HashMap<String, String>, ProviderError> {
    let mut profiles: Vec<(String, HashMap<String, String>)> =
        vec![(String::new(), HashMap::new())];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let name = section.strip_suffix(']').ok_or_else(|| {
                invalid(format!(
                    "line {} opens a [section] it does not close",
                    number + 1
                ))
            })?;
            let name = name.trim().trim_start_matches("profile ").trim();
            profiles.push((name.to_string(), HashMap::new()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(format!(
                "line {} is neither a [section] nor key = value",
                number + 1
            )));
        };
        if let Some((_, keys)) = profiles.last_mut() {
            keys.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    let named: Vec<&(String, HashMap<String, String>)> = profiles
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .collect();
    let chosen = match named.as_slice() {
        [] => profiles.first(),
        [only] => Some(*only),
        _ => named.iter().copied().find(|(name, _)| name == "default"),
    };
    chosen
        .map(|(_, keys)| keys.clone())
        .ok_or_else(|| invalid("it has several profiles and none is [default]".to_string()))
}

fn invalid(why: String) -> ProviderError {
    ProviderError::new(
        ErrorKind::AuthFailed,
        format!(
            "the AWS credentials Secret cannot be read: {why}; store JSON with {ACCESS_KEY_ID}, {SECRET_ACCESS_KEY} and optional {SESSION_TOKEN}, or an INI profile [default] with the same keys"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn json_keys_are_read_with_an_optional_session_token() {
        let keys = parse(
            format!(r#"{{"aws_access_key_id":"AKIDEXAMPLE","aws_secret_access_key":"{SECRET}"}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(keys.access_key_id, "AKIDEXAMPLE");
        assert_eq!(keys.secret_access_key, SECRET);
        assert_eq!(keys.session_token, None);
        let keys = parse(
            br#" {"aws_access_key_id":"A","aws_secret_access_key":"B","aws_session_token":"T"} "#,
        )
        .unwrap();
        assert_eq!(keys.session_token.as_deref(), Some("T"));
    }

    #[test]
    fn an_ini_profile_is_read_preferring_default() {
        let text = format!(
            "# written by aws configure\n[other]\naws_access_key_id = X\naws_secret_access_key = Y\n\n[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = {SECRET}\naws_session_token=T\n"
        );
        let keys = parse(text.as_bytes()).unwrap();
        assert_eq!(keys.access_key_id, "AKIDEXAMPLE");
        assert_eq!(keys.secret_access_key, SECRET);
        assert_eq!(keys.session_token.as_deref(), Some("T"));

        let only = parse(b"[profile ci]\naws_access_key_id=A\naws_secret_access_key=B\n").unwrap();
        assert_eq!(only.access_key_id, "A");
        let bare = parse(b"aws_access_key_id=A\naws_secret_access_key=B").unwrap();
        assert_eq!(bare.secret_access_key, "B");
    }

    #[test]
    fn malformed_secrets_fail_as_auth_failed_without_their_content() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            vec![0xff, 0xfe],
            format!(r#"{{"aws_access_key_id":"AKIDEXAMPLE","aws_secret_access_key":"{SECRET}""#)
                .into_bytes(),
            format!(r#"{{"aws_access_key_id":"AKIDEXAMPLE","secret":"{SECRET}"}}"#).into_bytes(),
            format!("[default]\naws_access_key_id = AKIDEXAMPLE\n{SECRET}\n").into_bytes(),
            format!("[default\naws_secret_access_key = {SECRET}\n").into_bytes(),
            format!("[a]\naws_access_key_id=A\naws_secret_access_key={SECRET}\n[b]\naws_access_key_id=B\n")
                .into_bytes(),
        ];
        for case in cases {
            let error = parse(&case).unwrap_err();
            assert_eq!(error.kind, ErrorKind::AuthFailed);
            assert!(!error.message.contains(SECRET), "{}", error.message);
            assert!(!error.message.contains("AKIDEXAMPLE"), "{}", error.message);
            assert!(error.message.contains("[default]"), "{}", error.message);
        }
    }

    #[test]
    fn keys_never_print() {
        let keys = parse(b"aws_access_key_id=A\naws_secret_access_key=SECRETVALUE").unwrap();
        assert!(!format!("{keys:?}").contains("SECRETVALUE"));
    }
}
