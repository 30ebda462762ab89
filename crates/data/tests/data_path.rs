//! Integration tests of the data path: text to shards and back, shards from an independent
//! writer, the loader's determinism, restore and rank slices, the evaluation windows, bad
//! input, and the real corpus that ships with the repository (data/tinyshakespeare).

use std::path::{Path, PathBuf};

use dynact_data::shard;
use dynact_data::{
    eval_windows, prepare_dataset, tokenize_source, BatchLoader, DataConfig, DataError,
    LoaderState, TokenStream, Tokenizer,
};

/// Tiny Shakespeare, as shipped in the repository's data/ folder.
fn tiny_shakespeare() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare/input.txt")
}

fn cfg(dir: &Path, source: &str) -> DataConfig {
    DataConfig {
        source: source.to_string(),
        cache_dir: dir.join("cache"),
        ..DataConfig::default()
    }
}

/// The tokenizer's own ids for documents, an end-of-text id between them.
fn reference(t: &Tokenizer, docs: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push(t.eos_id());
        }
        out.extend_from_slice(t.hf().encode_fast(*d, false).unwrap().get_ids());
    }
    out
}

#[test]
fn text_to_shards_and_back_equals_the_tokenizers_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let docs = [
        "First file.\nWith two lines, ünïcödé and 日本語.\n",
        "{\"text\": \"a json record\"}",
        "Second file in a subfolder. <|endoftext|> inside the text.",
    ];
    std::fs::write(src.join("a.txt"), docs[0]).unwrap();
    std::fs::write(
        src.join("b.jsonl"),
        format!("{}\n{{\"text\": \"rec two\"}}\n", docs[1]),
    )
    .unwrap();
    std::fs::write(src.join("sub/c.txt"), docs[2]).unwrap();
    let val = dir.path().join("val.txt");
    std::fs::write(&val, "validation text\nhere").unwrap();
    for tok in ["bytes", "bpe:300"] {
        let mut c = cfg(dir.path(), src.to_str().unwrap());
        c.val_source = Some(val.to_string_lossy().into_owned());
        c.tokenizer = tok.to_string();
        let d = prepare_dataset(&c).unwrap();
        let want = reference(
            &d.tokenizer,
            &[docs[0], "a json record", "rec two", docs[2]],
        );
        assert_eq!(d.train.to_vec(), want, "{tok}");
        assert_eq!(
            d.val.to_vec(),
            reference(&d.tokenizer, &["validation text\nhere"])
        );
        assert_eq!(d.val_bytes, Some(20));
        assert_eq!(
            d.tokenizer.decode(&d.val.to_vec()).unwrap(),
            "validation text\nhere"
        );
        // the shards on disk are valid llm.c shards of exactly the right size
        for p in d.train.paths() {
            let h = shard::read_header(p).unwrap();
            let size = std::fs::metadata(p).unwrap().len();
            assert_eq!(size, 1024 + 2 * h.tokens as u64);
        }
        // the second run reuses the cache
        let again = prepare_dataset(&c).unwrap();
        assert_eq!(again.train.paths(), d.train.paths());
        // the cached tokenizer.json reloads to the same ids
        let saved = d.train.paths()[0].parent().unwrap().join("tokenizer.json");
        let t = Tokenizer::from_file(&saved).unwrap();
        assert_eq!(
            t.encode(docs[2]).unwrap(),
            d.tokenizer.encode(docs[2]).unwrap()
        );
    }
}

