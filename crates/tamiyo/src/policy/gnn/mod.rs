//! The learned controller's network (issue #17, in progress): a
//! heterogeneous graph network over [`crate::graph::ObservationGraph`] on
//! candle. Per-node-type encoders read features and their presence masks;
//! one SAGE-style mean layer and one attention layer pass messages along
//! the five relations in both directions, with edge features; a pooled
//! global state feeds the factored heads of
//! [`crate::policy::action::Logits`] and a value head.
//!
//! Weights are drawn from a seeded ChaCha stream (Glorot-uniform), so a
//! model is a pure function of its seed until trained. [`mask_for`] gives
//! the legal actions of an observation in the heads' shapes;
//! [`GnnModel::evaluate`] the differentiable joint log-probability, entropy
//! and value of a recorded action, which PPO trains on.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use rand_core::{RngCore, SeedableRng};

use crate::error::{Error, Result};
use crate::graph::{EDGE_DIM, NodeType, ObservationGraph, Relation};
use crate::policy::action::Logits;

mod evaluate;
mod file;
mod mask;
pub use evaluate::Evaluation;
pub use file::{
    POLICY_FORMAT, PolicyManifest, load_policy, save_policy, schema_hash, stated_weights_digest,
};
pub use mask::mask_for;

/// Blend modes the blend head chooses between, in head order.
pub const BLENDS: [leyline::v1::BlendMode; 4] = [
    leyline::v1::BlendMode::Convex,
    leyline::v1::BlendMode::Residual,
    leyline::v1::BlendMode::Channel,
    leyline::v1::BlendMode::Confidence,
];

const RELATIONS: [(Relation, NodeType, NodeType); 5] = [
    (Relation::GlobalSlot, NodeType::Global, NodeType::Slot),
    (Relation::SlotNext, NodeType::Slot, NodeType::Slot),
    (Relation::SlotSeed, NodeType::Slot, NodeType::Seed),
    (Relation::SeedBlueprint, NodeType::Seed, NodeType::Blueprint),
    (Relation::SlotBlueprint, NodeType::Slot, NodeType::Blueprint),
];

const TYPES: [NodeType; 4] = [
    NodeType::Global,
    NodeType::Slot,
    NodeType::Seed,
    NodeType::Blueprint,
];

/// One relation in one direction: ((relation, forward), (sending type,
/// receiving type, its edges)).
type Directed<'g> = (
    (Relation, bool),
    (NodeType, NodeType, &'g crate::graph::EdgeSet),
);

fn tensor_error(e: candle_core::Error) -> Error {
    Error::Action(format!("GNN: {e}"))
}

/// A dense layer `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
struct Linear {
    w: Var,
    b: Var,
}

impl Linear {
    fn new(rng: &mut rand_chacha::ChaCha8Rng, inputs: usize, outputs: usize) -> Result<Self> {
        let bound = (6.0 / (inputs + outputs) as f64).sqrt();
        let weights: Vec<f32> = (0..inputs * outputs)
            .map(|_| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * bound) as f32
            })
            .collect();
        let w = Tensor::from_vec(weights, (outputs, inputs), &Device::Cpu).map_err(tensor_error)?;
        let b = Tensor::zeros(outputs, DType::F32, &Device::Cpu).map_err(tensor_error)?;
        Ok(Self {
            w: Var::from_tensor(&w).map_err(tensor_error)?,
            b: Var::from_tensor(&b).map_err(tensor_error)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, esper_ops::Activation::Identity)
    }

    /// `relu(x Wᵀ + b)` in one op.
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, esper_ops::Activation::Relu)
    }

    /// esper-ops' fused dense layer: one GEMM each way, and no gradient
    /// for an input that does not need one (the graph's features).
    fn apply(&self, x: &Tensor, act: esper_ops::Activation) -> Result<Tensor> {
        esper_ops::linear(x, self.w.as_tensor(), self.b.as_tensor(), act).map_err(tensor_error)
    }
}

/// Sizes of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnnConfig {
    /// Width of every node embedding (default 32).
    pub hidden: usize,
}

impl Default for GnnConfig {
    fn default() -> Self {
        Self { hidden: 32 }
    }
}

