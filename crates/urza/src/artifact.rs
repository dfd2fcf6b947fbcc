//! The artifact file format: safetensors holding a blueprint instance's
//! weights, with Urza's metadata in the header (format tag, blueprint id,
//! descriptor, parameters, slot, guard digest, optional provenance). Files are
//! named by the SHA-256 of their bytes, which is also their reference.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::{Device, Tensor};
use leyline::v1::{ArtifactProvenance, ArtifactRecord, BlueprintDescriptor};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::blueprint::{BlueprintModule, Weights, definition};
use crate::error::{Error, Result};
use crate::forge::guard_digest;
use crate::params::Parameters;
use crate::slot::SlotShape;

/// Format tag written into every artifact header.
pub const FORMAT: &str = "urza-artifact/1";

const KEY_FORMAT: &str = "esper.format";
const KEY_BLUEPRINT: &str = "esper.blueprint_id";
const KEY_DESCRIPTOR: &str = "esper.descriptor";
const KEY_PARAMETERS: &str = "esper.parameters";
const KEY_SLOT: &str = "esper.slot";
const KEY_GUARD: &str = "esper.guard_digest";
const KEY_PROVENANCE: &str = "esper.provenance";

/// What an artifact's header says about its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactHeader {
    /// The blueprint the weights belong to.
    pub blueprint_id: String,
    /// Its descriptor when the artifact was written.
    pub descriptor: BlueprintDescriptor,
    /// The parameters the instance was built with.
    pub parameters: Parameters,
    /// The slot it was built for.
    pub slot: SlotShape,
    /// Guard digest of the weight spec.
    pub guard_digest: String,
    /// Where trained weights came from (absent for forged initial weights).
    pub provenance: Option<ArtifactProvenance>,
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex(&Sha256::digest(bytes))
}

/// Serialises `module` with its header into artifact bytes.
pub fn encode(
    module: &BlueprintModule,
    provenance: Option<&ArtifactProvenance>,
) -> Result<Vec<u8>> {
    let def = definition(module.blueprint_id()).ok_or_else(|| Error::UnknownBlueprint {
        blueprint_id: module.blueprint_id().to_string(),
    })?;
    let mut meta = BTreeMap::new();
    meta.insert(KEY_FORMAT.to_string(), FORMAT.to_string());
    meta.insert(KEY_BLUEPRINT.to_string(), module.blueprint_id().to_string());
    meta.insert(
        KEY_DESCRIPTOR.to_string(),
        crate::hex(&def.descriptor().encode_to_vec()),
    );
    meta.insert(
        KEY_PARAMETERS.to_string(),
        json("parameters", module.parameters())?,
    );
    meta.insert(KEY_SLOT.to_string(), json("slot", module.slot())?);
    meta.insert(KEY_GUARD.to_string(), guard_digest(module));
    if let Some(p) = provenance {
        meta.insert(KEY_PROVENANCE.to_string(), crate::hex(&p.encode_to_vec()));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, t) in module.tensors() {
        let values = t
            .flatten_all()
            .and_then(|f| f.to_dtype(candle_core::DType::F32))
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(Error::tensor(format!("reading weight {name}")))?;
        tensors.push((name, t.dims().to_vec(), values));
    }
    Ok(serialize_deterministic(&meta, &mut tensors))
}

