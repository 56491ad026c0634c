//! Training one shard, stage by stage, from scratch or from a checkpoint.
//!
//! Stage r trains on slices 1..r for its recalibrated epochs, continuing from stage r-1's
//! weights and optimizer state. The batch order of every epoch is the shard's rows in the
//! order of `mix(tag ⊕ seed(shard, stage, epoch))`: a function of which rows are present and
//! nothing else, so retraining after a deletion visits exactly the batches that training from
//! scratch without the deleted rows visits.

use crate::checkpoint::Checkpoint;
use crate::data::{Rows, SliceIndex};
use crate::error::{Error, Result};
use crate::model::{simd, Norm, Standardize};
use crate::plan::{self, Lineage};
use crate::rng::mix;
use crate::run::RunConfig;
use indicatif::ProgressBar;

/// One shard's rows with everything derived from them: slices and stage lineages.
#[derive(Clone, Debug)]
pub struct ShardData<'a> {
    config: &'a RunConfig,
    /// The shard.
    pub shard: usize,
    /// Its rows, in tag order.
    pub rows: &'a Rows,
    /// Slice assignment and digests.
    pub index: SliceIndex,
    /// Lineage of stages 1..R (index r-1 is stage r).
    pub lineages: Vec<Lineage>,
    root: Lineage,
}

impl<'a> ShardData<'a> {
    /// Slice `rows` and compute every stage's lineage.
    pub fn new(
        config: &'a RunConfig,
        config_digest: &[u8; 32],
        shard: usize,
        rows: &'a Rows,
    ) -> Self {
        Self::with_index(
            config,
            config_digest,
            shard,
            rows,
            rows.slice_index(config.slices),
        )
    }

    /// [`ShardData::new`] with the slice index of `rows` already computed.
    pub fn with_index(
        config: &'a RunConfig,
        config_digest: &[u8; 32],
        shard: usize,
        rows: &'a Rows,
        index: SliceIndex,
    ) -> Self {
        let root = Lineage::root(config_digest, config.seed, shard);
        let mut lineages = Vec::with_capacity(config.slices);
        let mut prev = root;
        for (r, digest) in index.digests.iter().enumerate() {
            prev = prev.extend(r + 1, config.stage_epochs[r], digest);
            lineages.push(prev);
        }
        ShardData {
            config,
            shard,
            rows,
            index,
            lineages,
            root,
        }
    }

