//! The decoder's behaviour: dynActGLU at its initial values equals SwiGLU, attention is causal,
//! cached decoding equals a full pass, every parameter receives a gradient, and a tiny model of
//! each FFN can memorise a batch.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::Optimizer;
use common::{ids, max_abs_diff, tiny};
use dynact_model::{
    init_model, Checkpoint, DropoutRng, FfnKind, ForwardCtx, Granularity, KvCache, ParamSummary,
};

#[test]
fn dynactglu_at_init_equals_swiglu() {
    let dev = Device::Cpu;
    let x = ids(2, 12, 48, 1);
    let (_a, swiglu) = init_model(&tiny(FfnKind::Swiglu), 7, &dev).unwrap();
    for granularity in [Granularity::PerLayer, Granularity::PerChannel] {
        let mut cfg = tiny(FfnKind::Dynactglu);
        cfg.dynact.granularity = granularity;
        let (_b, dynact) = init_model(&cfg, 7, &dev).unwrap();
        let a = swiglu.forward(&x, &ForwardCtx::EVAL).unwrap();
        let b = dynact.forward(&x, &ForwardCtx::EVAL).unwrap();
        assert!(
            max_abs_diff(&a, &b) < 1e-6,
            "{granularity:?}: {}",
            max_abs_diff(&a, &b)
        );
    }
}

#[test]
fn moving_alpha_changes_dynactglu_output() {
    // Guards the test above: equality must come from alpha=1, beta=0, not from a dead gate.
    let dev = Device::Cpu;
    let x = ids(1, 8, 48, 2);
    let (_a, swiglu) = init_model(&tiny(FfnKind::Swiglu), 7, &dev).unwrap();
    let mut cfg = tiny(FfnKind::Dynactglu);
    cfg.dynact.alpha_init = 0.5;
    cfg.dynact.beta_init = 0.2;
    let (_b, dynact) = init_model(&cfg, 7, &dev).unwrap();
    let a = swiglu.forward(&x, &ForwardCtx::EVAL).unwrap();
    let b = dynact.forward(&x, &ForwardCtx::EVAL).unwrap();
    assert!(max_abs_diff(&a, &b) > 1e-4);
}

#[test]
fn attention_is_causal() {
    let dev = Device::Cpu;
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let (_vm, model) = init_model(&tiny(ffn), 3, &dev).unwrap();
        let a = ids(1, 16, 48, 3);
        // Change every token after position t.
        let t = 9;
        let mut changed: Vec<u32> = a.flatten_all().unwrap().to_vec1().unwrap();
        for v in changed.iter_mut().skip(t + 1) {
            *v = (*v + 5) % 48;
        }
        let b = Tensor::from_vec(changed, (1, 16), &dev).unwrap();
        let la = model.forward(&a, &ForwardCtx::EVAL).unwrap();
        let lb = model.forward(&b, &ForwardCtx::EVAL).unwrap();
        let prefix = max_abs_diff(&la.i((.., ..=t)).unwrap(), &lb.i((.., ..=t)).unwrap());
        let suffix = max_abs_diff(&la.i((.., t + 1..)).unwrap(), &lb.i((.., t + 1..)).unwrap());
        assert!(prefix < 1e-6, "{ffn:?}: logits up to t changed by {prefix}");
        assert!(suffix > 1e-4, "{ffn:?}: later logits did not change");
    }
}

#[test]
fn cached_decoding_equals_full_pass() {
    let dev = Device::Cpu;
    let cfg = tiny(FfnKind::Dynactglu);
    let (varmap, model) = init_model(&cfg, 5, &dev).unwrap();
    // The same weights detached: an inference model's passes take the kernels that only run
    // where nothing is trained (the residual adds fused with the norms).
    let inference = Checkpoint {
        config: cfg.clone(),
        varmap,
    }
    .inference_model(&dev)
    .unwrap();
    let x = ids(2, 10, 48, 4);
    let full = model.forward(&x, &ForwardCtx::EVAL).unwrap();
    for model in [&model, &inference] {
        let mut cache = KvCache::new(2);
        let mut parts = vec![model
            .forward_cached(&x.i((.., ..6)).unwrap(), &mut cache)
            .unwrap()];
        for t in 6..10 {
            parts.push(
                model
                    .forward_cached(&x.i((.., t..t + 1)).unwrap(), &mut cache)
                    .unwrap(),
            );
        }
        let incremental = Tensor::cat(&parts, 1).unwrap();
        assert!(max_abs_diff(&full, &incremental) < 1e-5);
    }
    let inference_full = inference.forward(&x, &ForwardCtx::EVAL).unwrap();
    assert!(max_abs_diff(&full, &inference_full) < 1e-6);
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let dev = Device::Cpu;
    for (ffn, tied) in [
        (FfnKind::Swiglu, false),
        (FfnKind::Dynactglu, false),
        (FfnKind::Dynactglu, true),
    ] {
        let mut cfg = tiny(ffn);
        cfg.tie_word_embeddings = tied;
        cfg.dynact.granularity = Granularity::PerChannel;
        let (varmap, model) = init_model(&cfg, 11, &dev).unwrap();
        let x = ids(2, 12, 48, 5);
        let y = ids(2, 12, 48, 6);
        let grads = model
            .loss(&x, &y, &ForwardCtx::EVAL)
            .unwrap()
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(
            data.len(),
            dynact_model::expected_tensors(&cfg).unwrap().len()
        );
        for (name, var) in data.iter() {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{ffn:?}: no gradient for {name}"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{name}: non-finite gradient"
            );
            let norm: f32 = g.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(norm > 1e-8, "{ffn:?} tied={tied}: zero gradient for {name}");
        }
    }
}

