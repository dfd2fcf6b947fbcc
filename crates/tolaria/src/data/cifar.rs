//! CIFAR-10 in its binary format: records of 1 label byte + 3 × 32 × 32 pixels.

use std::path::Path;

use super::{Dataset, read_maybe_gz};
use crate::error::{Error, Result};

const RECORD: usize = 1 + 3 * 32 * 32;
const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Which CIFAR-10 files to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarSplit {
    /// `data_batch_1.bin` … `data_batch_5.bin`.
    Train,
    /// `test_batch.bin`.
    Test,
}

/// Loads CIFAR-10 binary batches from `dir` (each file optionally gzip-compressed).
pub fn load_cifar10(dir: &Path, split: CifarSplit) -> Result<Dataset> {
    let names: Vec<String> = match split {
        CifarSplit::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        CifarSplit::Test => vec!["test_batch.bin".to_string()],
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in names {
        let plain = dir.join(&name);
        let path = if plain.is_file() {
            plain
        } else {
            dir.join(format!("{name}.gz"))
        };
        if !path.is_file() {
            return Err(Error::Data {
                path: dir.to_path_buf(),
                detail: format!("missing CIFAR-10 file {name}"),
            });
        }
        let bytes = read_maybe_gz(&path)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::Data {
                path,
                detail: format!(
                    "{} bytes is not a whole number of {RECORD}-byte records (truncated?)",
                    bytes.len()
                ),
            });
        }
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] >= 10 {
                return Err(Error::Data {
                    path,
                    detail: format!("record {i} has label {}", record[0]),
                });
            }
            labels.push(record[0]);
            images.extend_from_slice(&record[1..]);
        }
    }
    Dataset::new(images, labels, [3, 32, 32], 10, MEAN.to_vec(), STD.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, RECORD - 1));
        r
    }

    #[test]
    fn reads_records_and_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record(3, 7);
        bytes.extend(record(9, 1));
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
        let ds = load_cifar10(dir.path(), CifarSplit::Test).unwrap();
        assert_eq!(
            (ds.len(), ds.shape(), ds.label(1)),
            (2, [3, 32, 32], Some(9))
        );
        assert_eq!(ds.image(0).unwrap()[0], 7);

        std::fs::write(dir.path().join("test_batch.bin"), &bytes[..RECORD + 5]).unwrap();
        assert!(
            load_cifar10(dir.path(), CifarSplit::Test)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        std::fs::write(dir.path().join("test_batch.bin"), record(10, 0)).unwrap();
        assert!(
            load_cifar10(dir.path(), CifarSplit::Test)
                .unwrap_err()
                .to_string()
                .contains("label 10")
        );
        assert!(
            load_cifar10(dir.path(), CifarSplit::Train)
                .unwrap_err()
                .to_string()
                .contains("data_batch_1.bin")
        );
    }
}
