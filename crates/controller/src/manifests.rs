//! Reads the YAML of a platform repository: every `*.yaml` / `*.yml` file
//! under a path, each document as JSON, with where it came from.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One YAML document.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it is in.
    pub file: PathBuf,
    /// Its position in the file (0-based).
    pub index: usize,
    /// The document.
    pub value: Value,
}

impl Manifest {
    /// `kind`, or an empty string.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    /// `apiVersion`, or an empty string.
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    /// `metadata.name`, or an empty string.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `metadata.namespace`, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

impl fmt::Display for Manifest {
    /// `Kind/name` (with the document's position when it has no name).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.kind().is_empty() {
            "<no kind>"
        } else {
            self.kind()
        };
        if self.name().is_empty() {
            write!(f, "{kind}/<document {}>", self.index + 1)
        } else {
            write!(f, "{kind}/{}", self.name())
        }
    }
}

/// A file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Every document under `path` (a file or a directory, walked in name
/// order), and the files that could not be read.
pub fn load(path: &Path) -> (Vec<Manifest>, Vec<LoadError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    collect(path, &mut files, &mut errors);
    files.sort();
    let mut manifests = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(LoadError {
                    file,
                    message: e.to_string(),
                });
                continue;
            }
        };
        match serde_saphyr::from_multiple::<Value>(&text) {
            Ok(docs) => manifests.extend(
                docs.into_iter()
                    .filter(|doc| !doc.is_null())
                    .enumerate()
                    .map(|(index, value)| Manifest {
                        file: file.clone(),
                        index,
                        value,
                    }),
            ),
            Err(e) => errors.push(LoadError {
                file,
                message: format!("not valid YAML: {e}"),
            }),
        }
    }
    (manifests, errors)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    if path.is_file() {
        files.push(path.to_path_buf());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(LoadError {
                file: path.to_path_buf(),
                message: e.to_string(),
            });
            return;
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files, errors);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_document_of_every_yaml_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(
            dir.path().join("b/one.yaml"),
            "kind: A\nmetadata: {name: a}\n---\n---\nkind: B\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.yml"), "kind: C\nmetadata: {name: c}\n").unwrap();
        std::fs::write(dir.path().join("README.md"), "# not yaml").unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: [unclosed\n").unwrap();
        let (manifests, errors) = load(dir.path());
        let shown: Vec<String> = manifests.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["C/c", "A/a", "B/<document 2>"]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("bad.yaml: not valid YAML"),
            "{}",
            errors[0]
        );
    }
}