/// The safetensors layout (u64 header length, JSON header, data) with
/// sorted keys and name-ordered tensors, so that equal weights give equal
/// bytes — and therefore the same content address. (`safetensors::serialize`
/// takes its metadata as a `HashMap`, whose order varies between runs.)
pub fn serialize_deterministic(
    meta: &BTreeMap<String, String>,
    tensors: &mut [(String, Vec<usize>, Vec<f32>)],
) -> Vec<u8> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut offset = 0usize;
    for (name, shape, values) in tensors.iter() {
        let end = offset + values.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // Deterministic either way: sorted keys (serde_json's default map), or
    // insertion order (`preserve_order`), which is itself sorted here.
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, _, values) in tensors.iter() {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Reads and checks the header of artifact bytes (without the weights).
pub fn read_header(bytes: &[u8]) -> Result<ArtifactHeader> {
    let malformed = |reason: String| Error::MalformedArtifact { reason };
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| malformed(format!("not a safetensors file: {e}")))?;
    let meta = metadata
        .metadata()
        .as_ref()
        .ok_or_else(|| malformed("no Urza header".into()))?;
    let field = |key: &str| {
        meta.get(key)
            .ok_or_else(|| malformed(format!("header field `{key}` is missing")))
    };
    if field(KEY_FORMAT)? != FORMAT {
        return Err(malformed(format!(
            "format `{}` is not `{FORMAT}`",
            field(KEY_FORMAT)?
        )));
    }
    let descriptor = BlueprintDescriptor::decode(unhex(field(KEY_DESCRIPTOR)?)?.as_slice())
        .map_err(|e| malformed(format!("descriptor: {e}")))?;
    let parameters: Parameters = serde_json::from_str(field(KEY_PARAMETERS)?)
        .map_err(|e| malformed(format!("parameters: {e}")))?;
    let slot: SlotShape =
        serde_json::from_str(field(KEY_SLOT)?).map_err(|e| malformed(format!("slot: {e}")))?;
    // Re-validate the slot (the JSON could hold a zero dimension).
    let slot = SlotShape::new(slot.kind(), slot.shape().to_vec())?;
    let provenance = match meta.get(KEY_PROVENANCE) {
        Some(hex) => Some(
            ArtifactProvenance::decode(unhex(hex)?.as_slice())
                .map_err(|e| malformed(format!("provenance: {e}")))?,
        ),
        None => None,
    };
    let blueprint_id = field(KEY_BLUEPRINT)?.clone();
    if descriptor.blueprint_id != blueprint_id {
        return Err(malformed(format!(
            "header blueprint `{blueprint_id}` but descriptor `{}`",
            descriptor.blueprint_id
        )));
    }
    Ok(ArtifactHeader {
        blueprint_id,
        descriptor,
        parameters,
        slot,
        guard_digest: field(KEY_GUARD)?.clone(),
        provenance,
    })
}

/// Rebuilds the module stored in artifact bytes on `device`: the blueprint
/// must be known, the parameters valid for the slot, every weight present with
/// its declared shape, and the guard digest equal to the header's.
pub fn instantiate(bytes: &[u8], device: &Device) -> Result<(ArtifactHeader, BlueprintModule)> {
    let header = read_header(bytes)?;
    let def = definition(&header.blueprint_id).ok_or_else(|| Error::UnknownBlueprint {
        blueprint_id: header.blueprint_id.clone(),
    })?;
    let tensors: BTreeMap<String, Tensor> =
        candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(Error::tensor("reading artifact weights"))?
            .into_iter()
            .collect();
    // Weights from outside must be numbers: a NaN or infinity would pass the
    // guard digest (it covers the structure) and poison every seed built.
    for (name, tensor) in &tensors {
        let values = tensor
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(Error::tensor("reading artifact weights"))?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::MalformedArtifact {
                reason: format!("weight {name} holds {bad}, not a finite number"),
            });
        }
    }
    let module = def.build(
        &header.parameters,
        &header.slot,
        Weights::Given {
            tensors,
            device: device.clone(),
        },
    )?;
    let digest = guard_digest(&module);
    if digest != header.guard_digest {
        return Err(Error::MalformedArtifact {
            reason: format!(
                "guard digest {digest} does not match the header's {}",
                header.guard_digest
            ),
        });
    }
    Ok((header, module))
}

/// Verifies artifact bytes as [`instantiate`] does, then builds the same
/// blueprint, parameters and slot with fresh weights drawn from `init_seed`.
///
/// A germination uses this: the library caches one forged artifact per
/// (blueprint, slot, parameters), whose weights are those of whichever run
/// forged it first. Drawing each seed's weights from its own `init_seed`
/// keeps a run deterministic by its seed, whatever the library already held
/// and in whatever order parallel runs forged.
pub fn instantiate_with_init(
    bytes: &[u8],
    device: &Device,
    init_seed: u64,
) -> Result<(ArtifactHeader, BlueprintModule)> {
    let (header, _) = instantiate(bytes, &Device::Cpu)?;
    let def = definition(&header.blueprint_id).ok_or_else(|| Error::UnknownBlueprint {
        blueprint_id: header.blueprint_id.clone(),
    })?;
    let mut init = esper_ops::ParamInit::new(init_seed, device.clone());
    let module = def.build(&header.parameters, &header.slot, Weights::Init(&mut init))?;
    Ok((header, module))
}

