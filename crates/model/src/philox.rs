//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
//! counter-based generator of Random123, cuRAND and PyTorch's CUDA dropout: every output block
//! is a pure function of (counter, key), so element i of a dropout mask can be drawn by any
//! thread of any device in any order, and the CPU and a GPU kernel draw the same bits.
//!
//! Dropout keys Philox with the mask's 64-bit seed (run seed, step, micro-batch and site mixed
//! by [`crate::ForwardCtx::seed_for`]) and counts blocks of four elements: element i is lane
//! i % 4 of block i / 4, kept when that word is below `keep * 2^32`.

use rayon::prelude::*;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: four random words for `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The word below which an element is kept with probability `keep` (in (0, 1]).
pub fn keep_threshold(keep: f64) -> u64 {
    ((keep * 4_294_967_296.0).floor() as u64).min(1 << 32)
}

/// The inverted-dropout mask of `n` elements for `seed`: `scale` where kept, 0 elsewhere.
pub fn dropout_mask(seed: u64, n: usize, keep: f64, scale: f32) -> Vec<f32> {
    dropout_mask_from(seed, 0, n, keep, scale)
}

/// Elements `first..first + n` of the mask [`dropout_mask`] draws for `seed`: what one shard of
/// a batch split by rows uses, so that the split draws the masks of the whole batch.
pub fn dropout_mask_from(seed: u64, first: u64, n: usize, keep: f64, scale: f32) -> Vec<f32> {
    let mut mask = vec![0f32; n];
    for_each_element(seed, first, keep, &mut mask, |_, kept| match kept {
        true => scale,
        false => 0.0,
    });
    mask
}

/// `out[i] = x[i] * scale` where element `first + i` of the mask for `seed` is kept, else 0:
/// inverted dropout in one pass, the CPU twin of `kernels/philox_dropout.cu`.
pub fn apply_dropout_from(
    seed: u64,
    first: u64,
    keep: f64,
    scale: f32,
    x: &[f32],
    out: &mut [f32],
) {
    assert_eq!(x.len(), out.len(), "dropout: input and output lengths");
    for_each_element(seed, first, keep, out, |i, kept| match kept {
        true => x[i] * scale,
        false => 0.0,
    });
}

/// `out[i] = value(i, kept)` for the elements `first..` of the mask for `seed`, in parallel.
fn for_each_element(
    seed: u64,
    first: u64,
    keep: f64,
    out: &mut [f32],
    value: impl Fn(usize, bool) -> f32 + Sync,
) {
    const CHUNK: usize = 4 * 1024;
    let key = [seed as u32, (seed >> 32) as u32];
    let threshold = keep_threshold(keep);
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * CHUNK;
            let (mut block, mut words) = (u64::MAX, [0u32; 4]);
            for (i, o) in out.iter_mut().enumerate() {
                let element = first + (start + i) as u64;
                if element / 4 != block {
                    block = element / 4;
                    words = philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], key);
                }
                *o = value(
                    start + i,
                    (words[(element % 4) as usize] as u64) < threshold,
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random123_known_answers() {
        // tests/kat_vectors of Random123 1.14: counter, key, output.
        let kat = [
            (
                [0u32; 4],
                [0u32; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (counter, key, want) in kat {
            assert_eq!(philox4x32_10(counter, key), want);
        }
    }

    #[test]
    fn masks_are_pinned_keep_their_rate_and_do_not_depend_on_chunking() {
        // Fixed keys give fixed bits: the first mask words of seed 42 at keep 0.5.
        let m = dropout_mask(42, 8, 0.5, 2.0);
        let key = [42u32, 0];
        let words: Vec<u32> = (0..2u32)
            .flat_map(|b| philox4x32_10([b, 0, 0, 0], key))
            .collect();
        for (v, w) in m.iter().zip(&words) {
            assert_eq!(*v, if (*w as u64) < 1 << 31 { 2.0 } else { 0.0 });
        }
        // Element i is the same whatever the mask's length (one thread's chunk or another's).
        let long = dropout_mask(7, 20_003, 0.9, 1.0 / 0.9);
        let short = dropout_mask(7, 5_001, 0.9, 1.0 / 0.9);
        assert_eq!(long[..5_001], short[..]);
        // Any slice drawn on its own equals that slice of the whole mask, at any alignment.
        for (first, n) in [
            (0, 20_003),
            (1, 7),
            (3, 4_097),
            (4_095, 9_000),
            (13_331, 6_672),
        ] {
            let part = dropout_mask_from(7, first as u64, n, 0.9, 1.0 / 0.9);
            assert_eq!(part[..], long[first..first + n], "slice {first}+{n}");
        }
        // The keep rate and the scale.
        let n = 1_000_000;
        for keep in [0.5, 0.8, 0.9] {
            let scale = (1.0 / keep) as f32;
            let m = dropout_mask(123, n, keep, scale);
            assert!(m.iter().all(|&v| v == 0.0 || v == scale));
            let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / n as f64;
            // Four standard deviations of a binomial rate over a million draws.
            let sd = (keep * (1.0 - keep) / n as f64).sqrt();
            assert!((kept - keep).abs() < 4.0 * sd, "keep {keep}: {kept}");
            let mean = m.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            assert!(
                (mean - 1.0).abs() < 4.0 * sd / keep,
                "keep {keep}: mean {mean}"
            );
        }
        assert_eq!(keep_threshold(1.0), 1 << 32);
    }
}