#[test]
fn a_corpus_of_many_read_blocks_streams_to_the_ids_of_the_whole_text() {
    // Tiny Shakespeare three times over (3.3 MB): several 1 MiB read blocks and several
    // encoding batches, the cut into train and val inside the one document.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(tiny_shakespeare())
        .unwrap()
        .repeat(3);
    let path = dir.path().join("three.txt");
    std::fs::write(&path, &text).unwrap();
    let chars = text.chars().count();
    let cut = text
        .char_indices()
        .nth((chars as f64 * 0.9).floor() as usize)
        .unwrap()
        .0;
    for tok in ["bytes", "bpe:400"] {
        let mut c = cfg(dir.path(), path.to_str().unwrap());
        c.tokenizer = tok.to_string();
        let d = prepare_dataset(&c).unwrap();
        assert_eq!(
            d.train.to_vec(),
            reference(&d.tokenizer, &[&text[..cut]]),
            "{tok}"
        );
        assert_eq!(
            d.val.to_vec(),
            reference(&d.tokenizer, &[&text[cut..]]),
            "{tok}"
        );
        assert_eq!(d.val_bytes, Some((text.len() - cut) as u64));
        if tok != "bytes" {
            // The BPE trained on the stream is the one trained on the training text whole.
            let whole = Tokenizer::train_bpe([&text[..cut]], 400).unwrap();
            assert_eq!(whole.to_json().unwrap(), d.tokenizer.to_json().unwrap());
        }
    }
}

#[test]
fn builtin_split_is_a_disjoint_tail_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "builtin");
    c.builtin_bytes = 200_000;
    let d = prepare_dataset(&c).unwrap();
    assert!(d.description.contains("synthetic"), "{}", d.description);
    let text = dynact_data::builtin::stories(0, 200_000);
    let all: Vec<u32> = reference(
        &d.tokenizer,
        &text.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    let (train, val) = (d.train.to_vec(), d.val.to_vec());
    // bytes tokenizer: train then val is the whole corpus (the cut falls inside a story, so no
    // end-of-text between the two parts)
    assert_eq!([train.clone(), val.clone()].concat(), all);
    let chars = all.iter().filter(|&&t| t != 256).count();
    let val_chars = val.iter().filter(|&&t| t != 256).count();
    assert_eq!(val_chars, chars - (chars as f64 * 0.9).floor() as usize);
    assert_eq!(d.val_bytes, Some(val_chars as u64));
    let d2 = prepare_dataset(&DataConfig {
        cache_dir: dir.path().join("other-cache"),
        ..c.clone()
    })
    .unwrap();
    assert_eq!(d2.train.to_vec(), train);
}

/// Writes a shard the way llm.c's data_common.py does, without this crate's writer.
fn independent_writer(
    path: &Path,
    magic: i32,
    version: i32,
    count: i32,
    tokens: &[u32],
    width: usize,
) {
    let mut b = Vec::new();
    let mut header = [0i32; 256];
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    for h in header {
        b.extend_from_slice(&h.to_le_bytes());
    }
    for &t in tokens {
        if width == 2 {
            b.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&t.to_le_bytes());
        }
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn shards_from_an_independent_writer_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a: Vec<u32> = (0..1000).map(|i| (i * 37) % 65536).collect();
    let b: Vec<u32> = (0..500).map(|i| 65536 + i * 1000).collect();
    independent_writer(&d.join("a.bin"), 20240520, 1, 1000, &a, 2);
    independent_writer(&d.join("b.bin"), 20240801, 7, 500, &b, 4);
    let s = TokenStream::open(&[d.join("a.bin"), d.join("b.bin")]).unwrap();
    assert_eq!(s.to_vec(), [a.clone(), b].concat());
    // and ours is byte-identical to the independent writer's
    shard::write_shard(&d.join("ours.bin"), &a, 50257).unwrap();
    assert_eq!(
        std::fs::read(d.join("ours.bin")).unwrap(),
        std::fs::read(d.join("a.bin")).unwrap()
    );
    // bad magic, version, token count
    independent_writer(&d.join("m.bin"), 1234, 1, 3, &[1, 2, 3], 2);
    independent_writer(&d.join("v.bin"), 20240520, 2, 3, &[1, 2, 3], 2);
    independent_writer(&d.join("n.bin"), 20240520, 1, 4, &[1, 2, 3], 2);
    for (f, what) in [
        ("m.bin", "magic"),
        ("v.bin", "version"),
        ("n.bin", "4 tokens"),
    ] {
        let e = TokenStream::open(&[d.join(f)]).unwrap_err();
        assert!(matches!(e, DataError::BadShard { .. }), "{e}");
        assert!(
            e.to_string().contains(what) && e.to_string().contains(f),
            "{e}"
        );
    }
    // a .bin source is read without tokenizing; ids at or above the vocabulary are refused
    let c = cfg(d, d.join("a.bin").to_str().unwrap());
    let e = prepare_dataset(&c).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TokenOutOfRange {
                vocab_size: 257,
                ..
            }
        ),
        "{e}"
    );
    let small: Vec<u32> = (0..1000).map(|i| i % 257).collect();
    shard::write_shard(&d.join("small.bin"), &small, 257).unwrap();
    let ds = prepare_dataset(&cfg(d, d.join("small.bin").to_str().unwrap())).unwrap();
    assert_eq!([ds.train.to_vec(), ds.val.to_vec()].concat(), small);
    assert_eq!(ds.val.len(), 100);
    let t = tokenize_source(
        d.join("small.bin").to_str().unwrap(),
        &Tokenizer::bytes(),
        &c,
    )
    .unwrap();
    assert_eq!(t.len(), 1000);
}

