//! MNIST in IDX format (`images-idx3-ubyte`, `labels-idx1-ubyte`, optionally `.gz`).

use std::path::{Path, PathBuf};

use super::{Dataset, read_maybe_gz};
use crate::error::{Error, Result};

/// Standard MNIST normalisation (mean and std of pixel/255 over the training set).
const MNIST_MEAN: f32 = 0.1307;
const MNIST_STD: f32 = 0.3081;

/// Parses an IDX file of unsigned bytes: its dimensions and its data.
fn parse_idx(path: &Path, bytes: &[u8], expected_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let fail = |detail: String| Error::Data {
        path: path.to_path_buf(),
        detail,
    };
    if bytes.len() < 4 {
        return Err(fail(format!(
            "{} bytes is too short for an IDX header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(fail(format!(
            "bad IDX magic {:02x}{:02x}",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(fail(format!(
            "IDX element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let ndims = usize::from(bytes[3]);
    if ndims != expected_dims {
        return Err(fail(format!(
            "{ndims} dimensions, expected {expected_dims}"
        )));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(fail(format!(
            "truncated header: {} of {header} bytes",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| fail(format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[header..];
    if data.len() != count {
        return Err(fail(format!(
            "{} data bytes for dimensions {dims:?} (expected {count}): the file is {}",
            data.len(),
            if data.len() < count {
                "truncated"
            } else {
                "longer than its header says"
            }
        )));
    }
    Ok((dims, data.to_vec()))
}

fn find(dir: &Path, stems: &[&str]) -> Result<PathBuf> {
    for stem in stems {
        for name in [stem.to_string(), format!("{stem}.gz")] {
            let path = dir.join(name);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(Error::Data {
        path: dir.to_path_buf(),
        detail: format!(
            "no file named {} (optionally .gz) in the directory; set tolaria.data_dir to an MNIST directory",
            stems.join(" or ")
        ),
    })
}

/// Loads MNIST from `dir`: `images-idx3-ubyte` and `labels-idx1-ubyte` (the bundled
/// names) or the original `train-images-idx3-ubyte` / `train-labels-idx1-ubyte`,
/// each optionally gzip-compressed.
pub fn load_mnist(dir: &Path) -> Result<Dataset> {
    let images_path = find(dir, &["images-idx3-ubyte", "train-images-idx3-ubyte"])?;
    let labels_path = find(dir, &["labels-idx1-ubyte", "train-labels-idx1-ubyte"])?;
    let (image_dims, images) = parse_idx(&images_path, &read_maybe_gz(&images_path)?, 3)?;
    let (label_dims, labels) = parse_idx(&labels_path, &read_maybe_gz(&labels_path)?, 1)?;
    if image_dims[0] != label_dims[0] {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            detail: format!("{} images but {} labels", image_dims[0], label_dims[0]),
        });
    }
    Dataset::new(
        images,
        labels,
        [1, image_dims[1], image_dims[2]],
        10,
        vec![MNIST_MEAN],
        vec![MNIST_STD],
    )
    .map_err(|e| match e {
        Error::Data { detail, .. } => Error::Data {
            path: labels_path.clone(),
            detail,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_and_rejects_idx() {
        let p = Path::new("x");
        let (dims, data) = parse_idx(p, &idx(&[2, 2, 2], &[1; 8]), 3).unwrap();
        assert_eq!((dims, data.len()), (vec![2, 2, 2], 8));
        let err = |bytes: Vec<u8>, n| parse_idx(p, &bytes, n).unwrap_err().to_string();
        assert!(err(idx(&[2, 2, 2], &[1; 7]), 3).contains("truncated"));
        assert!(err(idx(&[2, 2, 2], &[1; 9]), 3).contains("longer"));
        assert!(err(idx(&[2], &[1; 2]), 3).contains("dimensions"));
        assert!(err(vec![1, 0, 8, 1], 1).contains("magic"));
        assert!(err(vec![0, 0, 0x0d, 1], 1).contains("element type"));
        assert!(err(vec![0, 0, 8, 3, 0, 0], 3).contains("truncated header"));
    }

    #[test]
    fn loads_the_bundled_subset() {
        let ds = load_mnist(&super::super::bundled_mnist_dir()).unwrap();
        assert_eq!(
            (ds.len(), ds.shape(), ds.classes()),
            (10_000, [1, 28, 28], 10)
        );
        let mut counts = [0usize; 10];
        for i in 0..ds.len() {
            counts[ds.label(i).unwrap() as usize] += 1;
        }
        assert_eq!(
            counts,
            [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
        );
        // Real digits: mostly background, some ink.
        let ink = ds.image(0).unwrap().iter().filter(|p| **p > 128).count();
        assert!((20..400).contains(&ink), "{ink}");
    }

    #[test]
    fn missing_mismatched_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            load_mnist(dir.path())
                .unwrap_err()
                .to_string()
                .contains("no file named")
        );
        std::fs::write(
            dir.path().join("images-idx3-ubyte"),
            idx(&[2, 1, 1], &[0, 255]),
        )
        .unwrap();
        std::fs::write(dir.path().join("labels-idx1-ubyte"), idx(&[3], &[0, 1, 2])).unwrap();
        assert!(
            load_mnist(dir.path())
                .unwrap_err()
                .to_string()
                .contains("2 images but 3 labels")
        );
        std::fs::write(dir.path().join("labels-idx1-ubyte"), idx(&[2], &[0, 11])).unwrap();
        assert!(
            load_mnist(dir.path())
                .unwrap_err()
                .to_string()
                .contains("label 11")
        );
        std::fs::remove_file(dir.path().join("labels-idx1-ubyte")).unwrap();
        std::fs::write(
            dir.path().join("labels-idx1-ubyte.gz"),
            [0x1f, 0x8b, 0, 1, 2],
        )
        .unwrap();
        assert!(
            load_mnist(dir.path())
                .unwrap_err()
                .to_string()
                .contains("corrupt gzip")
        );
    }
}
