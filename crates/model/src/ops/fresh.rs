//! Op outputs written once: a fresh vector is handed out in chunks that nothing has written
//! yet, and each chunk turns into f32s only by being filled in full (by an iterator, or by a
//! plain loop over its slots that promises so, unsafely). `vec![0f32; n]` wrote
//! every output twice, zeros first (the allocator's memset: 4% of an evaluation pass, 5-6%
//! of a training step, perf on micro).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::rows_per_task;

/// A chunk of a fresh output that nothing has written yet. It becomes f32s through
/// [`Fresh::fill`], [`Fresh::fill_rows`], [`fill_row_pairs`] (which write every element) or,
/// for a plain loop that writes every slot, [`Fresh::into_slots`] and the unsafe
/// [`Fresh::assume_filled`].
pub(crate) struct Fresh<'a>(&'a mut [MaybeUninit<f32>]);

/// Proof that the [`Fresh`] chunk of lifetime `'a` was filled: what the closure of
/// [`par_fresh_chunks`] returns for each chunk. The lifetime (invariant) ties it to that
/// chunk: a closure that must return `Filled<'c>` for a chunk `Fresh<'c>` of any lifetime
/// cannot hand back a proof kept from elsewhere. Its address and length are checked as well.
pub(crate) struct Filled<'a>((usize, usize), PhantomData<fn(&'a ()) -> &'a ()>);

impl Filled<'_> {
    fn of(slots: &[MaybeUninit<f32>]) -> Self {
        Filled((slots.as_ptr() as usize, slots.len()), PhantomData)
    }
}

impl<'a> Fresh<'a> {
    /// Writes `values` into the chunk, which must be exactly as many as its elements (else
    /// panics), and returns it as f32s, with the proof.
    #[inline(always)]
    pub fn fill(self, values: impl ExactSizeIterator<Item = f32>) -> (&'a mut [f32], Filled<'a>) {
        assert_eq!(
            values.len(),
            self.0.len(),
            "a fresh chunk was not filled in full"
        );
        // Counted as well: the soundness of what follows may not rest on a safe trait's len.
        let mut written = 0;
        for (slot, v) in self.0.iter_mut().zip(values) {
            slot.write(v);
            written += 1;
        }
        assert_eq!(
            written,
            self.0.len(),
            "a fresh chunk was not filled in full"
        );
        let filled = Filled::of(self.0);
        // SAFETY: every element was written just now, and MaybeUninit<f32> has f32's layout.
        let init = unsafe { &mut *(self.0 as *mut [MaybeUninit<f32>] as *mut [f32]) };
        (init, filled)
    }

    /// The chunk's slots, for a plain loop that writes every one of them, then
    /// [`Fresh::assume_filled`]: inside a `wide_fma!` wrapper such a loop compiles at the
    /// wrapper's vector width for sure, where a closure given to [`Fresh::fill`] does only if
    /// the compiler inlines it (see `ops::exp`).
    #[inline(always)]
    pub fn into_slots(self) -> &'a mut [MaybeUninit<f32>] {
        self.0
    }

    /// `slots` (from [`Fresh::into_slots`]) as f32s, with the proof.
    ///
    /// # Safety
    /// Every element of `slots` was written.
    #[inline(always)]
    pub unsafe fn assume_filled(slots: &'a mut [MaybeUninit<f32>]) -> (&'a mut [f32], Filled<'a>) {
        let filled = Filled::of(slots);
        // SAFETY: every element was written (the caller's promise), and MaybeUninit<f32> has
        // f32's layout.
        let init = unsafe { &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32]) };
        (init, filled)
    }

    /// Fills the chunk row by row, rows of `width` (the last one shorter): `fill_row(r, row)`
    /// for each in order.
    #[inline(always)]
    pub fn fill_rows(
        self,
        width: usize,
        mut fill_row: impl for<'r> FnMut(usize, Fresh<'r>) -> Filled<'r>,
    ) -> (&'a mut [f32], Filled<'a>) {
        for (r, slots) in self.0.chunks_mut(width.max(1)).enumerate() {
            let at = Filled::of(slots).0;
            let Filled(filled, _) = fill_row(r, Fresh(slots));
            assert_eq!(filled, at, "row {r}: the closure filled another row");
        }
        let filled = Filled::of(self.0);
        // SAFETY: every row was filled (the assertions above), and MaybeUninit<f32> has f32's
        // layout.
        let init = unsafe { &mut *(self.0 as *mut [MaybeUninit<f32>] as *mut [f32]) };
        (init, filled)
    }
}

