//! llm.c `.bin` token shards: the header check, the mapping, and reading every token.
#![no_main]

use dynact_data::TokenStream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = dynact_fuzz::fresh_dir("shard");
    let path = dir.join("a.bin");
    std::fs::write(&path, data).unwrap();
    if let Ok(s) = TokenStream::open(&[path.clone(), path]) {
        let v = s.to_vec();
        assert_eq!(v.len(), s.len());
        assert_eq!(v.iter().copied().max().unwrap_or(0), s.max_token());
        let _ = s.check_vocab(300, "fuzz");
    }
});
