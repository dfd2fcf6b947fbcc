//! The shape of the activation a seed slot carries.

use leyline::v1::SlotKind;

use crate::error::{Error, Result};

/// A slot's kind and feature shape (without the batch dimension): `[F]` for a
/// dense slot, `[C, H, W]` for a convolutional one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SlotShape {
    kind: SlotKindName,
    shape: Vec<usize>,
}

/// Serialisable mirror of [`SlotKind`] (artifact metadata is JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum SlotKindName {
    Dense,
    Conv2d,
}

impl SlotShape {
    /// A dense slot of `features` features.
    pub fn dense(features: usize) -> Result<Self> {
        Self::new(SlotKind::Dense, vec![features])
    }

    /// A convolutional slot of `channels × height × width`.
    pub fn conv2d(channels: usize, height: usize, width: usize) -> Result<Self> {
        Self::new(SlotKind::Conv2d, vec![channels, height, width])
    }

    /// A slot from its kind and feature shape; the rank must match the kind and
    /// every dimension be at least 1.
    pub fn new(kind: SlotKind, shape: Vec<usize>) -> Result<Self> {
        let (name, rank) = match kind {
            SlotKind::Dense => (SlotKindName::Dense, 1),
            SlotKind::Conv2d => (SlotKindName::Conv2d, 3),
            SlotKind::Unspecified => {
                return Err(Error::InvalidSlot {
                    reason: "slot kind is unspecified".into(),
                });
            }
        };
        if shape.len() != rank {
            return Err(Error::InvalidSlot {
                reason: format!("a {kind:?} slot has {rank} feature dimension(s), got {shape:?}"),
            });
        }
        if shape.contains(&0) {
            return Err(Error::InvalidSlot {
                reason: format!("zero-sized dimension in {shape:?}"),
            });
        }
        // The element count must be representable; `urza.max_slot_elements`
        // bounds it further where a request comes from outside.
        if shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .is_none()
        {
            return Err(Error::InvalidSlot {
                reason: format!("{shape:?} has more elements than a u64 counts"),
            });
        }
        Ok(Self { kind: name, shape })
    }

    /// From the wire form (`SlotKind` as i32, `repeated uint32` shape).
    pub fn from_wire(kind: i32, shape: &[u32]) -> Result<Self> {
        let kind = SlotKind::try_from(kind).map_err(|_| Error::InvalidSlot {
            reason: format!("unknown slot kind {kind}"),
        })?;
        Self::new(kind, shape.iter().map(|&d| d as usize).collect())
    }

    /// Elements per image (the product of the feature shape).
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// The slot kind.
    pub fn kind(&self) -> SlotKind {
        match self.kind {
            SlotKindName::Dense => SlotKind::Dense,
            SlotKindName::Conv2d => SlotKind::Conv2d,
        }
    }

    /// The feature shape, without the batch dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The shape as `repeated uint32` for the wire.
    pub fn wire_shape(&self) -> Vec<u32> {
        self.shape
            .iter()
            .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
            .collect()
    }

    /// The full input shape for a batch of `batch`.
    pub fn batch_shape(&self, batch: usize) -> Vec<usize> {
        let mut shape = Vec::with_capacity(self.shape.len() + 1);
        shape.push(batch);
        shape.extend_from_slice(&self.shape);
        shape
    }

    /// Channels (conv) or features (dense): the first feature dimension.
    pub fn channels(&self) -> usize {
        self.shape[0]
    }
}

impl std::fmt::Display for SlotShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        match self.kind {
            SlotKindName::Dense => write!(f, "dense[{}]", dims.join("x")),
            SlotKindName::Conv2d => write!(f, "conv2d[{}]", dims.join("x")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rank_must_match_the_kind_and_dimensions_be_positive() {
        assert!(SlotShape::new(SlotKind::Dense, vec![4, 4]).is_err());
        assert!(SlotShape::new(SlotKind::Conv2d, vec![4]).is_err());
        assert!(SlotShape::conv2d(4, 0, 2).is_err());
        assert!(SlotShape::new(SlotKind::Unspecified, vec![4]).is_err());
        let slot = SlotShape::conv2d(4, 7, 7).unwrap();
        assert_eq!(slot.batch_shape(2), vec![2, 4, 7, 7]);
        assert_eq!(slot.to_string(), "conv2d[4x7x7]");
        let back = SlotShape::from_wire(slot.kind() as i32, &slot.wire_shape()).unwrap();
        assert_eq!(back, slot);
    }
}
