//! Text sources: what a `source` string names (the built-in corpus, a file, a folder, a glob,
//! an `hf://datasets/...` file, llm.c `.bin` shards) and reading it into documents.
//!
//! A folder is searched recursively in sorted path order, skipping hidden entries (names
//! starting with '.'); a glob's matches are sorted too. A `.jsonl` file gives one document per
//! non-blank line (its `text_field`); a `.parquet` file one per row (its `text_column`); a
//! `.bin` file is a token shard; any other file is one document of UTF-8 text.

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::hub;
use crate::text_reader::{collect_documents, TextFields, TextReader};

/// What a source string resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The built-in synthetic corpus.
    Builtin,
    /// Text and JSONL files, in order.
    Text(Vec<PathBuf>),
    /// llm.c token shards, in order.
    Bin(Vec<PathBuf>),
}

fn is_bin(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("bin"))
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, "list folder", e))?;
    let mut entries = Vec::new();
    for e in rd {
        let e = e.map_err(|e| DataError::io(dir, "list folder", e))?;
        entries.push(e.path());
    }
    entries.sort();
    for p in entries {
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Resolves a source string to files (downloading `hf://` files into the Hub cache).
pub fn resolve(source: &str) -> Result<Resolved, DataError> {
    let source = source.trim();
    if source == "builtin" {
        return Ok(Resolved::Builtin);
    }
    let files = if source.starts_with("hf://") {
        let uri = hub::parse_hf_uri(source)?;
        let file = uri.path.clone().ok_or_else(|| DataError::BadHfUri {
            uri: source.to_string(),
            reason: "it names no file".to_string(),
        })?;
        vec![hub::hf_file(
            &uri.repo_id,
            uri.kind,
            uri.revision.as_deref(),
            &file,
        )?]
    } else if source.contains(['*', '?', '[']) {
        let paths = glob::glob(source).map_err(|e| DataError::BadGlob {
            pattern: source.to_string(),
            reason: e.to_string(),
        })?;
        let mut files = Vec::new();
        for p in paths {
            let p = p.map_err(|e| DataError::io(e.path().to_path_buf(), "read", e.into()))?;
            if p.is_file() && !is_hidden(&p) {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(DataError::EmptyGlob {
                pattern: source.to_string(),
            });
        }
        files
    } else {
        let p = PathBuf::from(source);
        if !p.exists() {
            return Err(DataError::missing(p));
        }
        if p.is_dir() {
            let mut files = Vec::new();
            walk(&p, &mut files)?;
            if files.is_empty() {
                return Err(DataError::EmptyFolder { path: p });
            }
            files
        } else {
            vec![p]
        }
    };
    let bin = files.iter().find(|p| is_bin(p));
    let text = files.iter().find(|p| !is_bin(p));
    match (bin, text) {
        (Some(b), Some(t)) => Err(DataError::MixedSource {
            bin: b.clone(),
            text: t.clone(),
        }),
        (Some(_), None) => Ok(Resolved::Bin(files)),
        _ => Ok(Resolved::Text(files)),
    }
}

/// Reads text files into documents: one per text file, one per JSONL line, one per parquet row
/// (for small sources; large ones are streamed with a [`TextReader`]).
pub fn read_documents(files: &[PathBuf], fields: TextFields) -> Result<Vec<String>, DataError> {
    collect_documents(TextReader::files(files, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_globs_and_bad_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        std::fs::write(d.join("b/c/z.txt"), "zz").unwrap();
        std::fs::write(d.join("b/a.txt"), "aa").unwrap();
        std::fs::write(d.join("b/.hidden"), "h").unwrap();
        std::fs::write(
            d.join("b/d.jsonl"),
            "{\"text\":\"one\"}\n\n{\"text\":\"two\"}\n",
        )
        .unwrap();
        let Resolved::Text(files) = resolve(d.join("b").to_str().unwrap()).unwrap() else {
            panic!()
        };
        let names: Vec<_> = files
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["b/a.txt", "b/c/z.txt", "b/d.jsonl"]);
        let docs = read_documents(&files, TextFields::default()).unwrap();
        assert_eq!(docs, ["aa", "zz", "one", "two"]);
        let content = TextFields {
            text_field: "content".to_string(),
            ..TextFields::default()
        };
        let e = read_documents(&files, content).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1") && e.contains("content"), "{e}");
        let g = format!("{}/b/**/*.txt", d.display());
        assert_eq!(resolve(&g).unwrap(), Resolved::Text(files[..2].to_vec()));
        assert!(matches!(
            resolve(&format!("{}/*.none", d.display())),
            Err(DataError::EmptyGlob { .. })
        ));
        std::fs::create_dir_all(d.join("empty")).unwrap();
        assert!(matches!(
            resolve(d.join("empty").to_str().unwrap()),
            Err(DataError::EmptyFolder { .. })
        ));
        assert!(matches!(
            resolve(d.join("missing").to_str().unwrap()),
            Err(DataError::MissingPath { .. })
        ));
        std::fs::write(d.join("e.txt"), "").unwrap();
        assert!(matches!(
            read_documents(&[d.join("e.txt")], TextFields::default()),
            Err(DataError::EmptyFile { .. })
        ));
        std::fs::write(d.join("u.txt"), b"ok\xffno").unwrap();
        let e = read_documents(&[d.join("u.txt")], TextFields::default()).unwrap_err();
        assert!(matches!(e, DataError::InvalidUtf8 { offset: 2, .. }), "{e}");
        assert!(e.to_string().contains("u.txt") && e.to_string().contains("offset 2"));
        let replace = TextFields {
            replace_invalid_utf8: true,
            ..TextFields::default()
        };
        let ok = read_documents(&[d.join("u.txt")], replace).unwrap();
        assert_eq!(ok, ["ok\u{fffd}no"]);
    }
}
