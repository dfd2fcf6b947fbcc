//! The built-in blueprint definitions: ids, tiers, risks, parameter bounds and
//! defaults. Ids are stable: artifacts and commands refer to them.

use leyline::v1::{BlueprintTier, SlotKind};

use super::conv::ConvKind;
use super::dense::DenseKind;
use super::{BlueprintDef, Kind};
use crate::params::ParamSpec;

const CONV: &[SlotKind] = &[SlotKind::Conv2d];
const DENSE: &[SlotKind] = &[SlotKind::Dense];
const ANY: &[SlotKind] = &[SlotKind::Dense, SlotKind::Conv2d];

const fn int(name: &'static str, min: f64, max: f64, default: f64, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        min,
        max,
        default,
        integer: true,
        doc,
    }
}

const fn real(
    name: &'static str,
    min: f64,
    max: f64,
    default: f64,
    doc: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        min,
        max,
        default,
        integer: false,
        doc,
    }
}

static CATALOG: &[BlueprintDef] = &[
    BlueprintDef {
        id: "identity",
        name: "Identity",
        tier: BlueprintTier::Safe,
        risk: 0.0,
        approval_required: false,
        slot_kinds: ANY,
        params: &[],
        tags: &["control", "no-op"],
        description: "Returns its input: the no-op seed of control cohorts.",
        kind: Kind::Identity,
    },
    BlueprintDef {
        id: "conv.channel_norm",
        name: "Channel norm",
        tier: BlueprintTier::Safe,
        risk: 0.1,
        approval_required: false,
        slot_kinds: CONV,
        params: &[real(
            "eps",
            1e-6,
            1e-3,
            1e-5,
            "variance floor of the normaliser",
        )],
        tags: &["norm"],
        description: "Normalises each sample over (C, H, W), then a per-channel scale and shift.",
        kind: Kind::Conv(ConvKind::ChannelNorm),
    },
    BlueprintDef {
        id: "conv.depthwise",
        name: "Depthwise conv",
        tier: BlueprintTier::Safe,
        risk: 0.15,
        approval_required: false,
        slot_kinds: CONV,
        params: &[int(
            "kernel_size",
            3.0,
            7.0,
            3.0,
            "odd kernel size k (k x k per channel)",
        )],
        tags: &["conv", "cheap"],
        description: "One k x k filter per channel, same padding.",
        kind: Kind::Conv(ConvKind::Depthwise),
    },
    BlueprintDef {
        id: "conv.light",
        name: "Light conv bottleneck",
        tier: BlueprintTier::Safe,
        risk: 0.2,
        approval_required: false,
        slot_kinds: CONV,
        params: &[real(
            "bottleneck_ratio",
            0.125,
            1.0,
            0.5,
            "bottleneck width / channels",
        )],
        tags: &["conv", "bottleneck"],
        description: "1x1 reduce, ReLU, 3x3, ReLU, 1x1 expand back to C channels.",
        kind: Kind::Conv(ConvKind::LightConv),
    },
    BlueprintDef {
        id: "conv.heavy",
        name: "Heavy conv",
        tier: BlueprintTier::Experimental,
        risk: 0.5,
        approval_required: false,
        slot_kinds: CONV,
        params: &[real(
            "width_multiplier",
            0.5,
            4.0,
            2.0,
            "hidden channels / channels",
        )],
        tags: &["conv", "heavy"],
        description: "Two 3x3 convolutions C -> W -> C with ReLU between them.",
        kind: Kind::Conv(ConvKind::HeavyConv),
    },
    BlueprintDef {
        id: "conv.residual",
        name: "Residual block",
        tier: BlueprintTier::Safe,
        risk: 0.25,
        approval_required: false,
        slot_kinds: CONV,
        params: &[
            int("depth", 1.0, 4.0, 1.0, "number of residual blocks"),
            real(
                "expansion",
                0.5,
                4.0,
                4.0,
                "hidden channels / channels inside a block",
            ),
        ],
        tags: &["conv", "residual"],
        description: "depth x [y = x + conv3x3(relu(conv3x3(x)))] through C*expansion channels.",
        kind: Kind::Conv(ConvKind::Residual),
    },
    BlueprintDef {
        id: "conv.squeeze_excitation",
        name: "Squeeze-excitation",
        tier: BlueprintTier::Safe,
        risk: 0.2,
        approval_required: false,
        slot_kinds: CONV,
        params: &[real(
            "reduction",
            1.0,
            16.0,
            4.0,
            "channels / squeezed width",
        )],
        tags: &["attention", "channel"],
        description: "Global average pool, C -> C/r -> C with ReLU and sigmoid, gates the channels.",
        kind: Kind::Conv(ConvKind::SqueezeExcitation),
    },
    BlueprintDef {
        id: "conv.spatial_attention",
        name: "Spatial self-attention (small)",
        tier: BlueprintTier::Experimental,
        risk: 0.7,
        approval_required: true,
        slot_kinds: CONV,
        params: &[
            int("key_dim", 2.0, 32.0, 8.0, "query/key width"),
            int(
                "kv_pool",
                1.0,
                4.0,
                2.0,
                "average-pool factor of keys and values",
            ),
        ],
        tags: &["attention", "spatial"],
        description: "Single-head attention of every position over a pooled map, 1x1 output projection.",
        kind: Kind::Conv(ConvKind::SpatialAttention),
    },
    BlueprintDef {
        id: "conv.grouped",
        name: "Grouped conv",
        tier: BlueprintTier::Safe,
        risk: 0.2,
        approval_required: false,
        slot_kinds: CONV,
        params: &[int(
            "groups",
            2.0,
            8.0,
            2.0,
            "channel groups (must divide C)",
        )],
        tags: &["conv", "grouped"],
        description: "A 3x3 convolution in channel groups.",
        kind: Kind::Conv(ConvKind::GroupedConv),
    },
    BlueprintDef {
        id: "dense.mlp_small",
        name: "Small MLP",
        tier: BlueprintTier::Safe,
        risk: 0.15,
        approval_required: false,
        slot_kinds: DENSE,
        params: &[real(
            "hidden_multiple",
            0.25,
            2.0,
            1.0,
            "hidden width / features",
        )],
        tags: &["mlp"],
        description: "F -> H -> F with ReLU.",
        kind: Kind::Dense(DenseKind::MlpSmall),
    },
    BlueprintDef {
        id: "dense.mlp_large",
        name: "Large MLP",
        tier: BlueprintTier::Experimental,
        risk: 0.45,
        approval_required: false,
        slot_kinds: DENSE,
        params: &[
            real("hidden_multiple", 1.0, 4.0, 2.0, "hidden width / features"),
            int("depth", 2.0, 4.0, 2.0, "hidden layers"),
        ],
        tags: &["mlp", "heavy"],
        description: "F -> H -> ... -> H -> F (depth hidden layers) with ReLU.",
        kind: Kind::Dense(DenseKind::MlpLarge),
    },
    BlueprintDef {
        id: "dense.low_rank",
        name: "Low-rank adapter",
        tier: BlueprintTier::Safe,
        risk: 0.1,
        approval_required: false,
        slot_kinds: DENSE,
        params: &[
            int("rank", 1.0, 64.0, 8.0, "rank r (at most the features)"),
            real("alpha", 0.1, 4.0, 1.0, "output scale is alpha / r"),
        ],
        tags: &["adapter", "cheap"],
        description: "(alpha / r) * B A x with A: F -> r and B: r -> F, no bias.",
        kind: Kind::Dense(DenseKind::LowRank),
    },
    BlueprintDef {
        id: "dense.gated_ff",
        name: "Gated feed-forward",
        tier: BlueprintTier::Experimental,
        risk: 0.4,
        approval_required: false,
        slot_kinds: DENSE,
        params: &[real(
            "hidden_multiple",
            1.0,
            4.0,
            2.0,
            "hidden width / features",
        )],
        tags: &["mlp", "gated"],
        description: "W2 (gelu(W1 x) * Wg x): a GLU feed-forward block.",
        kind: Kind::Dense(DenseKind::GatedFeedForward),
    },
];

/// Every built-in blueprint (identity first, then convolutional, then dense).
pub fn catalog() -> &'static [BlueprintDef] {
    CATALOG
}

/// The built-in blueprint with this id.
pub fn definition(id: &str) -> Option<&'static BlueprintDef> {
    CATALOG.iter().find(|d| d.id == id)
}
