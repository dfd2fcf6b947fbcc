//! The observation graph: the state packet and the blueprint catalog as a
//! heterogeneous graph, the input of the learned (GNN) policy.
//!
//! Nodes: one `global`; one `slot` per host slot; one `seed` per seed in a
//! slot; one `blueprint` per real catalog entry (never an invented id: a seed
//! whose blueprint is not in the catalog gets no edge to one, and the graph
//! says so in `dangling`). Every node type has a fixed feature width, every
//! relation the same edge-feature width ([`EDGE_DIM`]; zeros where a relation
//! has nothing to say).
//!
//! The [`GraphSchema`] (config) names the node types in use (an unknown one is
//! a config error), the most nodes of each kind (beyond it nodes are dropped —
//! deepest slots, oldest-listed seeds, last blueprints — and the graph reports
//! how many), and the training metrics that must be present (missing ones are
//! errors). Optional inputs carry a presence mask per feature and count in
//! the graph's coverage. Continuous features are normalised by per-feature
//! EWMA statistics ([`Normalisers`]) whose save and load errors are returned,
//! never swallowed. What no single packet holds — the validation loss at
//! earlier epoch ends, the seeds already tried — the builder remembers in a
//! [`RunMemory`], checkpointed with the policy.

mod features;
mod memory;
mod normalise;

use std::collections::BTreeMap;

use leyline::v1::{CatalogEntry, SeedStage, SlotKind, SystemStatePacket};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::observation::stage_of;

pub use features::{BLUEPRINT_DIM, EDGE_DIM, FEATURES_VERSION, GLOBAL_DIM, SEED_DIM, SLOT_DIM};
pub use memory::RunMemory;
pub use normalise::Normalisers;

/// The kinds of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    /// The run as a whole.
    Global,
    /// A host slot.
    Slot,
    /// A seed in a slot.
    Seed,
    /// A catalog blueprint.
    Blueprint,
}

impl NodeType {
    /// Feature width of this node type.
    pub fn dim(self) -> usize {
        match self {
            NodeType::Global => GLOBAL_DIM,
            NodeType::Slot => SLOT_DIM,
            NodeType::Seed => SEED_DIM,
            NodeType::Blueprint => BLUEPRINT_DIM,
        }
    }
}

/// The relations (directed edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// global → slot.
    GlobalSlot,
    /// slot → the next slot in depth.
    SlotNext,
    /// slot → its seed.
    SlotSeed,
    /// seed → the blueprint it was built from.
    SeedBlueprint,
    /// slot → a blueprint that fits its kind.
    SlotBlueprint,
}

/// What the graph may hold (the `[tamiyo.graph]` config section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSchema {
    /// Node types in use (default all four; `global` and `slot` are required).
    pub node_types: Vec<NodeType>,
    /// Most slot nodes (default 64).
    pub max_slots: usize,
    /// Most seed nodes (default 64).
    pub max_seeds: usize,
    /// Most blueprint nodes (default 32).
    pub max_blueprints: usize,
    /// Training metrics every packet must carry (default `learning_rate`).
    pub required_metrics: Vec<String>,
}

impl Default for GraphSchema {
    fn default() -> Self {
        Self {
            node_types: vec![
                NodeType::Global,
                NodeType::Slot,
                NodeType::Seed,
                NodeType::Blueprint,
            ],
            max_slots: 64,
            max_seeds: 64,
            max_blueprints: 32,
            required_metrics: vec!["learning_rate".into()],
        }
    }
}

impl GraphSchema {
    /// Checks the schema: global and slot nodes present, no type twice,
    /// limits of at least 1, required metric names non-empty.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for needed in [NodeType::Global, NodeType::Slot] {
            if !self.node_types.contains(&needed) {
                return Err(format!("node_types must include {needed:?}"));
            }
        }
        let mut seen = self.node_types.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.node_types.len() {
            return Err("node_types lists a type twice".into());
        }
        if self.max_slots == 0 || self.max_seeds == 0 || self.max_blueprints == 0 {
            return Err("node limits must be at least 1".into());
        }
        if self.required_metrics.iter().any(|m| m.trim().is_empty()) {
            return Err("required_metrics holds an empty name".into());
        }
        Ok(())
    }
}