/// The network's weights.
#[derive(Debug, Clone)]
pub struct GnnModel {
    hidden: usize,
    encoders: BTreeMap<NodeType, Linear>,
    /// Per relation and direction (true: src → dst), the SAGE message layer.
    sage: BTreeMap<(Relation, bool), Linear>,
    /// Per node type, the SAGE self layer.
    keep: BTreeMap<NodeType, Linear>,
    attend: Linear,
    /// Per relation and direction, the attention vector over [z_dst ‖ z_src].
    score: BTreeMap<(Relation, bool), Linear>,
    pool: Linear,
    op: Linear,
    slot: Linear,
    query: Linear,
    key: Linear,
    blend: Linear,
    tempo: Linear,
    seed: Linear,
    value: Linear,
}

/// What one forward pass produced.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Every head's logits, for the sampler.
    pub logits: Logits,
    /// The value head.
    pub value: f32,
}

impl GnnModel {
    /// A model of `config` with weights drawn from `seed`.
    pub fn new(config: GnnConfig, seed: u64) -> Result<Self> {
        if config.hidden == 0 {
            return Err(Error::Action("GNN: hidden width must be at least 1".into()));
        }
        let h = config.hidden;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut encoders = BTreeMap::new();
        let mut keep = BTreeMap::new();
        for t in TYPES {
            encoders.insert(t, Linear::new(&mut rng, 2 * t.dim(), h)?);
            keep.insert(t, Linear::new(&mut rng, h, h)?);
        }
        let mut sage = BTreeMap::new();
        let mut score = BTreeMap::new();
        for (r, _, _) in RELATIONS {
            for forward in [true, false] {
                sage.insert((r, forward), Linear::new(&mut rng, h + EDGE_DIM, h)?);
                score.insert((r, forward), Linear::new(&mut rng, 2 * h, 1)?);
            }
        }
        Ok(Self {
            hidden: h,
            encoders,
            sage,
            keep,
            attend: Linear::new(&mut rng, h, h)?,
            score,
            pool: Linear::new(&mut rng, 4 * h, h)?,
            op: Linear::new(&mut rng, h, 4)?,
            slot: Linear::new(&mut rng, 2 * h, 1)?,
            query: Linear::new(&mut rng, h, h)?,
            key: Linear::new(&mut rng, h, h)?,
            blend: Linear::new(&mut rng, h, BLENDS.len())?,
            tempo: Linear::new(&mut rng, h, crate::policy::action::TEMPOS.len())?,
            seed: Linear::new(&mut rng, 2 * h, 1)?,
            value: Linear::new(&mut rng, h, 1)?,
        })
    }

    /// Every layer with a stable name (`encoder.slot`, `sage.slot_seed.fwd`,
    /// `op`, …): the names a policy file stores the weights under.
    fn named_layers(&self) -> Vec<(String, &Linear)> {
        let relation = |(r, forward): &(Relation, bool)| {
            let name = match r {
                Relation::GlobalSlot => "global_slot",
                Relation::SlotNext => "slot_next",
                Relation::SlotSeed => "slot_seed",
                Relation::SeedBlueprint => "seed_blueprint",
                Relation::SlotBlueprint => "slot_blueprint",
            };
            format!("{name}.{}", if *forward { "fwd" } else { "rev" })
        };
        let node = |t: &NodeType| match t {
            NodeType::Global => "global",
            NodeType::Slot => "slot",
            NodeType::Seed => "seed",
            NodeType::Blueprint => "blueprint",
        };
        let mut out: Vec<(String, &Linear)> = Vec::new();
        out.extend(
            self.encoders
                .iter()
                .map(|(t, l)| (format!("encoder.{}", node(t)), l)),
        );
        out.extend(
            self.keep
                .iter()
                .map(|(t, l)| (format!("keep.{}", node(t)), l)),
        );
        out.extend(
            self.sage
                .iter()
                .map(|(k, l)| (format!("sage.{}", relation(k)), l)),
        );
        out.extend(
            self.score
                .iter()
                .map(|(k, l)| (format!("score.{}", relation(k)), l)),
        );
        for (name, l) in [
            ("attend", &self.attend),
            ("pool", &self.pool),
            ("op", &self.op),
            ("slot", &self.slot),
            ("query", &self.query),
            ("key", &self.key),
            ("blend", &self.blend),
            ("tempo", &self.tempo),
            ("seed", &self.seed),
            ("value", &self.value),
        ] {
            out.push((name.to_string(), l));
        }
        out
    }

