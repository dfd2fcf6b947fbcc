//! Tamiyo step latency (observe + heuristic on the worker + risk + command
//! validation + signing, channel round trip included) for hosts of 8 and 64
//! convolutional slots, 16 seeds alive in the 64-slot case, each step an
//! epoch end on a plateau so the heuristic takes its longest path (scan free
//! slots and the catalog, count parameters, propose a germination that the
//! service signs), and the observation graph build on the same packets (the
//! heuristic does not read it; the learned policy will). Reported as p50/p99
//! and as a fraction of the 5 ms deadline (docs/DESIGN.md §10: p99 ≤ 5 ms at 64 slots
//! and 16 seeds).
//!
//! Run: `cargo bench -p tamiyo --bench step` (part of `cargo xtask bench`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use leyline::security::SigningKey;
use tamiyo::HeuristicConfig;
use tamiyo::graph::{GraphBuilder, GraphSchema};
use tamiyo::{BlueprintCache, Config, HeuristicPolicy, TamiyoService};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/mod.rs"]
mod common;
use common::packet;

fn main() {
    let catalog: Vec<_> = urza::catalog()
        .iter()
        .map(|d| leyline::v1::CatalogEntry {
            descriptor: Some(d.descriptor()),
            ..Default::default()
        })
        .collect();
    println!("tamiyo step (heuristic, germinating path), 2 000 steps each:");
    for (slots, seeds) in [(8usize, 2usize), (64, 16)] {
        let listing = catalog.clone();
        let cache = Arc::new(BlueprintCache::new(
            Box::new(move || Ok(listing.clone())),
            Duration::from_secs(3600),
        ));
        let config = Config::default();
        let mut service = TamiyoService::new(
            Arc::new(config.clone()),
            Box::new(HeuristicPolicy::new(
                HeuristicConfig {
                    max_seeds: 10_000,
                    ..config.heuristic
                },
                urza::select::SelectionPolicy::default(),
            )),
            cache,
            SigningKey::from_bytes(&[9; 32]).unwrap(),
            &leyline::LimitsConfig::default(),
            Duration::from_millis(500),
        )
        .unwrap();
        let packets: Vec<_> = (1..=2_200).map(|e| packet(slots, seeds, e)).collect();
        let mut h = Histogram::<u64>::new(3).unwrap();
        let mut commands = 0;
        for (i, p) in packets.iter().enumerate() {
            let t = Instant::now();
            let d = service.step(p).unwrap();
            let ns = t.elapsed().as_nanos() as u64;
            if i >= 200 {
                h.record(ns).unwrap();
                commands += usize::from(d.command().is_some());
            }
        }
        // What the header promises: every measured step took the germinating
        // path (a heuristic change that makes it wait would time a shortcut).
        assert_eq!(
            commands, 2_000,
            "the bench's packets no longer lead the heuristic to germinate"
        );
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
        // The observation graph the learned policy will read, on the same packets.
        let mut builder = GraphBuilder::new(GraphSchema::default()).unwrap();
        let mut g = Histogram::<u64>::new(3).unwrap();
        for (i, p) in packets.iter().enumerate() {
            let t = Instant::now();
            let graph = builder.build(p, &catalog).unwrap();
            let ns = t.elapsed().as_nanos() as u64;
            assert_eq!(graph.nodes[&tamiyo::graph::NodeType::Slot].ids.len(), slots);
            if i >= 200 {
                g.record(ns).unwrap();
            }
        }
        // The learned policy's network on those graphs: forward, then a
        // masked sample (the mask here allows everything the graph has).
        let model = tamiyo::gnn::GnnModel::new(tamiyo::gnn::GnnConfig::default(), 1).unwrap();
        let mut sampler = tamiyo::action_space::Sampler::new(1);
        let mut n = Histogram::<u64>::new(3).unwrap();
        for (i, p) in packets.iter().take(700).enumerate() {
            let graph = builder.build(p, &catalog).unwrap();
            let t = Instant::now();
            let out = model.forward(&graph).unwrap();
            let l = &out.logits;
            let mask = tamiyo::action_space::Mask {
                op: vec![true; 4],
                slot: vec![true; l.slot.len()],
                blueprint: l.blueprint.iter().map(|r| vec![true; r.len()]).collect(),
                blend: l.blend.iter().map(|r| vec![true; r.len()]).collect(),
                tempo: vec![true; l.tempo.len()],
                cull: vec![true; l.seed.len()],
                fossilize: vec![true; l.seed.len()],
            };
            tamiyo::action_space::sample(l, &mask, &mut sampler).unwrap();
            let ns = t.elapsed().as_nanos() as u64;
            if i >= 100 {
                n.record(ns).unwrap();
            }
        }
        println!(
            "  {slots:>2} slots, {seeds:>2} seeds: GNN forward + masked sample (hidden 32) p50 {:.3} ms p99 {:.3} ms = {:.1}% of the 5 ms deadline",
            ms(&n, 0.5),
            ms(&n, 0.99),
            100.0 * ms(&n, 0.99) / 5.0
        );
        println!(
            "  {slots:>2} slots, {seeds:>2} seeds: step p50 {:.3} ms p99 {:.3} ms; graph build p50 {:.3} ms p99 {:.3} ms; step + graph p99 {:.3} ms = {:.1}% of the 5 ms deadline ({commands} commands)",
            ms(&h, 0.5),
            ms(&h, 0.99),
            ms(&g, 0.5),
            ms(&g, 0.99),
            ms(&h, 0.99) + ms(&g, 0.99),
            100.0 * (ms(&h, 0.99) + ms(&g, 0.99)) / 5.0
        );
    }
}