#[test]
fn loader_is_deterministic_restorable_and_rank_slices_cover_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "builtin");
    c.builtin_bytes = 150_000;
    let d = prepare_dataset(&c).unwrap();
    let (t, b) = (64, 8);
    let run = |n: usize| {
        let mut l = BatchLoader::new(d.train.clone(), t, b, 42, 0, 1).unwrap();
        (0..n).map(|_| l.next_batch()).collect::<Vec<_>>()
    };
    let first = run(700);
    assert_eq!(first, run(700));
    // stop after k batches, save, restore into a new loader: batch k+j is the same
    let mut l = BatchLoader::new(d.train.clone(), t, b, 42, 0, 1).unwrap();
    for _ in 0..333 {
        l.next_batch();
    }
    let s: LoaderState = serde_json::from_str(&serde_json::to_string(&l.state()).unwrap()).unwrap();
    assert!(
        s.epoch >= 1,
        "{s:?}: the run should cross an epoch boundary"
    );
    let mut r = BatchLoader::new(d.train.clone(), t, b, 42, 0, 1).unwrap();
    r.restore(&s).unwrap();
    for want in &first[333..] {
        assert_eq!(&r.next_batch(), want);
    }
    // another seed, another order
    let mut o = BatchLoader::new(d.train.clone(), t, b, 43, 0, 1).unwrap();
    assert_ne!(o.next_batch(), first[0]);
    // rank slices: disjoint, together the whole epoch (count divisible by world size)
    let stream = TokenStream::from_tokens((0..(3 * 50 * 16 + 1) as u32).collect());
    let mut all = Vec::new();
    for rank in 0..3 {
        let l = BatchLoader::new(stream.clone(), 16, 4, 9, rank, 3).unwrap();
        assert_eq!(l.windows_per_epoch(), 50);
        all.extend(l.epoch_windows(5));
    }
    all.sort();
    assert_eq!(all, (0..150).collect::<Vec<_>>());
    // with a remainder, slices stay disjoint and equal-sized
    let stream = TokenStream::from_tokens((0..(152 * 16 + 1) as u32).collect());
    let mut all = Vec::new();
    for rank in 0..3 {
        let mut l = BatchLoader::new(stream.clone(), 16, 5, 9, rank, 3).unwrap();
        assert_eq!(l.windows_per_epoch(), 50);
        let w = l.epoch_windows(0);
        let batch = l.next_batch();
        assert_eq!(batch.inputs[0] as usize, w[0] * 16);
        all.extend(w);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 150);
}