    /// Every weight by name (`<layer>.w`, `<layer>.b`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.named_layers()
            .into_iter()
            .flat_map(|(name, l)| {
                [
                    (format!("{name}.w"), l.w.clone()),
                    (format!("{name}.b"), l.b.clone()),
                ]
            })
            .collect()
    }

    /// The width of every node embedding.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Every trainable variable, in a fixed order (`named_vars`' order).
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Node embeddings after the encoders and both message-passing layers.
    fn embed(&self, graph: &ObservationGraph) -> Result<BTreeMap<NodeType, Tensor>> {
        let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
        let mut h = BTreeMap::new();
        for t in TYPES {
            let Some(nodes) = graph.nodes.get(&t).filter(|n| !n.ids.is_empty()) else {
                continue;
            };
            let n = nodes.ids.len();
            let x = f(Tensor::from_slice(
                &nodes.features,
                (n, t.dim()),
                &Device::Cpu,
            ))?;
            let m = f(Tensor::from_slice(&nodes.mask, (n, t.dim()), &Device::Cpu))?;
            let input = f(Tensor::cat(&[&x, &m], 1))?;
            let encoder = self.encoder(t)?;
            h.insert(t, encoder.forward_relu(&input)?);
        }
        // SAGE: self + mean of messages per relation and direction.
        let mut next = BTreeMap::new();
        for (t, x) in &h {
            let keep = self
                .keep
                .get(t)
                .ok_or_else(|| Error::Action(format!("GNN: no self layer for {t:?}")))?;
            next.insert(*t, keep.forward(x)?);
        }
        self.each_edge_set(graph, &h, |key, src_h, agg, edge, dst_type| {
            let layer = self
                .sage
                .get(&key)
                .ok_or_else(|| Error::Action("GNN: missing SAGE layer".into()))?;
            let message = layer.forward(&f(Tensor::cat(&[src_h, edge], 1))?)?;
            let mean = f(agg.matmul(&message))?;
            if let Some(acc) = next.get_mut(&dst_type) {
                *acc = f(&*acc + &mean)?;
            }
            Ok(())
        })?;
        let mut h: BTreeMap<NodeType, Tensor> = next
            .into_iter()
            .map(|(t, x)| x.relu().map(|x| (t, x)).map_err(tensor_error))
            .collect::<Result<_>>()?;
        // Attention: softmax-weighted sums over each node's incoming edges.
        let z: BTreeMap<NodeType, Tensor> = h
            .iter()
            .map(|(t, x)| self.attend.forward(x).map(|z| (*t, z)))
            .collect::<Result<_>>()?;
        let mut add: BTreeMap<NodeType, Tensor> = BTreeMap::new();
        for ((relation, forward), (src, dst, edges)) in self.directed(graph) {
            let (Some(zs), Some(zd)) = (z.get(&src), z.get(&dst)) else {
                continue;
            };
            let (from, to) = if forward {
                (&edges.src, &edges.dst)
            } else {
                (&edges.dst, &edges.src)
            };
            let from_t = f(Tensor::new(from.as_slice(), &Device::Cpu))?;
            let to_t = f(Tensor::new(to.as_slice(), &Device::Cpu))?;
            let zs_e = f(zs.index_select(&from_t, 0))?;
            let zd_e = f(zd.index_select(&to_t, 0))?;
            let scorer = self
                .score
                .get(&(relation, forward))
                .ok_or_else(|| Error::Action("GNN: missing attention layer".into()))?;
            let s = scorer.forward(&f(Tensor::cat(&[&zd_e, &zs_e], 1))?)?;
            let s = f(s.squeeze(1).and_then(|s| {
                // LeakyReLU(0.2).
                let neg = (s.minimum(0.0)? * 0.2)?;
                s.maximum(0.0)? + neg
            }))?;
            let n_dst = zd.dim(0).map_err(tensor_error)?;
            let weights = softmax_by_destination(&s, to, n_dst)?;
            let agg = f(weights.matmul(&zs_e))?;
            match add.get_mut(&dst) {
                Some(acc) => *acc = f(&*acc + &agg)?,
                None => {
                    add.insert(dst, agg);
                }
            }
        }
        for (t, extra) in add {
            if let Some(x) = h.get_mut(&t) {
                *x = f((&*x + &extra).and_then(|x| x.relu()))?;
            }
        }
        Ok(h)
    }

    fn encoder(&self, t: NodeType) -> Result<&Linear> {
        self.encoders
            .get(&t)
            .ok_or_else(|| Error::Action(format!("GNN: no encoder for {t:?}")))
    }

    /// Each relation in both directions whose endpoints are present:
    /// ((relation, forward), (sending type, receiving type, edges)).
    fn directed<'g>(&self, graph: &'g ObservationGraph) -> Vec<Directed<'g>> {
        let mut out = Vec::new();
        for (relation, src, dst) in RELATIONS {
            let Some(edges) = graph.edges.get(&relation).filter(|e| !e.src.is_empty()) else {
                continue;
            };
            out.push(((relation, true), (src, dst, edges)));
            out.push(((relation, false), (dst, src, edges)));
        }
        out
    }

    /// Calls `visit(key, sender embeddings per edge, mean matrix
    /// [n_receivers × n_edges], edge features, receiving type)` for each
    /// relation and direction.
    fn each_edge_set(
        &self,
        graph: &ObservationGraph,
        h: &BTreeMap<NodeType, Tensor>,
        mut visit: impl FnMut((Relation, bool), &Tensor, &Tensor, &Tensor, NodeType) -> Result<()>,
    ) -> Result<()> {
        let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
        for (key, (src, dst, edges)) in self.directed(graph) {
            let (Some(hs), Some(hd)) = (h.get(&src), h.get(&dst)) else {
                continue;
            };
            let (from, to) = if key.1 {
                (&edges.src, &edges.dst)
            } else {
                (&edges.dst, &edges.src)
            };
            let n_e = from.len();
            let from_t = f(Tensor::new(from.as_slice(), &Device::Cpu))?;
            let hs_e = f(hs.index_select(&from_t, 0))?;
            let edge = f(Tensor::from_slice(
                &edges.features,
                (n_e, EDGE_DIM),
                &Device::Cpu,
            ))?;
            let n_dst = hd.dim(0).map_err(tensor_error)?;
            let mut degree = vec![0f32; n_dst];
            for &d in to {
                if let Some(c) = degree.get_mut(d as usize) {
                    *c += 1.0;
                }
            }
            let mut mean = vec![0f32; n_dst * n_e];
            for (e, &d) in to.iter().enumerate() {
                let d = d as usize;
                if d < n_dst {
                    mean[d * n_e + e] = 1.0 / degree[d];
                }
            }
            let agg = f(Tensor::from_vec(mean, (n_dst, n_e), &Device::Cpu))?;
            visit(key, &hs_e, &agg, &edge, dst)?;
        }
        Ok(())
    }

    /// One forward pass over `graph`: every head as a tensor, with the
    /// gradient path to the weights (what PPO differentiates).
    pub(crate) fn heads(&self, graph: &ObservationGraph) -> Result<Heads> {
        let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
        let h = self.embed(graph)?;
        let hidden = self.hidden;
        let zero = f(Tensor::zeros((1, hidden), DType::F32, &Device::Cpu))?;
        let mean_of = |t: NodeType| -> Result<Tensor> {
            match h.get(&t) {
                Some(x) => f(x.mean_keepdim(0)),
                None => Ok(zero.clone()),
            }
        };
        let pooled_in = f(Tensor::cat(
            &[
                &mean_of(NodeType::Global)?,
                &mean_of(NodeType::Slot)?,
                &mean_of(NodeType::Seed)?,
                &mean_of(NodeType::Blueprint)?,
            ],
            1,
        ))?;
        let g = self.pool.forward_relu(&pooled_in)?;
        let with_global = |x: &Tensor| -> Result<Tensor> {
            let n = x.dim(0).map_err(tensor_error)?;
            f(Tensor::cat(&[x, &f(g.broadcast_as((n, hidden)))?], 1))
        };
        let row = |t: Tensor| f(t.flatten_all());
        let slots = h.get(&NodeType::Slot);
        let bps = h.get(&NodeType::Blueprint);
        let slot = match slots {
            Some(x) => Some(row(self.slot.forward(&with_global(x)?)?)?),
            None => None,
        };
        let blueprint = match (slots, bps) {
            (Some(x), Some(b)) => {
                let q = self.query.forward(x)?;
                let k = self.key.forward(b)?;
                Some(f(q
                    .matmul(&f(k.t())?)
                    .and_then(|s| s / (hidden as f64).sqrt()))?)
            }
            _ => None,
        };
        let blend = match bps {
            Some(b) => Some(self.blend.forward(b)?),
            None => None,
        };
        let seed = match h.get(&NodeType::Seed) {
            Some(x) => Some(row(self.seed.forward(&with_global(x)?)?)?),
            None => None,
        };
        Ok(Heads {
            op: row(self.op.forward(&g)?)?,
            tempo: row(self.tempo.forward(&g)?)?,
            slot,
            blueprint,
            blend,
            seed,
            value: f(self
                .value
                .forward(&g)?
                .flatten_all()
                .and_then(|v| v.sum_all()))?,
        })
    }

    /// One forward pass over `graph`: every head's logits and the value.
    pub fn forward(&self, graph: &ObservationGraph) -> Result<Forward> {
        let heads = self.heads(graph)?;
        let vec1 = |t: &Tensor| t.to_vec1::<f32>().map_err(tensor_error);
        let vec2 = |t: &Option<Tensor>| -> Result<Vec<Vec<f32>>> {
            t.as_ref()
                .map_or(Ok(Vec::new()), |t| t.to_vec2().map_err(tensor_error))
        };
        let logits = Logits {
            op: vec1(&heads.op)?,
            tempo: vec1(&heads.tempo)?,
            slot: heads.slot.as_ref().map_or(Ok(Vec::new()), vec1)?,
            blueprint: vec2(&heads.blueprint)?,
            blend: vec2(&heads.blend)?,
            seed: heads.seed.as_ref().map_or(Ok(Vec::new()), vec1)?,
        };
        let value = heads.value.to_scalar::<f32>().map_err(tensor_error)?;
        if !value.is_finite() {
            return Err(Error::Action(format!("GNN: value head is {value}")));
        }
        Ok(Forward { logits, value })
    }
}

