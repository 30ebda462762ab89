//! Files from the Hugging Face Hub through `hf-hub`, kept in the usual Hugging Face cache so
//! that Python tools and this project share downloads.
//!
//! Environment, as the Python `huggingface_hub` reads it: the cache is `HF_HUB_CACHE`, else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE=1` means never touch the
//! network (a file not in the cache is then an error saying how to fetch it); `HF_TOKEN` (else
//! the token file `HF_HOME/token`) authenticates; `HF_ENDPOINT` changes the server. A file
//! already in the cache is used without asking the network; when the network fails, the
//! cache is tried before giving up.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::DataError;

/// Which kind of Hub repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// A parsed `hf://` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfUri {
    pub kind: RepoKind,
    /// "OWNER/NAME"
    pub repo_id: String,
    /// The file inside the repository, if the path names one.
    pub path: Option<String>,
    pub revision: Option<String>,
}

/// Parses `hf://datasets/OWNER/NAME/PATH[@REVISION]` (a dataset file) or
/// `hf://OWNER/NAME[/PATH][@REVISION]` (a model repository, optionally one file in it).
pub fn parse_hf_uri(uri: &str) -> Result<HfUri, DataError> {
    let bad = |reason: &str| DataError::BadHfUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let rest = uri
        .strip_prefix("hf://")
        .ok_or_else(|| bad("it does not start with hf://"))?;
    let (rest, revision) = match rest.rsplit_once('@') {
        Some((r, rev)) if !rev.is_empty() => (r, Some(rev.to_string())),
        Some(_) => return Err(bad("nothing after @")),
        None => (rest, None),
    };
    let (kind, rest) = match rest.strip_prefix("datasets/") {
        Some(r) => (RepoKind::Dataset, r),
        None => (
            RepoKind::Model,
            rest.strip_prefix("models/").unwrap_or(rest),
        ),
    };
    let mut parts = rest.splitn(3, '/');
    let owner = parts.next().unwrap_or("");
    let name = parts.next().unwrap_or("");
    if owner.is_empty() || name.is_empty() {
        return Err(bad("the repository must be OWNER/NAME"));
    }
    let path = parts
        .next()
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty());
    if kind == RepoKind::Dataset && path.is_none() {
        return Err(bad(
            "a dataset path must name a file: hf://datasets/OWNER/NAME/PATH",
        ));
    }
    Ok(HfUri {
        kind,
        repo_id: format!("{owner}/{name}"),
        path,
        revision,
    })
}

/// The Hugging Face hub cache folder (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// True when `HF_HUB_OFFLINE` is set to 1/true/yes/on.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn hf_type(kind: RepoKind) -> RepoType {
    match kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    }
}

/// Looks `filename` up in the cache at `cache` without the network: through `refs/REVISION`,
/// or directly in `snapshots/REVISION` when the revision is a commit hash.
pub fn cached_file(
    cache: &Path,
    repo_id: &str,
    kind: RepoKind,
    revision: &str,
    filename: &str,
) -> Option<PathBuf> {
    let repo = Repo::with_revision(repo_id.to_string(), hf_type(kind), revision.to_string());
    if let Some(p) = Cache::new(cache.to_path_buf())
        .repo(repo.clone())
        .get(filename)
    {
        return Some(p);
    }
    let p = cache
        .join(repo.folder_name())
        .join("snapshots")
        .join(revision)
        .join(filename);
    p.is_file().then_some(p)
}

/// The local path of `filename` in repository `repo_id` at `revision` (default "main"),
/// downloading it into the cache unless it is there already or `HF_HUB_OFFLINE` is set.
pub fn hf_file(
    repo_id: &str,
    repo_type: RepoKind,
    revision: Option<&str>,
    filename: &str,
) -> Result<PathBuf, DataError> {
    let revision = revision.unwrap_or("main");
    let cache = cache_dir();
    if let Some(p) = cached_file(&cache, repo_id, repo_type, revision, filename) {
        return Ok(p);
    }
    let not_cached = |why: String| {
        DataError::HfNotCached(Box::new(crate::error::HfNotCached {
            dataset: repo_type == RepoKind::Dataset,
            repo: repo_id.to_string(),
            file: filename.to_string(),
            revision: revision.to_string(),
            cache: cache.clone(),
            why,
        }))
    };
    if offline() {
        return Err(not_cached("HF_HUB_OFFLINE is set".to_string()));
    }
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if token.is_some() {
        builder = builder.with_token(token);
    }
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let repo = Repo::with_revision(
        repo_id.to_string(),
        hf_type(repo_type),
        revision.to_string(),
    );
    let fetched = builder.build().and_then(|api| api.repo(repo).get(filename));
    match fetched {
        Ok(p) => Ok(p),
        Err(e) => cached_file(&cache, repo_id, repo_type, revision, filename).ok_or_else(|| {
            not_cached(format!(
                "the download failed ({e}; check the name, the network and HF_TOKEN for private repositories)"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dataset_and_model_uris() {
        assert_eq!(
            parse_hf_uri("hf://datasets/karpathy/tiny/data/train.txt@v1").unwrap(),
            HfUri {
                kind: RepoKind::Dataset,
                repo_id: "karpathy/tiny".into(),
                path: Some("data/train.txt".into()),
                revision: Some("v1".into())
            }
        );
        let m = parse_hf_uri("hf://owner/model").unwrap();
        assert_eq!((m.kind, m.path, m.revision), (RepoKind::Model, None, None));
        assert!(parse_hf_uri("hf://datasets/owner/name").is_err());
        assert!(parse_hf_uri("hf://owner").is_err());
        assert!(parse_hf_uri("http://x/y").is_err());
    }
}