/// The nodes of one type: ids, features (row-major, `dim` per node) and the
/// presence mask of the features (1 present, 0 missing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSet {
    /// Node ids (slot id, seed id, blueprint id; `global`).
    pub ids: Vec<String>,
    /// Features, `ids.len() × dim`.
    pub features: Vec<f32>,
    /// Presence of each feature, same shape.
    pub mask: Vec<f32>,
}

/// The edges of one relation: source and destination indices into their
/// node sets, and `EDGE_DIM` features per edge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeSet {
    /// Source node indices.
    pub src: Vec<u32>,
    /// Destination node indices.
    pub dst: Vec<u32>,
    /// Features, `src.len() × EDGE_DIM`.
    pub features: Vec<f32>,
}

/// How many nodes the schema's limits dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// Slots dropped (deepest first).
    pub slots: usize,
    /// Seeds dropped.
    pub seeds: usize,
    /// Blueprints dropped.
    pub blueprints: usize,
}

impl Truncation {
    /// Whether anything was dropped.
    pub fn any(&self) -> bool {
        self.slots + self.seeds + self.blueprints > 0
    }
}

/// One observation as a graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservationGraph {
    /// Nodes by type.
    pub nodes: BTreeMap<NodeType, NodeSet>,
    /// Edges by relation.
    pub edges: BTreeMap<Relation, EdgeSet>,
    /// What the limits dropped.
    pub truncated: Truncation,
    /// Seeds whose blueprint is not in the catalog (no edge was invented).
    pub dangling: Vec<String>,
    /// Fraction of optional features present, over every node.
    pub coverage: f64,
}

/// Builds graphs under one schema, with persistent normalisers.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    schema: GraphSchema,
    normalisers: Normalisers,
    memory: RunMemory,
    /// Parameters blueprints are priced with, over their defaults.
    parameters: BTreeMap<String, urza::Parameters>,
}

impl GraphBuilder {
    /// A builder for `schema` (validated).
    pub fn new(schema: GraphSchema) -> Result<Self> {
        schema
            .validate()
            .map_err(|detail| Error::Graph(format!("schema: {detail}")))?;
        Ok(Self {
            schema,
            normalisers: Normalisers::new(0.05),
            memory: RunMemory::default(),
            parameters: BTreeMap::new(),
        })
    }

    /// Prices (and fits) each blueprint named in `parameters` with them over
    /// its defaults — the variant the policy germinates — instead of its
    /// defaults alone.
    pub fn with_blueprint_parameters(
        mut self,
        parameters: BTreeMap<String, urza::Parameters>,
    ) -> Self {
        self.parameters = parameters;
        self
    }

    /// What the builder remembers of the run (to checkpoint it).
    pub fn memory(&self) -> &RunMemory {
        &self.memory
    }

    /// Replaces the run's memory (from a checkpoint).
    pub fn set_memory(&mut self, memory: RunMemory) {
        self.memory = memory;
    }

    /// The normalisers (to save them).
    pub fn normalisers(&self) -> &Normalisers {
        &self.normalisers
    }

    /// Replaces the normalisers (loaded from a file); their widths must be
    /// this schema's.
    pub fn set_normalisers(&mut self, normalisers: Normalisers) -> Result<()> {
        normalisers.check_dims()?;
        self.normalisers = normalisers;
        Ok(())
    }

