//! Datasets: on-disk loaders (MNIST IDX, CIFAR-10 binary), a fixed train/validation
//! split, seeded per-epoch shuffling, and batches assembled on a worker thread
//! ahead of the training step.
//!
//! Images are kept as bytes (`N × C × H × W`, 0–255) and normalised when a batch is
//! assembled, so a dataset costs one byte per pixel in memory.

mod batches;
mod cifar;
mod idx;

use std::path::{Path, PathBuf};

pub(crate) use batches::BatchLoader;
pub use cifar::{CifarSplit, load_cifar10};
pub use idx::load_mnist;

use crate::error::{Error, Result};

/// A labelled image dataset held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Pixels, `len × channels × height × width`, row-major bytes.
    images: Vec<u8>,
    /// One label per image, each `< classes`.
    labels: Vec<u8>,
    /// `[channels, height, width]`.
    shape: [usize; 3],
    /// Number of classes.
    classes: usize,
    /// Per-channel mean and standard deviation of pixel/255, for normalisation.
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Dataset {
    /// A dataset from raw parts, checking every invariant.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        shape: [usize; 3],
        classes: usize,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Result<Self> {
        let per_image = shape.iter().product::<usize>();
        let bad = |detail: String| Error::Data {
            path: PathBuf::new(),
            detail,
        };
        if per_image == 0 {
            return Err(bad(format!("image shape {shape:?} is empty")));
        }
        if images.len() != labels.len() * per_image {
            return Err(bad(format!(
                "{} pixel bytes for {} labels of shape {shape:?} (expected {})",
                images.len(),
                labels.len(),
                labels.len() * per_image
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| usize::from(**l) >= classes)
        {
            return Err(bad(format!(
                "label {l} at index {i} is not below {classes} classes"
            )));
        }
        if mean.len() != shape[0]
            || std.len() != shape[0]
            || std.iter().any(|s| !s.is_finite() || *s <= 0.0)
        {
            return Err(bad(format!(
                "normalisation needs {} means and positive stds",
                shape[0]
            )));
        }
        Ok(Self {
            images,
            labels,
            shape,
            classes,
            mean,
            std,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// No images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.shape.iter().product::<usize>();
        self.images.get(i * n..(i + 1) * n)
    }

    /// Splits into the first `train` images and the rest (a fixed split: the
    /// bundled data is stored in an interleaved order, so a prefix is a fair sample).
    pub fn split(self, train: usize) -> Result<(Dataset, Dataset)> {
        if train == 0 || train >= self.len() {
            return Err(Error::Data {
                path: PathBuf::new(),
                detail: format!(
                    "cannot split {} images into {train} for training and the rest for validation",
                    self.len()
                ),
            });
        }
        let per_image = self.shape.iter().product::<usize>();
        let mut images = self.images;
        let mut labels = self.labels;
        let val_images = images.split_off(train * per_image);
        let val_labels = labels.split_off(train);
        let make = |images, labels| Dataset {
            images,
            labels,
            shape: self.shape,
            classes: self.classes,
            mean: self.mean.clone(),
            std: self.std.clone(),
        };
        Ok((make(images, labels), make(val_images, val_labels)))
    }

    /// Keeps only the first `n` images (for quick runs and tests).
    pub fn truncate(&mut self, n: usize) {
        let per_image = self.shape.iter().product::<usize>();
        self.labels.truncate(n);
        self.images.truncate(n * per_image);
    }
}

/// The MNIST subset bundled with the repository (`data/mnist`), for the default
/// run and the tests: `data/mnist` under the working directory when it exists
/// (a binary run from a checkout or a copy of it), else the checkout this crate
/// was built from.
pub fn bundled_mnist_dir() -> PathBuf {
    let local = Path::new("data/mnist");
    if local.is_dir() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::Data {
                path: path.to_path_buf(),
                detail: format!("corrupt gzip: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
