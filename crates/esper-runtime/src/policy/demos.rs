//! The teacher's demonstrations of `esper policy train --imitate`, read back
//! from the episodes of the imitation updates already on disk, so that a
//! `--resume`d training clones from, and regularises PPO with, every
//! demonstration gathered — not only those of the updates it runs itself.

use std::collections::BTreeMap;
use std::path::Path;

use tamiyo::ppo::Sample;

use super::train::{cohort, episodes, fail, score};
use crate::cohort::runner;
use crate::config::Resolved;
use crate::error::Result;

/// The recorded decisions of the teacher in the episodes of updates
/// `0..updates` (imitation updates) already on disk under `home`; an episode
/// not found finished is named and left out.
pub(super) fn stored(
    resolved: &Resolved,
    home: &Path,
    updates: u32,
    threads: usize,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Sample>> {
    let ppo = &resolved.config.tamiyo.ppo;
    let mut demos = Vec::new();
    for update in 0..updates {
        let snapshot = home
            .join("snapshots")
            .join(format!("u{update}.safetensors"));
        let mut by_host: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in episodes(ppo, update) {
            by_host.entry(e.host).or_default().push(e.seed);
        }
        for (host, seeds) in &by_host {
            let file = cohort(resolved, home, host, seeds, update, &snapshot, true)?;
            let plan = file.plan(threads, env).map_err(|e| fail(e.to_string()))?;
            for &seed in seeds {
                let find = |arm: &str| plan.iter().find(|r| r.arm == arm && r.seed == seed);
                match (find(&format!("u{update}")), find("baseline")) {
                    (Some(episode), Some(baseline))
                        if runner::is_finished(episode) && runner::is_finished(baseline) =>
                    {
                        let scored = score(episode, baseline, host, ppo, false)?;
                        demos.extend(scored.samples);
                    }
                    _ => println!(
                        "  demonstrations of update {} on {host} seed {seed}: no finished episode, left out",
                        update + 1
                    ),
                }
            }
        }
    }
    Ok(demos)
}
