//! A checkpoint folder (config.json, model.safetensors and tokenizer.json, cut from one input
//! at 0xFF bytes), loaded as eval-ppl and generate load a local or Hub model, then run on a
//! few tokens.
#![no_main]

use candle_core::{Device, Tensor};
use dynact_trainer::language_model::Network;
use dynact_trainer::model_source::{load_model, SourceOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = dynact_fuzz::parts(data, 3);
    let dir = dynact_fuzz::fresh_dir("model");
    for (name, bytes) in ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .zip(&parts)
    {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let Ok(loaded) = load_model(
        dir.to_str().unwrap(),
        &SourceOptions::default(),
        &Device::Cpu,
    ) else {
        return;
    };
    if let Network::Ours(model) = &loaded.model {
        let vocab = loaded.info.vocab_size.max(1) as u32;
        let ids: Vec<u32> = (0..4u32).map(|i| i % vocab).collect();
        let ids = Tensor::new(&ids[..3], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let targets = Tensor::new(&[1u32 % vocab, 2 % vocab, 3 % vocab], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let _ = model.token_nll(&ids, &targets);
    }
});
