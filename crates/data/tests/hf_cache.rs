//! hf:// sources read from a Hugging Face cache folder that the test lays out itself, with
//! HF_HUB_OFFLINE=1 (own test binary, since it sets process-wide environment variables).

use dynact_data::hub::{self, RepoKind};
use dynact_data::{prepare_dataset, DataConfig, DataError};

#[test]
fn hf_dataset_file_from_an_offline_cache() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let repo = home.join("hub/datasets--someone--stories");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit).join("data");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let text = "Once upon a time there was a cache. ".repeat(50);
    std::fs::write(snap.join("train.txt"), &text).unwrap();
    std::env::set_var("HF_HOME", &home);
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let p = hub::hf_file("someone/stories", RepoKind::Dataset, None, "data/train.txt").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    // a commit hash as revision finds the snapshot directly
    let q = hub::hf_file(
        "someone/stories",
        RepoKind::Dataset,
        Some(commit),
        "data/train.txt",
    )
    .unwrap();
    assert_eq!(p, q);

    let cfg = DataConfig {
        source: "hf://datasets/someone/stories/data/train.txt".into(),
        cache_dir: dir.path().join("cache"),
        ..DataConfig::default()
    };
    let d = prepare_dataset(&cfg).unwrap();
    assert_eq!(d.train.len() + d.val.len(), text.len());

    // not in the cache while offline: one error that says how to get it
    let e = prepare_dataset(&DataConfig {
        source: "hf://datasets/someone/stories/data/missing.txt@v2".into(),
        ..cfg.clone()
    })
    .unwrap_err();
    assert!(matches!(e, DataError::HfNotCached(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("HF_HUB_OFFLINE")
            && msg.contains("huggingface-cli download --repo-type dataset someone/stories data/missing.txt --revision v2"),
        "{msg}"
    );
}