/// An artifact's verified bytes and its catalog record.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The catalog record.
    pub record: ArtifactRecord,
    /// The file's bytes (SHA-256 equal to `record.artifact_ref`).
    pub bytes: Bytes,
}

impl Artifact {
    /// Rebuilds the module on `device` (see [`instantiate`]).
    pub fn instantiate(&self, device: &Device) -> Result<BlueprintModule> {
        instantiate(&self.bytes, device).map(|(_, m)| m)
    }

    /// Verifies it and builds its blueprint with fresh weights from
    /// `init_seed` (see [`instantiate_with_init`]).
    pub fn instantiate_with_init(
        &self,
        device: &Device,
        init_seed: u64,
    ) -> Result<BlueprintModule> {
        instantiate_with_init(&self.bytes, device, init_seed).map(|(_, m)| m)
    }
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    crate::unhex(text).ok_or_else(|| Error::MalformedArtifact {
        reason: "invalid hex field (odd length, or not lower-case hex)".into(),
    })
}

fn json<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::MalformedArtifact {
        reason: format!("encoding {what}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use esper_ops::ParamInit;

    fn module() -> BlueprintModule {
        let def = definition("conv.squeeze_excitation").unwrap();
        let mut init = ParamInit::new(9, Device::Cpu);
        def.build(
            &def.default_parameters(),
            &SlotShape::conv2d(8, 4, 4).unwrap(),
            Weights::Init(&mut init),
        )
        .unwrap()
    }

    #[test]
    fn an_artifact_round_trips_with_its_header_and_weights() {
        let m = module();
        let provenance = ArtifactProvenance {
            training_run_id: "run-1".into(),
            slot_id: "slot0".into(),
            contribution: 2.5,
            parent_artifact_ref: "ab".into(),
        };
        let bytes = encode(&m, Some(&provenance)).unwrap();
        let (header, back) = instantiate(&bytes, &Device::Cpu).unwrap();
        assert_eq!(header.blueprint_id, m.blueprint_id());
        assert_eq!(header.provenance, Some(provenance));
        assert_eq!(&header.slot, m.slot());
        for ((n1, a), (n2, b)) in m.tensors().iter().zip(back.tensors().iter()) {
            assert_eq!(n1, n2);
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    fn weights(m: &BlueprintModule) -> Vec<Vec<f32>> {
        m.tensors()
            .iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn a_module_with_fresh_weights_is_verified_and_drawn_from_its_seed() {
        let m = module();
        let bytes = encode(&m, None).unwrap();
        let (_, a) = instantiate_with_init(&bytes, &Device::Cpu, 1).unwrap();
        let (_, b) = instantiate_with_init(&bytes, &Device::Cpu, 1).unwrap();
        let (_, c) = instantiate_with_init(&bytes, &Device::Cpu, 2).unwrap();
        assert_eq!(weights(&a), weights(&b));
        assert_ne!(weights(&a), weights(&c));
        assert_ne!(weights(&a), weights(&m), "the stored weights are not used");
        assert_eq!(a.parameter_count(), m.parameter_count());
        // The stored module is still verified first.
        assert!(instantiate_with_init(&bytes[..bytes.len() / 2], &Device::Cpu, 1).is_err());
    }

    #[test]
    fn equal_weights_give_equal_bytes_and_the_crate_reads_them() {
        let m = module();
        let a = encode(&m, None).unwrap();
        let b = encode(&m, None).unwrap();
        assert_eq!(a, b);
        let parsed = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(parsed.names().len(), m.named_vars().len());
    }

    #[test]
    fn damaged_bytes_are_refused_with_a_typed_error() {
        let bytes = encode(&module(), None).unwrap();
        assert!(matches!(
            instantiate(&bytes[..bytes.len() / 2], &Device::Cpu),
            Err(Error::MalformedArtifact { .. } | Error::Tensor { .. })
        ));
        assert!(read_header(b"not an artifact").is_err());
        assert!(read_header(&[]).is_err());
    }
}
