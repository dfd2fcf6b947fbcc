//! Policy files: one safetensors file holding the network's weights, with
//! a JSON manifest and its signature in the safetensors header
//! (`__metadata__`), so that a policy is one file to copy, sign and load.
//!
//! The manifest states the architecture, the graph schema it was trained on
//! (and its hash: feature widths, feature meaning version, node types,
//! relations, heads), the feature normalisers' statistics, the training step
//! and episodes, the reward configuration it was trained under, metrics at
//! save and the SHA-256 of the weights. The signature is HMAC-SHA256 under
//! the configured key over the manifest's bytes (domain
//! `esper.tamiyo.policy`); as the manifest holds the weights' digest, it
//! covers them too.
//!
//! Loading checks, in order, and refuses with a typed error naming what is
//! wrong: a safetensors file with the manifest and signature; the signature;
//! the format; the schema hash against this build's; the weights' digest;
//! every tensor name and shape against the architecture (none missing, none
//! extra); finite values; the normalisers' widths.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BLENDS, GnnConfig, GnnModel, RELATIONS, TYPES, tensor_error};
use crate::error::{Error, Result};
use crate::graph::{
    BLUEPRINT_DIM, EDGE_DIM, FEATURES_VERSION, GLOBAL_DIM, GraphSchema, Normalisers, SEED_DIM,
    SLOT_DIM,
};
use crate::policy::action::{Op, TEMPOS};

/// The manifest's `format`.
pub const POLICY_FORMAT: &str = "esper.policy.v1";
/// The MAC's domain.
const DOMAIN: &str = "esper.tamiyo.policy";
const KEY_MANIFEST: &str = "esper.policy.manifest";
const KEY_SIGNATURE: &str = "esper.policy.signature";

/// What a policy file says about its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyManifest {
    /// [`POLICY_FORMAT`].
    pub format: String,
    /// The network (`hetero-gnn`).
    pub architecture: String,
    /// Width of every node embedding.
    pub hidden: usize,
    /// [`schema_hash`] of the schema it was trained on.
    pub schema_hash: String,
    /// That schema.
    pub schema: GraphSchema,
    /// The feature normalisers' statistics at save.
    pub normalisers: Normalisers,
    /// PPO updates applied.
    pub training_step: u64,
    /// Episodes trained on.
    pub episodes: u64,
    /// The reward configuration it was trained under (the learner's).
    pub reward: serde_json::Value,
    /// Metrics at save (mean return, accuracy gain, …).
    pub metrics: BTreeMap<String, f64>,
    /// Where it came from: the command, the code's commit, the cohort.
    pub provenance: String,
    /// Unix milliseconds at save.
    pub created_at_ms: u64,
    /// SHA-256 of the weights (name-ordered: name, shape, f32 LE values).
    pub weights_sha256: String,
}

impl PolicyManifest {
    /// A manifest for a model of `hidden` on `schema`, with fresh
    /// normalisers; the digest is filled in by [`save_policy`].
    pub fn new(hidden: usize, schema: &GraphSchema, normalisers: Normalisers) -> Self {
        Self {
            format: POLICY_FORMAT.into(),
            architecture: "hetero-gnn".into(),
            hidden,
            schema_hash: schema_hash(schema),
            schema: schema.clone(),
            normalisers,
            training_step: 0,
            episodes: 0,
            reward: serde_json::Value::Null,
            metrics: BTreeMap::new(),
            provenance: String::new(),
            created_at_ms: leyline::unix_now_ms(),
            weights_sha256: String::new(),
        }
    }
}

/// The hash of everything a trained network depends on besides its
/// weights: feature widths and their meaning's version, node types in use,
/// relations, and the heads' choices (ops, tempos, blend modes). Graph size
/// limits are not in it: the network reads any number of nodes.
pub fn schema_hash(schema: &GraphSchema) -> String {
    let text = format!(
        "features v{FEATURES_VERSION}; dims global {GLOBAL_DIM} slot {SLOT_DIM} seed {SEED_DIM} \
         blueprint {BLUEPRINT_DIM} edge {EDGE_DIM}; node types {:?}; types {TYPES:?}; \
         relations {RELATIONS:?}; ops {:?}; tempos {TEMPOS:?}; blends {BLENDS:?}",
        schema.node_types,
        Op::ALL,
    );
    urza::hex(&Sha256::digest(text.as_bytes()))
}