/// Fills two chunks of one length row by row, rows of `width` (the last one shorter):
/// `fill_row(r, row of a, row of b)` for each in order. [`Fresh::fill_rows`] for an op with
/// two outputs per row.
#[inline(always)]
pub(crate) fn fill_row_pairs<'a, 'b>(
    (a, b): (Fresh<'a>, Fresh<'b>),
    width: usize,
    mut fill_row: impl for<'r, 's> FnMut(usize, Fresh<'r>, Fresh<'s>) -> (Filled<'r>, Filled<'s>),
) -> (Filled<'a>, Filled<'b>) {
    assert_eq!(a.0.len(), b.0.len(), "row pairs of two lengths");
    let width = width.max(1);
    for (r, (row_a, row_b)) in a.0.chunks_mut(width).zip(b.0.chunks_mut(width)).enumerate() {
        let at = (Filled::of(row_a).0, Filled::of(row_b).0);
        let (Filled(filled_a, _), Filled(filled_b, _)) = fill_row(r, Fresh(row_a), Fresh(row_b));
        assert_eq!(
            (filled_a, filled_b),
            at,
            "row {r}: the closure filled other rows"
        );
    }
    // Every row of both was filled (the assertions above).
    (Filled::of(a.0), Filled::of(b.0))
}

/// A vector of `len` f32 in chunks of `chunk` (the last one shorter), each filled by
/// `fill(its index range, chunk)`, in parallel tasks of about 16K elements.
pub(crate) fn par_fresh_chunks(
    len: usize,
    chunk: usize,
    fill: impl for<'c> Fn(Range<usize>, Fresh<'c>) -> Filled<'c> + Sync,
) -> Vec<f32> {
    par_fresh_chunks_in_tasks(len, chunk, rows_per_task(chunk), fill)
}

/// [`par_fresh_chunks`] where each chunk may be a task of its own: chunks of much work each
/// (attention's heads or batch elements), which are few enough that tasks of 16K elements
/// would leave threads idle.
pub(crate) fn par_fresh_chunks_each(
    len: usize,
    chunk: usize,
    fill: impl for<'c> Fn(Range<usize>, Fresh<'c>) -> Filled<'c> + Sync,
) -> Vec<f32> {
    par_fresh_chunks_in_tasks(len, chunk, 1, fill)
}

/// [`par_fresh_chunks`] in tasks of at least `chunks_per_task` chunks.
fn par_fresh_chunks_in_tasks(
    len: usize,
    chunk: usize,
    chunks_per_task: usize,
    fill: impl for<'c> Fn(Range<usize>, Fresh<'c>) -> Filled<'c> + Sync,
) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .with_min_len(chunks_per_task)
        .for_each(|(i, slots)| {
            let at = Filled::of(slots).0;
            let range = i * chunk..i * chunk + slots.len();
            // The proof's lifetime is this chunk's; its address is checked too.
            let Filled(filled, _) = fill(range, Fresh(slots));
            assert_eq!(filled, at, "chunk {i}: the closure filled another chunk");
        });
    // SAFETY: the chunks cover 0..len, and each was filled (the assertions above; a panic in
    // any task propagates before this line).
    unsafe { out.set_len(len) };
    out
}

/// [`par_fresh_chunks`] of two parts of `len` each, one vector [first; second]: `fill` gets the
/// i-th chunk of both (an op with two outputs of one shape, such as a gate's two gradients).
pub(crate) fn par_fresh_pairs(
    len: usize,
    chunk: usize,
    fill: impl for<'c, 'd> Fn(Range<usize>, Fresh<'c>, Fresh<'d>) -> (Filled<'c>, Filled<'d>) + Sync,
) -> Vec<f32> {
    par_fresh_pairs_with(len, chunk, 0, |range, a, b| {
        let (a, b) = fill(range, a, b);
        (a, b, ())
    })
    .0
}

