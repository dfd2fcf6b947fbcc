//! What an operator reads of a run's events, in the order they happened:
//! one compact line per seed transition — with the gate that moved it and
//! the evidence the gate decided on — and `name: description` for the rest.
//!
//! `esper train` shows events as they come (after the step that raised
//! them, above the progress bar) and the ones raised at an epoch's end after
//! that epoch's line; [`Narrator`] remembers which it has shown so that none
//! is printed twice.

use leyline::v1::TelemetryEvent;

const GATE: &str = "seed_gate_evaluation";
const TRANSITION: &str = "seed_stage_transition";
const CULLED: &str = "seed_culled";

fn attr<'a>(event: &'a TelemetryEvent, key: &str) -> &'a str {
    event.attributes.get(key).map_or("", String::as_str)
}

/// Everything after the `seed <id> at <slot>: ` head of a seed event.
fn tail(description: &str) -> &str {
    description.split_once(": ").map_or(description, |(_, t)| t)
}

fn step_prefix(event: &TelemetryEvent) -> String {
    match event.attributes.get("global_step") {
        Some(step) => format!("step {step} | "),
        None => String::new(),
    }
}

/// The lines for `events`, in order.
pub fn lines(events: &[TelemetryEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let event = &events[i];
        let next = events.get(i + 1);
        let same_seed = |other: &TelemetryEvent| attr(other, "seed_id") == attr(event, "seed_id");
        match next {
            // A gate and the transition it decided: one line.
            Some(t) if event.name == GATE && t.name == TRANSITION && same_seed(t) => {
                out.push(format!(
                    "{}seed {} at {}: {} -> {} | {}",
                    step_prefix(t),
                    attr(t, "seed_id"),
                    attr(t, "slot_id"),
                    attr(t, "from_stage"),
                    attr(t, "to_stage"),
                    tail(&event.description)
                ));
                i += 2;
                // A cull repeats the transition to CULLED just printed.
                if events
                    .get(i)
                    .is_some_and(|c| c.name == CULLED && same_seed(c))
                {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        out.push(if event.name == GATE || event.name == TRANSITION {
            format!("{}{}", step_prefix(event), event.description)
        } else {
            format!("{}: {}", event.name, event.description)
        });
        i += 1;
    }
    out
}

/// Which of the trainer's queued events have been shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Narrator {
    shown: usize,
}

impl Narrator {
    /// A narrator that has shown nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lines for the events of `queued` (every event since the last drain)
    /// not shown yet.
    pub fn live(&mut self, queued: &[TelemetryEvent]) -> Vec<String> {
        let new = queued.get(self.shown..).unwrap_or(&[]);
        self.shown = queued.len();
        lines(new)
    }

    /// Lines for the events of `drained` (what the drain returned) not shown
    /// yet; the next queue starts empty.
    pub fn drained(&mut self, drained: &[TelemetryEvent]) -> Vec<String> {
        let rest = drained.get(self.shown..).unwrap_or(&[]);
        self.shown = 0;
        lines(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leyline::v1::TelemetryLevel;

    fn event(name: &str, description: &str, attrs: &[(&str, &str)]) -> TelemetryEvent {
        let mut b = leyline::telemetry::event(name, TelemetryLevel::Info, description);
        for (k, v) in attrs {
            b = b.attr(*k, *v);
        }
        b.build()
    }

    fn seed(name: &str, description: &str, extra: &[(&str, &str)]) -> TelemetryEvent {
        let mut attrs = vec![("seed_id", "s1"), ("slot_id", "r0"), ("global_step", "70")];
        attrs.extend_from_slice(extra);
        event(name, description, &attrs)
    }

    #[test]
    fn a_gate_and_its_transition_are_one_line_with_the_evidence() {
        let events = [
            seed(
                GATE,
                "seed s1 at r0: G1_GRADIENT_HEALTH passed: grad_norm 0.31",
                &[],
            ),
            seed(
                TRANSITION,
                "seed s1 at r0: TRAINING -> BLENDING (gate passed, G1_GRADIENT_HEALTH)",
                &[("from_stage", "TRAINING"), ("to_stage", "BLENDING")],
            ),
            event("checkpoint_written", "epoch 2", &[]),
            seed(
                GATE,
                "seed s1 at r0: G2_STABILITY failed (latency_over_budget): step_ms 48",
                &[],
            ),
            seed(
                TRANSITION,
                "seed s1 at r0: BLENDING -> CULLED (latency_over_budget)",
                &[("from_stage", "BLENDING"), ("to_stage", "CULLED")],
            ),
            seed(CULLED, "seed s1 at r0 culled: latency_over_budget", &[]),
            seed(
                TRANSITION,
                "seed s1 at r0: CULLED -> EMBARGOED (embargo)",
                &[("from_stage", "CULLED"), ("to_stage", "EMBARGOED")],
            ),
        ];
        assert_eq!(
            lines(&events),
            vec![
                "step 70 | seed s1 at r0: TRAINING -> BLENDING | G1_GRADIENT_HEALTH passed: grad_norm 0.31",
                "checkpoint_written: epoch 2",
                "step 70 | seed s1 at r0: BLENDING -> CULLED | G2_STABILITY failed (latency_over_budget): step_ms 48",
                "step 70 | seed s1 at r0: CULLED -> EMBARGOED (embargo)",
            ]
        );
    }

    #[test]
    fn each_event_is_narrated_once() {
        let a = event("a", "first", &[]);
        let b = event("b", "second", &[]);
        let mut n = Narrator::new();
        assert_eq!(n.live(std::slice::from_ref(&a)), vec!["a: first"]);
        let queued = [a.clone(), b.clone()];
        assert_eq!(n.live(&queued), vec!["b: second"]);
        assert!(n.live(&queued).is_empty());
        // The drain returns both; only what was not shown is printed.
        assert!(n.drained(&queued).is_empty());
        assert_eq!(n.drained(std::slice::from_ref(&a)), vec!["a: first"]);
    }
}