/// Name, shape and values of every weight, name-ordered.
type Weights = Vec<(String, Vec<usize>, Vec<f32>)>;

fn weights_of(model: &GnnModel) -> Result<Weights> {
    let mut out = Vec::new();
    for (name, var) in model.named_vars() {
        let t = var.as_tensor();
        let values = t
            .flatten_all()
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(tensor_error)?;
        out.push((name, t.dims().to_vec(), values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn digest(weights: &Weights) -> String {
    let mut h = Sha256::new();
    for (name, shape, values) in weights {
        h.update(name.as_bytes());
        h.update([0]);
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    urza::hex(&h.finalize())
}

fn problem(path: &Path, problem: impl Into<String>) -> Error {
    Error::PolicyFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Writes `model` with `manifest` (its digest filled in) to `path`, signed
/// with `key`: a temporary file, fsynced, renamed over `path`.
pub fn save_policy(
    path: &Path,
    model: &GnnModel,
    manifest: &PolicyManifest,
    key: &leyline::security::SigningKey,
) -> Result<PolicyManifest> {
    let mut weights = weights_of(model)?;
    if let Some((name, _, _)) = weights
        .iter()
        .find(|(_, _, v)| v.iter().any(|x| !x.is_finite()))
    {
        return Err(problem(
            path,
            format!("weight {name} is not finite; not saved"),
        ));
    }
    let mut manifest = manifest.clone();
    manifest.hidden = model.hidden();
    manifest.weights_sha256 = digest(&weights);
    let text = serde_json::to_string(&manifest)
        .map_err(|e| problem(path, format!("encoding the manifest: {e}")))?;
    let signature = leyline::security::domain_mac(key, DOMAIN, text.as_bytes());
    let mut meta = BTreeMap::new();
    meta.insert(KEY_MANIFEST.to_string(), text);
    meta.insert(KEY_SIGNATURE.to_string(), urza::hex(&signature));
    let bytes = urza::artifact::serialize_deterministic(&meta, &mut weights);
    let tmp = path.with_extension("tmp");
    let io = |context| crate::framing::io(context, path);
    std::fs::write(&tmp, &bytes).map_err(io("writing policy"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing policy"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming policy"))?;
    Ok(manifest)
}

/// The manifest text and signature in a policy file's safetensors header.
fn header(path: &Path, bytes: &[u8]) -> Result<(String, Vec<u8>)> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| problem(path, format!("not a safetensors file: {e}")))?;
    let meta = metadata
        .metadata()
        .as_ref()
        .ok_or_else(|| problem(path, "no policy manifest in its header"))?;
    let field = |key: &str| {
        meta.get(key)
            .ok_or_else(|| problem(path, format!("header field `{key}` is missing")))
    };
    let text = field(KEY_MANIFEST)?.clone();
    let signature = urza::unhex(field(KEY_SIGNATURE)?)
        .ok_or_else(|| problem(path, "the signature is not hex"))?;
    Ok((text, signature))
}

/// The weights digest `path`'s manifest states (`weights_sha256`), read
/// without verifying the file's signature: it tells which network a file
/// holds — whether a file re-saved with a new manifest (a resumed training's
/// snapshot) or replaced by another training holds the same weights — and
/// trusts nothing; [`load_policy`] verifies before a run uses the file.
pub fn stated_weights_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(crate::framing::io("reading policy", path))?;
    let (text, _) = header(path, &bytes)?;
    let manifest: PolicyManifest =
        serde_json::from_str(&text).map_err(|e| problem(path, format!("manifest: {e}")))?;
    Ok(manifest.weights_sha256)
}

/// Reads, verifies and instantiates the policy at `path` for a run whose
/// graph schema is `schema`.
pub fn load_policy(
    path: &Path,
    key: &leyline::security::SigningKey,
    schema: &GraphSchema,
) -> Result<(GnnModel, PolicyManifest)> {
    let bytes = std::fs::read(path).map_err(crate::framing::io("reading policy", path))?;
    let (text, signature) = header(path, &bytes)?;
    let text = text.as_str();
    if !leyline::security::domain_mac_valid(key, DOMAIN, text.as_bytes(), &signature) {
        return Err(problem(
            path,
            "its signature does not verify under this process's policy key (tampered, or \
             signed with another key: see tamiyo.learned.key)",
        ));
    }
    let manifest: PolicyManifest =
        serde_json::from_str(text).map_err(|e| problem(path, format!("manifest: {e}")))?;
    if manifest.format != POLICY_FORMAT {
        return Err(problem(
            path,
            format!("format `{}` is not `{POLICY_FORMAT}`", manifest.format),
        ));
    }
    if manifest.architecture != "hetero-gnn" {
        return Err(problem(
            path,
            format!("architecture `{}` is not hetero-gnn", manifest.architecture),
        ));
    }
    let expected = schema_hash(schema);
    if manifest.schema_hash != expected {
        return Err(problem(
            path,
            format!(
                "trained for graph schema {} but this build and config give {expected} \
                 (features, node types or heads changed: train it again)",
                manifest.schema_hash
            ),
        ));
    }
    let model = GnnModel::new(
        GnnConfig {
            hidden: manifest.hidden,
        },
        0,
    )?;
    let mut stored: BTreeMap<String, Tensor> =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| problem(path, format!("weights: {e}")))?
            .into_iter()
            .collect();
    for (name, var) in model.named_vars() {
        let t = stored
            .remove(&name)
            .ok_or_else(|| problem(path, format!("weight {name} is missing")))?;
        if t.dims() != var.as_tensor().dims() {
            return Err(problem(
                path,
                format!(
                    "weight {name} has shape {:?}, the architecture needs {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                ),
            ));
        }
        let t = t
            .to_dtype(candle_core::DType::F32)
            .map_err(|e| problem(path, format!("weight {name}: {e}")))?;
        var.set(&t)
            .map_err(|e| problem(path, format!("weight {name}: {e}")))?;
    }
    if let Some(extra) = stored.keys().next() {
        return Err(problem(
            path,
            format!("weight {extra} is not part of the architecture"),
        ));
    }
    let weights = weights_of(&model)?;
    if let Some((name, _, _)) = weights
        .iter()
        .find(|(_, _, v)| v.iter().any(|x| !x.is_finite()))
    {
        return Err(problem(path, format!("weight {name} is not finite")));
    }
    if digest(&weights) != manifest.weights_sha256 {
        return Err(problem(
            path,
            "its weights are not the ones its manifest signed (SHA-256 differs)",
        ));
    }
    manifest
        .normalisers
        .check_dims()
        .map_err(|e| problem(path, format!("normalisers: {e}")))?;
    Ok((model, manifest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(byte: u8) -> leyline::security::SigningKey {
        leyline::security::SigningKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn saved(dir: &Path) -> (std::path::PathBuf, GnnModel) {
        let path = dir.join("p.safetensors");
        let model = GnnModel::new(GnnConfig { hidden: 8 }, 3).unwrap();
        let schema = GraphSchema::default();
        let mut manifest = PolicyManifest::new(8, &schema, Normalisers::new(0.05));
        manifest.training_step = 12;
        save_policy(&path, &model, &manifest, &key(1)).unwrap();
        (path, model)
    }

    #[test]
    fn a_saved_policy_loads_with_the_same_weights_and_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = saved(dir.path());
        let (loaded, manifest) = load_policy(&path, &key(1), &GraphSchema::default()).unwrap();
        assert_eq!(manifest.training_step, 12);
        assert_eq!(manifest.hidden, 8);
        let g = crate::graph::GraphBuilder::new(GraphSchema::default())
            .unwrap()
            .build(
                &crate::graph::tests::packet(3),
                &crate::graph::tests::catalog(),
            )
            .unwrap();
        assert_eq!(
            model.forward(&g).unwrap().logits,
            loaded.forward(&g).unwrap().logits
        );
    }

    #[test]
    fn a_tampered_or_foreign_policy_is_refused_naming_why() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path());
        let schema = GraphSchema::default();
        let refused = |p: &Path, key_byte: u8, schema: &GraphSchema| match load_policy(
            p,
            &key(key_byte),
            schema,
        ) {
            Err(Error::PolicyFile { problem, .. }) => problem,
            other => panic!("not refused: {:?}", other.map(|(_, m)| m)),
        };
        // Another key.
        assert!(refused(&path, 2, &schema).contains("signature"));
        // One flipped bit in the weights (the last bytes are tensor data).
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x10;
        let flipped = dir.path().join("flipped.safetensors");
        std::fs::write(&flipped, &bytes).unwrap();
        assert!(refused(&flipped, 1, &schema).contains("SHA-256"));
        // An edited manifest (the step), re-serialised without re-signing.
        let mut bytes = std::fs::read(&path).unwrap();
        let pattern = br#"\"training_step\":12"#;
        let at = bytes
            .windows(pattern.len())
            .position(|w| w == pattern)
            .unwrap();
        bytes[at + pattern.len() - 1] = b'3';
        let edited = dir.path().join("edited.safetensors");
        std::fs::write(&edited, &bytes).unwrap();
        assert!(refused(&edited, 1, &schema).contains("signature"));
        // Another graph schema (a node type dropped).
        let narrower = GraphSchema {
            node_types: vec![crate::graph::NodeType::Global, crate::graph::NodeType::Slot],
            ..GraphSchema::default()
        };
        assert!(refused(&path, 1, &narrower).contains("graph schema"));
        // Not a policy at all.
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a policy").unwrap();
        assert!(refused(&junk, 1, &schema).contains("safetensors"));
    }

    #[test]
    fn a_policy_of_another_shape_is_refused_naming_the_weight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let model = GnnModel::new(GnnConfig { hidden: 8 }, 3).unwrap();
        let schema = GraphSchema::default();
        // A manifest that claims another width than the weights have.
        let manifest = PolicyManifest::new(8, &schema, Normalisers::new(0.05));
        let mut saved = save_policy(&path, &model, &manifest, &key(1)).unwrap();
        saved.hidden = 16;
        let text = serde_json::to_string(&saved).unwrap();
        let mut meta = BTreeMap::new();
        meta.insert(KEY_MANIFEST.to_string(), text.clone());
        meta.insert(
            KEY_SIGNATURE.to_string(),
            urza::hex(&leyline::security::domain_mac(
                &key(1),
                DOMAIN,
                text.as_bytes(),
            )),
        );
        let mut weights = weights_of(&model).unwrap();
        std::fs::write(
            &path,
            urza::artifact::serialize_deterministic(&meta, &mut weights),
        )
        .unwrap();
        match load_policy(&path, &key(1), &schema) {
            Err(Error::PolicyFile { problem, .. }) => {
                assert!(problem.contains("shape"), "{problem}")
            }
            other => panic!("not refused: {:?}", other.map(|(_, m)| m)),
        }
    }

    /// The stated weights digest names the network, not the file: a re-save
    /// with another manifest (a resumed training's snapshot) keeps it, other
    /// weights change it, and a file that is not a policy is an error.
    #[test]
    fn the_stated_weights_digest_follows_the_weights_not_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = saved(dir.path());
        let first = stated_weights_digest(&path).unwrap();
        assert_eq!(first.len(), 64, "{first}");
        let mut manifest = PolicyManifest::new(8, &GraphSchema::default(), Normalisers::new(0.05));
        manifest.training_step = 13;
        manifest.provenance = "re-saved".into();
        save_policy(&path, &model, &manifest, &key(2)).unwrap();
        assert_eq!(stated_weights_digest(&path).unwrap(), first);
        let other = GnnModel::new(GnnConfig { hidden: 8 }, 4).unwrap();
        save_policy(&path, &other, &manifest, &key(1)).unwrap();
        assert_ne!(stated_weights_digest(&path).unwrap(), first);
        std::fs::write(&path, b"not a policy").unwrap();
        assert!(matches!(
            stated_weights_digest(&path),
            Err(Error::PolicyFile { .. })
        ));
    }
}