#[test]
fn tiny_models_overfit_one_batch() {
    let dev = Device::Cpu;
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let cfg = tiny(ffn);
        let (varmap, model) = init_model(&cfg, 1, &dev).unwrap();
        let x = ids(4, 16, 48, 7);
        let y = ids(4, 16, 48, 8);
        let params = candle_nn::ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = candle_nn::AdamW::new(varmap.all_vars(), params).unwrap();
        let first = model
            .loss(&x, &y, &ForwardCtx::EVAL)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut last = first;
        for _ in 0..300 {
            let loss = model.loss(&x, &y, &ForwardCtx::EVAL).unwrap();
            last = loss.to_scalar::<f32>().unwrap();
            opt.backward_step(&loss).unwrap();
        }
        assert!(
            last < 0.1 * first,
            "{ffn:?}: loss {first} -> {last}, not a 90% fall"
        );
    }
}

#[test]
fn dropout_is_seeded_and_off_at_eval() {
    let dev = Device::Cpu;
    let mut cfg = tiny(FfnKind::Swiglu);
    cfg.dropout = 0.2;
    let (_vm, model) = init_model(&cfg, 2, &dev).unwrap();
    let x = ids(1, 8, 48, 9);
    let a = model.forward(&x, &ForwardCtx::train(5)).unwrap();
    let b = model.forward(&x, &ForwardCtx::train(5)).unwrap();
    let c = model.forward(&x, &ForwardCtx::train(6)).unwrap();
    let e1 = model.forward(&x, &ForwardCtx::EVAL).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 1e-4);
    assert!(max_abs_diff(&a, &e1) > 1e-4);
}

#[test]
fn a_batch_split_by_rows_draws_the_masks_of_the_whole_batch() {
    // Training splits a batch into row shards run on separate threads; each shard must see
    // the dropout masks its rows get in the whole batch, for both generators.
    let dev = Device::Cpu;
    let mut cfg = tiny(FfnKind::Dynactglu);
    cfg.dropout = 0.3;
    let (_vm, model) = init_model(&cfg, 2, &dev).unwrap();
    let x = ids(5, 8, 48, 11);
    for rng in [DropoutRng::Philox4x32, DropoutRng::Chacha8] {
        let ctx = ForwardCtx::train(9).with_rng(rng);
        let whole = model.forward(&x, &ctx).unwrap();
        let parts: Vec<Tensor> = [(0, 2), (2, 1), (3, 2)]
            .iter()
            .map(|&(first, rows)| {
                let shard = x.narrow(0, first, rows).unwrap();
                model.forward(&shard, &ctx.from_row(first)).unwrap()
            })
            .collect();
        let split = Tensor::cat(&parts, 0).unwrap();
        assert!(max_abs_diff(&whole, &split) < 1e-5, "{rng:?}");
        // And the masks differ from row to row: a shard that started at row 0 would not match.
        let wrong = model.forward(&x.narrow(0, 2, 1).unwrap(), &ctx).unwrap();
        assert!(max_abs_diff(&whole.narrow(0, 2, 1).unwrap(), &wrong) > 1e-3);
    }
}

#[test]
fn dynactglu_adds_exactly_two_parameters_per_layer() {
    let s = ParamSummary::of(&tiny(FfnKind::Swiglu)).unwrap();
    let d = ParamSummary::of(&tiny(FfnKind::Dynactglu)).unwrap();
    assert_eq!(d.total() - s.total(), 2 * 2);
    assert_eq!(d.dynact, 4);
    // 48*32 embed + 2 layers * (q 32*32 + k,v 2*32*16 + o 32*32 + 3*32*64 + 2*32) + 32 + 48*32 head
    assert_eq!(
        s.total(),
        48 * 32 + 2 * (1024 + 1024 + 1024 + 3 * 2048 + 64) + 32 + 48 * 32
    );
    let mut per_channel = tiny(FfnKind::Dynactglu);
    per_channel.dynact.granularity = Granularity::PerChannel;
    assert_eq!(ParamSummary::of(&per_channel).unwrap().dynact, 2 * 2 * 64);
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    let dev = Device::Cpu;
    let (_vm, model) = init_model(&tiny(FfnKind::Dynactglu), 4, &dev).unwrap();
    let x = ids(1, 8, 48, 10);
    let f32_logits = model.forward(&x, &ForwardCtx::EVAL).unwrap();
    let bf16 = model.clone().with_compute_dtype(DType::BF16);
    let bf16_logits = bf16
        .forward(&x, &ForwardCtx::EVAL)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(max_abs_diff(&f32_logits, &bf16_logits) < 0.05);
}