#[test]
fn evaluation_windows_on_a_hand_checked_stream() {
    // N = 7, T = 2: windows [0,1]->[1,2], [2,3]->[3,4], [4,5]->[5,6]; no tail.
    let s = TokenStream::from_tokens(vec![10, 11, 12, 13, 14, 15, 16]);
    let w = eval_windows(s.len(), 2).unwrap();
    assert_eq!((w.count, w.tail_tokens, w.scored_tokens()), (3, 0, 6));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    w.window(&s, 1, &mut x, &mut y);
    assert_eq!((x.as_slice(), y.as_slice()), (&[12, 13][..], &[13, 14][..]));
    // N = 8, T = 3: two windows (targets 1..=6), token 7 is the reported tail.
    let w = eval_windows(8, 3).unwrap();
    assert_eq!((w.count, w.tail_tokens), (2, 1));
    let e = eval_windows(5, 8).unwrap_err().to_string();
    assert!(e.contains("5 tokens") && e.contains("needs 9"), "{e}");
}

#[test]
fn bad_input_gets_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = |source: &str| prepare_dataset(&cfg(d, source)).unwrap_err().to_string();
    assert!(err(d.join("nope.txt").to_str().unwrap()).contains("no such file"));
    std::fs::write(d.join("empty.txt"), "").unwrap();
    assert!(err(d.join("empty.txt").to_str().unwrap()).contains("is empty"));
    std::fs::create_dir_all(d.join("void")).unwrap();
    assert!(err(d.join("void").to_str().unwrap()).contains("no files"));
    std::fs::write(d.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    let e = err(d.join("latin1.txt").to_str().unwrap());
    assert!(
        e.contains("latin1.txt") && e.contains("offset 3") && e.contains("replace_invalid_utf8"),
        "{e}"
    );
    let mut c = cfg(d, d.join("latin1.txt").to_str().unwrap());
    c.replace_invalid_utf8 = true;
    c.val_fraction = 0.5;
    assert!(prepare_dataset(&c).is_ok());
    let mut c = cfg(d, "builtin");
    c.tokenizer = d
        .join("missing-tokenizer.json")
        .to_string_lossy()
        .into_owned();
    assert!(prepare_dataset(&c)
        .unwrap_err()
        .to_string()
        .contains("no such file"));
    c.tokenizer = "bpe:12".into();
    assert!(matches!(
        prepare_dataset(&c),
        Err(DataError::BadTokenizerSpec { .. })
    ));
    // a corpus shorter than one window
    std::fs::write(d.join("short.txt"), "tiny").unwrap();
    let t = tokenize_source(
        d.join("short.txt").to_str().unwrap(),
        &Tokenizer::bytes(),
        &c,
    )
    .unwrap();
    let e = BatchLoader::new(t, 64, 1, 0, 0, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has 4 tokens") && e.contains("needs 65"), "{e}");
}

#[test]
fn real_text_tiny_shakespeare() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_shakespeare();
    let text = std::fs::read_to_string(&path).unwrap();
    let d = prepare_dataset(&cfg(dir.path(), path.to_str().unwrap())).unwrap();
    // nanoGPT's split: the first int(n*0.9) characters train, the rest validate
    let n = text.chars().count();
    let cut = (n as f64 * 0.9) as usize;
    assert_eq!(d.train.len(), cut);
    assert_eq!(d.val.len(), n - cut);
    assert_eq!(d.tokenizer.decode(&d.val.to_vec()).unwrap(), &text[cut..]);
    // a BPE trained on it: chunked parallel encoding equals the whole-text encoding
    let mut c = cfg(dir.path(), path.to_str().unwrap());
    c.tokenizer = "bpe:512".into();
    let b = prepare_dataset(&c).unwrap();
    let whole = b.tokenizer.hf().encode_fast(&text[..cut], false).unwrap();
    assert_eq!(b.train.to_vec(), whole.get_ids());
    let lens = b.tokenizer.token_byte_lengths();
    let bytes: u64 = b
        .val
        .to_vec()
        .iter()
        .map(|&i| lens[i as usize] as u64)
        .sum();
    assert_eq!(Some(bytes), b.val_bytes);
    let w = eval_windows(b.val.len(), 256).unwrap();
    assert_eq!(w.count * 256 + w.tail_tokens + 1, b.val.len());
}
