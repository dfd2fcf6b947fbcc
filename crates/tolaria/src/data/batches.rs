//! Batches: a seeded order per epoch, normalised on a worker thread ahead of the
//! training step, turned into tensors on the caller's device.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::Dataset;
use crate::error::{Error, Result};

/// A batch prepared on the worker thread, in host memory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostBatch {
    /// Normalised pixels, `len × C × H × W`.
    pub(crate) images: Vec<f32>,
    /// Labels.
    pub(crate) labels: Vec<u32>,
    /// `[len, C, H, W]`.
    pub(crate) dims: [usize; 4],
}

/// A batch on a device.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// `[N, C, H, W]` f32.
    pub(crate) images: Tensor,
    /// `[N]` u32.
    pub(crate) labels: Tensor,
}

impl HostBatch {
    /// Moves the batch onto `device`: the data loader's device crossing,
    /// made by creating the tensors there from host memory.
    pub(crate) fn into_device(self, device: &Device) -> Result<Batch> {
        let n = self.dims[0];
        Ok(Batch {
            images: Tensor::from_vec(self.images, &self.dims, device)?,
            labels: Tensor::from_vec(self.labels, n, device)?,
        })
    }
}

/// The visiting order of one epoch: a seeded permutation, or the stored order.
pub(crate) fn epoch_order(len: usize, seed: Option<u64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if let Some(seed) = seed {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..len).rev() {
            // Multiply-shift maps a 64-bit draw onto 0..=i without modulo bias worth
            // measuring at these sizes.
            let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Streams the batches of one pass over a dataset, assembled on a worker thread
/// `prefetch` batches ahead. Dropping the loader stops and joins the worker.
pub(crate) struct BatchLoader {
    receiver: Option<Receiver<HostBatch>>,
    worker: Option<JoinHandle<()>>,
    #[cfg(test)]
    batches: usize,
}

impl BatchLoader {
    /// One pass over `dataset` in batches of `batch_size`, shuffled with `seed`
    /// (stored order when `None`); the last partial batch is kept.
    pub(crate) fn new(
        dataset: Arc<Dataset>,
        batch_size: usize,
        seed: Option<u64>,
        prefetch: usize,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Config(leyline::ConfigError::at(
                "tolaria.batch_size",
                "must be at least 1",
            )));
        }
        let order = epoch_order(dataset.len(), seed);
        #[cfg(test)]
        let batches = order.len().div_ceil(batch_size);
        let (sender, receiver) = sync_channel(prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name("tolaria-batches".into())
            .spawn(move || assemble(&dataset, &order, batch_size, &sender))
            .map_err(|e| Error::Data {
                path: Default::default(),
                detail: format!("cannot start the batch worker: {e}"),
            })?;
        Ok(Self {
            receiver: Some(receiver),
            worker: Some(worker),
            #[cfg(test)]
            batches,
        })
    }

    /// Number of batches in the pass.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.batches
    }

    /// The next batch on `device`, or `None` at the end of the pass.
    pub(crate) fn next_batch(&mut self, device: &Device) -> Result<Option<Batch>> {
        match self.receiver.as_ref().map(Receiver::recv) {
            Some(Ok(batch)) => batch.into_device(device).map(Some),
            Some(Err(_)) | None => Ok(None),
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, so it returns.
        self.receiver.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn assemble(dataset: &Dataset, order: &[usize], batch_size: usize, sender: &SyncSender<HostBatch>) {
    let [c, h, w] = dataset.shape();
    let plane = h * w;
    let scale: Vec<(f32, f32)> = (0..c)
        .map(|ch| {
            (
                1.0 / (255.0 * dataset.std[ch]),
                dataset.mean[ch] / dataset.std[ch],
            )
        })
        .collect();
    for chunk in order.chunks(batch_size) {
        let mut images = Vec::with_capacity(chunk.len() * c * plane);
        let mut labels = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let (Some(pixels), Some(label)) = (dataset.image(i), dataset.label(i)) else {
                return;
            };
            for (ch, channel) in pixels.chunks_exact(plane).enumerate() {
                let (mul, sub) = scale[ch];
                images.extend(channel.iter().map(|p| f32::from(*p) * mul - sub));
            }
            labels.push(u32::from(label));
        }
        let batch = HostBatch {
            images,
            labels,
            dims: [chunk.len(), c, h, w],
        };
        if sender.send(batch).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> Arc<Dataset> {
        let images = (0..n * 4).map(|i| (i % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Arc::new(Dataset::new(images, labels, [1, 2, 2], 10, vec![0.5], vec![0.25]).unwrap())
    }

    #[test]
    fn orders_are_seeded_permutations() {
        let a = epoch_order(100, Some(7));
        assert_eq!(a, epoch_order(100, Some(7)));
        assert_ne!(a, epoch_order(100, Some(8)));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, None), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batches_cover_the_pass_and_are_normalised() {
        let ds = tiny(10);
        let mut loader = BatchLoader::new(ds.clone(), 4, None, 2).unwrap();
        assert_eq!(loader.len(), 3);
        let mut sizes = Vec::new();
        let mut first = None;
        while let Some(b) = loader.next_batch(&Device::Cpu).unwrap() {
            sizes.push(b.labels.dims1().unwrap());
            first.get_or_insert(b);
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        let first = first.unwrap();
        let px: Vec<f32> = first.images.flatten_all().unwrap().to_vec1().unwrap();
        // pixel 1 of image 0 is byte 1: (1/255 - 0.5) / 0.25
        assert!((px[1] - (1.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
        assert_eq!(first.labels.to_vec1::<u32>().unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn dropping_a_loader_midway_stops_its_worker() {
        let mut loader = BatchLoader::new(tiny(1000), 1, Some(1), 1).unwrap();
        assert!(loader.next_batch(&Device::Cpu).unwrap().is_some());
        drop(loader); // must not hang
        assert!(BatchLoader::new(tiny(3), 0, None, 1).is_err());
    }
}
