//! Text sources: the same bytes as a plain text file and as a JSONL file, read as a stream
//! (UTF-8 errors reported or replaced), split into train and validation and tokenized.
#![no_main]

use dynact_data::pretokenize::{Part, SplitRouter, StreamTokenizer, TokenSink};
use dynact_data::text_reader::{TextFields, TextReader};
use dynact_data::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = dynact_fuzz::fresh_dir("text");
    let txt = dir.join("a.txt");
    let jsonl = dir.join("a.jsonl");
    std::fs::write(&txt, data).unwrap();
    std::fs::write(&jsonl, data).unwrap();
    let tokenizer = Tokenizer::bytes();
    for replace in [false, true] {
        let fields = TextFields {
            replace_invalid_utf8: replace,
            ..TextFields::default()
        };
        let files = [txt.clone(), jsonl.clone()];
        let Ok(scan) = dynact_data::pretokenize::scan(TextReader::files(&files, fields.clone())) else {
            continue;
        };
        let hidden = indicatif::ProgressBar::hidden;
        let mut train = StreamTokenizer::new(&tokenizer, TokenSink::Memory(Vec::new()), hidden());
        let mut val = StreamTokenizer::new(&tokenizer, TokenSink::Memory(Vec::new()), hidden());
        let mut router = SplitRouter::new(scan.chars, 0.1);
        for e in TextReader::files(&files, fields) {
            let e = e.expect("the second pass reads what the first did");
            router
                .route(e, &mut |part, e| match part {
                    Part::Train => train.event(e),
                    Part::Val => val.event(e),
                })
                .unwrap();
        }
        let (_, train_bytes) = train.finish().unwrap();
        let (_, val_bytes) = val.finish().unwrap();
        assert_eq!(train_bytes + val_bytes, scan.bytes);
    }
});