/// Every head of one forward pass as tensors (see [`Logits`] for shapes);
/// absent node types give no head.
#[derive(Debug, Clone)]
pub(crate) struct Heads {
    pub op: Tensor,
    pub tempo: Tensor,
    pub slot: Option<Tensor>,
    pub blueprint: Option<Tensor>,
    pub blend: Option<Tensor>,
    pub seed: Option<Tensor>,
    /// A scalar.
    pub value: Tensor,
}

/// Per-destination softmax of edge scores: a `[n_dst × n_edges]` matrix
/// whose row `d` holds the weights of the edges into `d` (zeros elsewhere;
/// a node with no incoming edge gets a zero row).
fn softmax_by_destination(scores: &Tensor, to: &[u32], n_dst: usize) -> Result<Tensor> {
    let f = |r: candle_core::Result<Tensor>| r.map_err(tensor_error);
    let n_e = to.len();
    let mut member = vec![0f32; n_dst * n_e];
    let mut has = vec![0f32; n_dst];
    for (e, &d) in to.iter().enumerate() {
        let d = d as usize;
        if d < n_dst {
            member[d * n_e + e] = 1.0;
            has[d] = 1.0;
        }
    }
    let member = f(Tensor::from_vec(member, (n_dst, n_e), &Device::Cpu))?;
    let has = f(Tensor::from_vec(has, (n_dst, 1), &Device::Cpu))?;
    // Non-members pushed to -1e9 before the softmax, then zeroed.
    let s = f(scores
        .unsqueeze(0)
        .and_then(|s| s.broadcast_as((n_dst, n_e))))?;
    let penalty = f(member.affine(1e9, -1e9))?;
    let masked = f(&s + &penalty)?;
    let w = f(candle_nn::ops::softmax(&masked, D::Minus1))?;
    f((&w * &member).and_then(|w| w.broadcast_mul(&has)))
}

#[cfg(test)]
mod tests;
