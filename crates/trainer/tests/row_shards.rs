//! A micro-batch split into row shards that run at once computes the loss and gradients of the
//! whole batch, dropout masks included; and an evaluation batch scored in shards scores every
//! token as the whole batch does.

mod common;

use candle_core::{Device, Tensor, Var};
use common::max_abs;
use dynact_model::{init_model, FfnKind, ForwardCtx, ModelConfig};
use dynact_trainer::row_shards::{loss_and_grads, token_nll};

fn model_config(ffn: FfnKind) -> ModelConfig {
    ModelConfig {
        ffn,
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 16,
        dropout: 0.2,
        ..ModelConfig::default()
    }
}

fn ids(rows: usize, t: usize, vocab: u32, salt: u32) -> Tensor {
    let v: Vec<u32> = (0..(rows * t) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 9) % vocab)
        .collect();
    Tensor::from_vec(v, (rows, t), &Device::Cpu).unwrap()
}

#[test]
fn shards_compute_the_loss_and_gradients_of_the_whole_batch() {
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let cfg = model_config(ffn);
        let (varmap, model) = init_model(&cfg, 3, &Device::Cpu).unwrap();
        let params: Vec<Var> = varmap.all_vars();
        let (x, y) = (ids(5, 16, 61, 1), ids(5, 16, 61, 2));
        let ctx = ForwardCtx::train(77);
        let scalar = |t: Tensor| t.to_scalar::<f32>().unwrap();
        let (whole_loss, whole) = loss_and_grads(&model, &x, &y, ctx, 0.5, 1, &params).unwrap();
        let whole_loss = scalar(whole_loss);
        for shards in [2, 3, 5] {
            let (loss, grads) = loss_and_grads(&model, &x, &y, ctx, 0.5, shards, &params).unwrap();
            let loss = scalar(loss);
            assert!(
                (loss - whole_loss).abs() < 1e-5 * whole_loss,
                "{ffn:?}, {shards} shards: loss {loss} against {whole_loss}"
            );
            for var in &params {
                let (a, b) = (whole.get(var).unwrap(), grads.get(var).unwrap());
                let scale = max_abs(a).max(1e-6);
                let diff = max_abs(&(a - b).unwrap());
                assert!(
                    diff < 1e-4 * scale,
                    "{ffn:?}, {shards} shards, a {:?} gradient: off by {diff} of {scale}",
                    var.shape()
                );
            }
        }
        // The masks really are drawn per row: another seed changes the loss.
        let (other, _) =
            loss_and_grads(&model, &x, &y, ForwardCtx::train(78), 0.5, 2, &params).unwrap();
        assert!(
            (scalar(other) - whole_loss).abs() > 1e-4,
            "{ffn:?}: dropout had no effect"
        );
    }
}

#[test]
fn sharded_scores_equal_the_whole_batch() {
    let mut cfg = model_config(FfnKind::Dynactglu);
    cfg.dropout = 0.0;
    let (_varmap, model) = init_model(&cfg, 4, &Device::Cpu).unwrap();
    let (x, y) = (ids(7, 16, 61, 3), ids(7, 16, 61, 4));
    let whole = model.token_nll(&x, &y).unwrap();
    let sharded = token_nll(&model, &x, &y).unwrap();
    assert_eq!(sharded.dims(), whole.dims());
    assert!(max_abs(&(sharded - &whole).unwrap()) < 1e-5);
}