/// [`par_fresh_pairs`] whose `fill` also returns a value per chunk (a partial sum, say): those,
/// in chunk order, beside the vector, which has room for `spare` more elements after its
/// 2 `len` (an op's other outputs, pushed by the caller).
pub(crate) fn par_fresh_pairs_with<T: Send>(
    len: usize,
    chunk: usize,
    spare: usize,
    fill: impl for<'c, 'd> Fn(Range<usize>, Fresh<'c>, Fresh<'d>) -> (Filled<'c>, Filled<'d>, T) + Sync,
) -> (Vec<f32>, Vec<T>) {
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(2 * len + spare);
    let (first, second) = out.spare_capacity_mut()[..2 * len].split_at_mut(len);
    let values = first
        .par_chunks_mut(chunk)
        .zip(second.par_chunks_mut(chunk))
        .enumerate()
        .with_min_len(rows_per_task(chunk))
        .map(|(i, (a, b))| {
            let at = (Filled::of(a).0, Filled::of(b).0);
            let range = i * chunk..i * chunk + a.len();
            let (Filled(filled_a, _), Filled(filled_b, _), value) = fill(range, Fresh(a), Fresh(b));
            assert_eq!(
                (filled_a, filled_b),
                at,
                "chunk {i}: the closure filled others"
            );
            value
        })
        .collect();
    // SAFETY: the chunks of both parts cover 0..2 len, and each was filled, as in
    // par_fresh_chunks.
    unsafe { out.set_len(2 * len) };
    (out, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_pairs_are_filled_in_order_and_each_row_by_its_own_fill() {
        // Rows of 3 in chunks of 7 (a short last row), both outputs.
        let out = par_fresh_pairs(14, 7, |range, a, b| {
            fill_row_pairs((a, b), 3, |r, row_a, row_b| {
                let at = range.start + 3 * r;
                let width = row_a.0.len();
                (
                    row_a.fill((at..at + width).map(|j| j as f32)).1,
                    row_b.fill((at..at + width).map(|j| -(j as f32))).1,
                )
            })
        });
        let expected: Vec<f32> = (0..14)
            .map(|j| j as f32)
            .chain((0..14).map(|j| -(j as f32)))
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    #[should_panic(expected = "filled other rows")]
    fn a_row_fill_that_returns_another_row_s_proof_is_caught() {
        let mut a = vec![MaybeUninit::new(0f32); 4];
        let mut b = vec![MaybeUninit::new(0f32); 4];
        let mut kept = None;
        fill_row_pairs((Fresh(&mut a), Fresh(&mut b)), 2, |r, row_a, row_b| {
            let (ra, rb) = (
                row_a.fill([1.0, 2.0].into_iter()).1,
                row_b.fill([3.0, 4.0].into_iter()).1,
            );
            match r {
                0 => {
                    kept = Some(ra.0);
                    (ra, rb)
                }
                _ => (Filled(kept.unwrap(), PhantomData), rb),
            }
        });
    }

    #[test]
    fn every_chunk_is_filled_with_its_values() {
        for (len, chunk) in [(0usize, 4usize), (1, 4), (10, 3), (40_000, 7), (100, 100)] {
            let out = par_fresh_chunks(len, chunk, |range, fresh| {
                fresh.fill(range.map(|j| j as f32)).1
            });
            let expected: Vec<f32> = (0..len).map(|j| j as f32).collect();
            assert_eq!(out, expected, "len {len}, chunk {chunk}");
        }
    }

    #[test]
    fn rows_are_filled_in_order() {
        let out = par_fresh_chunks(10, 10, |range, fresh| {
            let mut next = range.start;
            fresh
                .fill_rows(3, |r, row| {
                    let n = if r < 3 { 3 } else { 1 };
                    next += n;
                    row.fill((next - n..next).map(|j| j as f32 * 2.0)).1
                })
                .1
        });
        assert_eq!(out, (0..10).map(|j| j as f32 * 2.0).collect::<Vec<_>>());
    }

    #[test]
    fn pairs_with_values_give_a_value_per_chunk_in_order_and_room_for_more() {
        let (mut out, values) = par_fresh_pairs_with(10, 3, 2, |range, a, b| {
            let sum = range.clone().sum::<usize>();
            let second = range.clone().map(|j| j as f32 + 0.5);
            (a.fill(range.map(|j| j as f32)).1, b.fill(second).1, sum)
        });
        assert_eq!(values, [3, 12, 21, 9]);
        assert!(out.capacity() >= 22, "{}", out.capacity());
        out.extend([-1.0, -2.0]);
        let expected: Vec<f32> = (0..10)
            .map(|j| j as f32)
            .chain((0..10).map(|j| j as f32 + 0.5))
            .chain([-1.0, -2.0])
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn pairs_of_chunks_are_filled_in_both_parts() {
        for (len, chunk) in [(0usize, 4usize), (10, 3), (40_000, 7)] {
            let out = par_fresh_pairs(len, chunk, |range, a, b| {
                let second = range.clone().map(|j| -(j as f32));
                (a.fill(range.map(|j| j as f32)).1, b.fill(second).1)
            });
            let expected: Vec<f32> = (0..len)
                .map(|j| j as f32)
                .chain((0..len).map(|j| -(j as f32)))
                .collect();
            assert_eq!(out, expected, "len {len}, chunk {chunk}");
        }
    }

    #[test]
    #[should_panic(expected = "not filled in full")]
    fn a_chunk_filled_in_part_panics() {
        par_fresh_chunks(8, 4, |_, fresh| fresh.fill([1.0, 2.0].into_iter()).1);
    }

    /// Claims 4 elements, yields 2.
    struct Lying(std::ops::Range<u8>);
    impl Iterator for Lying {
        type Item = f32;
        fn next(&mut self) -> Option<f32> {
            self.0.next().map(f32::from)
        }
    }
    impl ExactSizeIterator for Lying {
        fn len(&self) -> usize {
            4
        }
    }

    #[test]
    #[should_panic(expected = "not filled in full")]
    fn an_iterator_that_lies_about_its_length_panics() {
        par_fresh_chunks(4, 4, |_, fresh| fresh.fill(Lying(0..2)).1);
    }

    #[test]
    #[should_panic(expected = "not filled in full")]
    fn too_many_values_panic() {
        par_fresh_chunks(8, 4, |_, fresh| fresh.fill([1.0; 5].into_iter()).1);
    }
}