    /// The graph of `packet` with `catalog`'s blueprints.
    pub fn build(
        &mut self,
        packet: &SystemStatePacket,
        catalog: &[CatalogEntry],
    ) -> Result<ObservationGraph> {
        for name in &self.schema.required_metrics {
            if !packet.training_metrics.contains_key(name) {
                return Err(Error::MissingMetric {
                    name: "training_metrics (required by the graph schema)",
                    packet_id: format!("{} lacks {name}", packet.packet_id),
                });
            }
        }
        let types = self.schema.node_types.clone();
        let uses = |t: NodeType| types.contains(&t);
        let (max_slots, max_seeds, max_blueprints) = (
            self.schema.max_slots,
            self.schema.max_seeds,
            self.schema.max_blueprints,
        );
        let mut g = ObservationGraph::default();
        let mut present = (0usize, 0usize);

        // Slots, shallowest first; the deepest beyond the limit are dropped.
        let mut slots: Vec<_> = packet.slots.iter().collect();
        slots.sort_by_key(|s| (s.layer_depth, s.slot_id.clone()));
        g.truncated.slots = slots.len().saturating_sub(max_slots);
        slots.truncate(max_slots);

        self.memory.observe(packet);
        let global = features::global(packet, &self.memory);
        self.push(
            &mut g,
            NodeType::Global,
            "global".into(),
            global,
            &mut present,
        );
        for s in &slots {
            let row = features::slot(s);
            self.push(&mut g, NodeType::Slot, s.slot_id.clone(), row, &mut present);
        }
        let slot_index: BTreeMap<&str, u32> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.slot_id.as_str(), i as u32))
            .collect();
        for (i, _) in slots.iter().enumerate() {
            edge(&mut g, Relation::GlobalSlot, 0, i as u32, [0.0; EDGE_DIM]);
        }
        for (i, pair) in slots.windows(2).enumerate() {
            let gap = pair[1].layer_depth.saturating_sub(pair[0].layer_depth) as f32;
            edge(
                &mut g,
                Relation::SlotNext,
                i as u32,
                i as u32 + 1,
                [gap, 0.0, 0.0, 0.0],
            );
        }

        let host_macs = packet.training_metrics.get("host_forward_macs").copied();
        // Blueprints: real catalog entries only, in catalog order.
        let mut blueprint_index: BTreeMap<String, u32> = BTreeMap::new();
        if uses(NodeType::Blueprint) {
            let entries: Vec<_> = catalog.iter().filter(|e| e.descriptor.is_some()).collect();
            g.truncated.blueprints = entries.len().saturating_sub(max_blueprints);
            for entry in entries.into_iter().take(max_blueprints) {
                let Some(d) = &entry.descriptor else { continue };
                blueprint_index.insert(d.blueprint_id.clone(), blueprint_index.len() as u32);
                let row = features::blueprint(entry);
                self.push(
                    &mut g,
                    NodeType::Blueprint,
                    d.blueprint_id.clone(),
                    row,
                    &mut present,
                );
                for (slot, &si) in &slot_index {
                    let Some(s) = slots.iter().find(|s| s.slot_id == *slot) else {
                        continue;
                    };
                    let kind = SlotKind::try_from(s.kind).unwrap_or(SlotKind::Unspecified);
                    if !d.slot_kinds.contains(&(kind as i32)) {
                        continue;
                    }
                    let given = self.parameters.get(&d.blueprint_id);
                    let Some([params, macs]) = fit_at(&d.blueprint_id, given, s, host_macs) else {
                        continue;
                    };
                    let bi = blueprint_index.len() as u32 - 1;
                    edge(
                        &mut g,
                        Relation::SlotBlueprint,
                        si,
                        bi,
                        [
                            d.risk as f32,
                            f32::from(u8::from(entry.quarantined)),
                            params,
                            macs,
                        ],
                    );
                }
            }
        }

        // Seeds in kept slots.
        if uses(NodeType::Seed) {
            let seeds: Vec<_> = packet
                .seed_states
                .iter()
                .filter(|s| slot_index.contains_key(s.slot_id.as_str()))
                .collect();
            let dropped_with_slots = packet.seed_states.len() - seeds.len();
            g.truncated.seeds = dropped_with_slots + seeds.len().saturating_sub(max_seeds);
            for (i, s) in seeds.into_iter().take(max_seeds).enumerate() {
                let row = features::seed(s);
                self.push(&mut g, NodeType::Seed, s.seed_id.clone(), row, &mut present);
                let stage = stage_of(s.stage);
                let progress = features::stage_progress(stage);
                if let Some(&si) = slot_index.get(s.slot_id.as_str()) {
                    let alpha = s.alpha.as_ref().map_or(0.0, |a| a.alpha) as f32;
                    edge(
                        &mut g,
                        Relation::SlotSeed,
                        si,
                        i as u32,
                        [alpha, progress, 0.0, 0.0],
                    );
                }
                match blueprint_index.get(&s.blueprint_id) {
                    Some(&bi) => edge(
                        &mut g,
                        Relation::SeedBlueprint,
                        i as u32,
                        bi,
                        [s.risk_score as f32, 0.0, 0.0, 0.0],
                    ),
                    // In the catalog but beyond the limit: the truncation
                    // count says so. Not in the catalog at all: dangling.
                    None if uses(NodeType::Blueprint)
                        && !catalog.iter().any(|e| {
                            e.descriptor
                                .as_ref()
                                .is_some_and(|d| d.blueprint_id == s.blueprint_id)
                        }) =>
                    {
                        g.dangling.push(s.seed_id.clone())
                    }
                    None => {}
                }
                if stage == SeedStage::Unknown {
                    return Err(Error::Graph(format!(
                        "seed {} has an unknown stage",
                        s.seed_id
                    )));
                }
            }
        }
        g.coverage = if present.1 == 0 {
            1.0
        } else {
            present.0 as f64 / present.1 as f64
        };
        Ok(g)
    }

    /// Normalises `row` for `kind`, updates the statistics, and appends it.
    fn push(
        &mut self,
        g: &mut ObservationGraph,
        kind: NodeType,
        id: String,
        row: features::Row,
        present: &mut (usize, usize),
    ) {
        let normalised = self.normalisers.apply(kind, &row);
        let set = g.nodes.entry(kind).or_default();
        set.ids.push(id);
        set.features.extend(normalised);
        for (i, &m) in row.mask.iter().enumerate() {
            if row.optional.contains(&i) {
                present.1 += 1;
                if m > 0.0 {
                    present.0 += 1;
                }
            }
        }
        set.mask.extend(row.mask);
    }
}

