//! tokenizer.json files: loading, then encoding and decoding a fixed text with the result.
#![no_main]

use dynact_data::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = dynact_fuzz::fresh_dir("tokenizer");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(t) = Tokenizer::from_file(&path) {
        if let Ok(ids) = t.encode("Hello, world! <|endoftext|> é\n") {
            let _ = t.decode(&ids);
        }
        let _ = t.token_byte_lengths();
    }
});