    /// Rows trained on at each stage (slices 1..r).
    pub fn stage_rows(&self) -> Vec<u64> {
        self.index
            .counts
            .iter()
            .scan(0u64, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }

    /// Rows×epochs of training stages `first..=R`.
    pub fn cost_from(&self, first: usize) -> u64 {
        plan::stage_cost(&self.index.counts, &self.config.stage_epochs, first)
    }

    /// The lineage before stage `stage` (1-based): the root for stage 1.
    pub fn lineage_before(&self, stage: usize) -> Lineage {
        if stage <= 1 {
            self.root
        } else {
            self.lineages[stage - 2]
        }
    }

    /// The untrained model and optimizer: standardization fitted on slice 1, seeded init.
    pub fn initial(&self) -> Result<Checkpoint> {
        let c = self.config;
        let first = (0..self.rows.len()).filter(|&i| self.rows.slices[i] == 0);
        let (x, dim) = (&self.rows.x, self.rows.dim);
        let norm = match (c.model.standardize, c.model.scale) {
            (Standardize::Feature, _) => Norm::fit(x, dim, first),
            (Standardize::Global, _) => Norm::fit_global(x, dim, first),
            (Standardize::None, Some(s)) => Norm::scaled(dim, s),
            (Standardize::None, None) => Norm::identity(dim),
        };
        Ok(Checkpoint {
            norm,
            model: crate::model::build(&c.model_config(self.shard)?)?,
            lineage: self.root,
            shard: self.shard,
            stage: 0,
            machine: crate::machine::kind_for(c.device)?,
        })
    }

    /// Train stages `first..=R`. `start` must be the checkpoint of stage `first - 1` (ignored,
    /// and may be `None`, when `first` is 1). `on_stage` receives each finished stage's
    /// checkpoint, its epochs and its row count.
    pub fn train(
        &self,
        first: usize,
        start: Option<Checkpoint>,
        bar: &ProgressBar,
        on_rows: &(dyn Fn(u64) + Sync),
        mut on_stage: impl FnMut(&Checkpoint, u32, u64) -> Result<()>,
    ) -> Result<Checkpoint> {
        let c = self.config;
        let mut state = if first <= 1 {
            self.initial()?
        } else {
            let ck = start.ok_or_else(|| Error::Lineage {
                shard: self.shard,
                stage: first - 1,
                message: "no checkpoint to continue from".into(),
            })?;
            if ck.lineage != self.lineage_before(first) {
                return Err(Error::Lineage {
                    shard: self.shard,
                    stage: first - 1,
                    message: "checkpoint lineage does not match the shard's data; refusing to continue from it".into(),
                });
            }
            // The stages trained from here on are this machine's.
            Checkpoint {
                machine: crate::machine::kind_for(c.device)?,
                ..ck
            }
        };
        let d = self.rows.dim;
        let n = self.rows.len();
        let bs = c.model.batch_size;
        let mut xb = vec![0f32; bs * d];
        let mut yb = vec![0u32; bs];
        let mut scratch = vec![0f32; d];
        let mut members: Vec<(u64, u32)> = Vec::with_capacity(n);
        let stage_rows = self.stage_rows();
        for stage in first.max(1)..=c.slices {
            let epochs = c.stage_epochs[stage - 1];
            for epoch in 0..epochs as usize {
                let seed = plan::derive_seed(c.seed, self.shard, stage, epoch, "order");
                members.clear();
                members.extend(
                    (0..n)
                        .filter(|&i| (self.rows.slices[i] as usize) < stage)
                        .map(|i| (mix(self.rows.tags[i] ^ seed), i as u32)),
                );
                members.sort_unstable();
                // Each row's shift this epoch: a function of the derived seed and its tag.
                let augment = c.model.augment.zip(c.model.input).map(|(a, shape)| {
                    let seed = plan::derive_seed(c.seed, self.shard, stage, epoch, "augment");
                    (a.shift, shape, seed)
                });
                let mut loss = 0f64;
                for batch in members.chunks(bs) {
                    let b = batch.len();
                    // Gather the batch, standardizing each row as it is copied.
                    let norm = &state.norm;
                    simd::wide(
                        #[inline(always)]
                        || {
                            for (r, ((&(_, i), x), y)) in batch
                                .iter()
                                .zip(xb.chunks_exact_mut(d))
                                .zip(yb.iter_mut())
                                .enumerate()
                            {
                                if let Some(&(_, ahead)) = batch.get(r + PREFETCH_ROWS) {
                                    prefetch(self.rows.row(ahead as usize));
                                }
                                let row = self.rows.row(i as usize);
                                match augment {
                                    None => norm.apply(row, x),
                                    Some((shift, shape, seed)) => {
                                        norm.apply(row, &mut scratch);
                                        let (dx, dy) = draw_shift(
                                            mix(self.rows.tags[i as usize] ^ seed),
                                            shift,
                                        );
                                        shift_image(&scratch, x, shape, dx, dy);
                                    }
                                }
                                *y = self.rows.labels[i as usize];
                            }
                        },
                    );
                    loss += state.model.train_step(&xb[..b * d], &yb[..b], b)?;
                    bar.inc(b as u64);
                    on_rows(b as u64);
                }
                if !loss.is_finite() {
                    return Err(Error::Diverged {
                        shard: self.shard,
                        stage,
                        message: format!("loss {loss} in epoch {}", epoch + 1),
                    });
                }
            }
            state.stage = stage;
            state.lineage = self.lineages[stage - 1];
            on_stage(&state, epochs, stage_rows[stage - 1])?;
        }
        Ok(state)
    }
}

/// A shift of -shift..=shift pixels along each axis from one random word.
fn draw_shift(word: u64, shift: usize) -> (isize, isize) {
    let span = 2 * shift as u64 + 1;
    let dx = (word % span) as isize - shift as isize;
    let dy = ((word >> 32) % span) as isize - shift as isize;
    (dx, dy)
}

/// `src` (`[channels, height, width]`, row-major) moved `dx` pixels right and `dy` down into
/// `dst`; pixels the move uncovers are 0.
fn shift_image(src: &[f32], dst: &mut [f32], [c, h, w]: [usize; 3], dx: isize, dy: isize) {
    for ch in 0..c {
        let (s, d) = (
            &src[ch * h * w..(ch + 1) * h * w],
            &mut dst[ch * h * w..(ch + 1) * h * w],
        );
        for y in 0..h {
            let out = &mut d[y * w..(y + 1) * w];
            let sy = y as isize - dy;
            if sy < 0 || sy >= h as isize {
                out.fill(0.0);
                continue;
            }
            let line = &s[sy as usize * w..(sy as usize + 1) * w];
            for (x, o) in out.iter_mut().enumerate() {
                let sx = x as isize - dx;
                *o = if sx < 0 || sx >= w as isize {
                    0.0
                } else {
                    line[sx as usize]
                };
            }
        }
    }
}

/// How many rows ahead the batch gather asks for memory: rows are visited in a shuffled order
/// the hardware prefetcher cannot guess.
const PREFETCH_ROWS: usize = 8;

/// Ask the CPU to start loading `row` into cache.
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: prefetching is a hint; the address lies inside `row`.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_moves_pixels_and_zeroes_what_it_uncovers() {
        // One channel, 2×3: rows [1 2 3] and [4 5 6].
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dst = [9.0; 6];
        shift_image(&src, &mut dst, [1, 2, 3], 1, 0);
        assert_eq!(dst, [0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);
        shift_image(&src, &mut dst, [1, 2, 3], -1, 1);
        assert_eq!(dst, [0.0, 0.0, 0.0, 2.0, 3.0, 0.0]);
        shift_image(&src, &mut dst, [1, 2, 3], 0, 0);
        assert_eq!(dst, src);
        // Two channels move together.
        let two = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0.0; 4];
        shift_image(&two, &mut out, [2, 1, 2], -1, 0);
        assert_eq!(out, [2.0, 0.0, 4.0, 0.0]);
    }

    #[test]
    fn shifts_cover_the_whole_range() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000u64 {
            let (dx, dy) = draw_shift(mix(i), 2);
            assert!((-2..=2).contains(&dx) && (-2..=2).contains(&dy));
            seen.insert((dx, dy));
        }
        assert_eq!(seen.len(), 25);
    }
}