/// Whether `blueprint` with `given` parameters over its defaults fits `slot`
/// (its shape constraints, not only its kind), and if so its cost there as
/// edge features: parameters `ln(1 + n) / 10` and forward MACs relative to
/// the host's, `ln(1 + seed / host)` (0 when the host does not count them).
/// A blueprint this build does not know (a remote catalog's) fits by kind,
/// at unknown cost.
fn fit_at(
    blueprint: &str,
    given: Option<&urza::Parameters>,
    slot: &leyline::v1::SlotState,
    host_macs: Option<f64>,
) -> Option<[f32; 2]> {
    let Some(def) = urza::definition(blueprint) else {
        return Some([0.0, 0.0]);
    };
    let kind = SlotKind::try_from(slot.kind).unwrap_or(SlotKind::Unspecified);
    let shape = urza::SlotShape::new(
        kind,
        slot.feature_shape.iter().map(|&d| d as usize).collect(),
    )
    .ok()?;
    let params = given.map_or_else(|| def.default_parameters(), |g| def.with_defaults(g));
    let count = def.parameter_count(&params, &shape).ok()?;
    let macs = def.forward_macs(&params, &shape).ok()?;
    let relative = host_macs
        .filter(|&h| h > 0.0)
        .map_or(0.0, |h| (macs as f64 / h).ln_1p());
    Some([features::scaled_size(count as f64) as f32, relative as f32])
}

fn edge(g: &mut ObservationGraph, r: Relation, src: u32, dst: u32, f: [f32; EDGE_DIM]) {
    let set = g.edges.entry(r).or_default();
    set.src.push(src);
    set.dst.push(dst);
    set.features.extend(f);
}

#[cfg(test)]
pub(crate) mod tests;
