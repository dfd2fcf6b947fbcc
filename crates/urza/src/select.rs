//! Selection rules: which catalog entries a controller may choose for a slot.
//!
//! Quarantine always wins; an approval-required blueprint needs an explicit
//! approval; HIGH_RISK needs `allow_high_risk`, EXPERIMENTAL needs
//! `allow_experimental`; an unspecified tier is never chosen; the risk score is
//! capped. The rules are checked in that order and the first failure is the
//! reason reported.

use std::collections::BTreeSet;

use leyline::v1::{BlueprintDescriptor, BlueprintTier, CatalogEntry, SlotKind};

/// Why a blueprint was not eligible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    /// The catalog entry is quarantined (integrity failure or operator action).
    #[error("quarantined")]
    Quarantined,
    /// The descriptor marks it quarantine-only.
    #[error("quarantine-only blueprint")]
    QuarantineOnly,
    /// The descriptor has no tier.
    #[error("tier unspecified")]
    TierUnspecified,
    /// HIGH_RISK and the policy does not allow high-risk blueprints.
    #[error("high-risk blueprints are not allowed")]
    HighRiskNotAllowed,
    /// EXPERIMENTAL and the policy does not allow experimental blueprints.
    #[error("experimental blueprints are not allowed")]
    ExperimentalNotAllowed,
    /// Needs an approval the policy does not grant.
    #[error("approval required and not granted")]
    NotApproved,
    /// Riskier than the policy's cap.
    #[error("risk {risk_permille}/1000 above the cap")]
    TooRisky {
        /// The blueprint's risk, in thousandths.
        risk_permille: u32,
    },
    /// Does not support the slot's kind.
    #[error("does not fit {0:?} slots")]
    WrongSlotKind(SlotKind),
}

/// What a controller is allowed to choose.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionPolicy {
    /// Allow EXPERIMENTAL blueprints.
    pub allow_experimental: bool,
    /// Allow HIGH_RISK blueprints (they still need approval when marked so).
    pub allow_high_risk: bool,
    /// Blueprint ids explicitly approved.
    pub approved: BTreeSet<String>,
    /// Highest risk score allowed.
    pub max_risk: f64,
}

impl Default for SelectionPolicy {
    /// SAFE and EXPERIMENTAL, nothing approved, risk ≤ 0.8.
    fn default() -> Self {
        Self {
            allow_experimental: true,
            allow_high_risk: false,
            approved: BTreeSet::new(),
            max_risk: 0.8,
        }
    }
}

impl SelectionPolicy {
    /// Whether `descriptor` (quarantined or not) may be chosen for a slot of `kind`.
    pub fn check(
        &self,
        descriptor: &BlueprintDescriptor,
        quarantined: bool,
        kind: SlotKind,
    ) -> Result<(), Ineligible> {
        if quarantined {
            return Err(Ineligible::Quarantined);
        }
        if descriptor.quarantine_only {
            return Err(Ineligible::QuarantineOnly);
        }
        match BlueprintTier::try_from(descriptor.tier).unwrap_or(BlueprintTier::Unspecified) {
            BlueprintTier::Unspecified => return Err(Ineligible::TierUnspecified),
            BlueprintTier::Safe => {}
            BlueprintTier::Experimental => {
                if !self.allow_experimental {
                    return Err(Ineligible::ExperimentalNotAllowed);
                }
            }
            BlueprintTier::HighRisk => {
                if !self.allow_high_risk {
                    return Err(Ineligible::HighRiskNotAllowed);
                }
            }
        }
        if descriptor.approval_required && !self.approved.contains(&descriptor.blueprint_id) {
            return Err(Ineligible::NotApproved);
        }
        if descriptor.risk.is_nan() || descriptor.risk > self.max_risk {
            return Err(Ineligible::TooRisky {
                risk_permille: (descriptor.risk.clamp(0.0, 1.0) * 1000.0).round() as u32,
            });
        }
        if !descriptor.slot_kinds.contains(&(kind as i32)) {
            return Err(Ineligible::WrongSlotKind(kind));
        }
        Ok(())
    }

    /// The entries that may be chosen for a slot of `kind`, ordered by id.
    pub fn eligible<'a>(
        &self,
        entries: &'a [CatalogEntry],
        kind: SlotKind,
    ) -> Vec<&'a CatalogEntry> {
        let mut out: Vec<&CatalogEntry> = entries
            .iter()
            .filter(|e| {
                e.descriptor
                    .as_ref()
                    .is_some_and(|d| self.check(d, e.quarantined, kind).is_ok())
            })
            .collect();
        out.sort_by(|a, b| {
            let id = |e: &CatalogEntry| {
                e.descriptor
                    .as_ref()
                    .map(|d| d.blueprint_id.clone())
                    .unwrap_or_default()
            };
            id(a).cmp(&id(b))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn entry(id: &str, tier: BlueprintTier, risk: f64, flags: (bool, bool, bool)) -> CatalogEntry {
        let (quarantine_only, approval_required, quarantined) = flags;
        CatalogEntry {
            descriptor: Some(BlueprintDescriptor {
                blueprint_id: id.into(),
                tier: tier as i32,
                risk,
                quarantine_only,
                approval_required,
                slot_kinds: vec![SlotKind::Conv2d as i32],
                ..Default::default()
            }),
            quarantined,
            ..Default::default()
        }
    }

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let policy = SelectionPolicy::default();
        let d = |e: &CatalogEntry| e.descriptor.clone().unwrap();
        let conv = SlotKind::Conv2d;
        let safe = entry("a", BlueprintTier::Safe, 0.1, (false, false, false));
        assert_eq!(policy.check(&d(&safe), false, conv), Ok(()));
        assert_eq!(
            policy.check(&d(&safe), true, conv),
            Err(Ineligible::Quarantined)
        );
        assert_eq!(
            policy.check(&d(&safe), false, SlotKind::Dense),
            Err(Ineligible::WrongSlotKind(SlotKind::Dense))
        );
        let high = entry("h", BlueprintTier::HighRisk, 0.5, (false, false, false));
        assert_eq!(
            policy.check(&d(&high), false, conv),
            Err(Ineligible::HighRiskNotAllowed)
        );
        let allow_high = SelectionPolicy {
            allow_high_risk: true,
            ..SelectionPolicy::default()
        };
        assert_eq!(allow_high.check(&d(&high), false, conv), Ok(()));
        let needs = entry("n", BlueprintTier::Safe, 0.1, (false, true, false));
        assert_eq!(
            policy.check(&d(&needs), false, conv),
            Err(Ineligible::NotApproved)
        );
        let approved = SelectionPolicy {
            approved: ["n".to_string()].into(),
            ..SelectionPolicy::default()
        };
        assert_eq!(approved.check(&d(&needs), false, conv), Ok(()));
        let q_only = entry("q", BlueprintTier::Safe, 0.1, (true, false, false));
        assert_eq!(
            policy.check(&d(&q_only), false, conv),
            Err(Ineligible::QuarantineOnly)
        );
        let risky = entry("r", BlueprintTier::Safe, 0.95, (false, false, false));
        assert!(matches!(
            policy.check(&d(&risky), false, conv),
            Err(Ineligible::TooRisky { .. })
        ));
        let nan = entry("r", BlueprintTier::Safe, f64::NAN, (false, false, false));
        assert!(matches!(
            policy.check(&d(&nan), false, conv),
            Err(Ineligible::TooRisky { .. })
        ));
        let no_tier = entry("u", BlueprintTier::Unspecified, 0.1, (false, false, false));
        assert_eq!(
            policy.check(&d(&no_tier), false, conv),
            Err(Ineligible::TierUnspecified)
        );
        let experimental = entry("e", BlueprintTier::Experimental, 0.1, (false, false, false));
        let strict = SelectionPolicy {
            allow_experimental: false,
            ..SelectionPolicy::default()
        };
        assert_eq!(
            strict.check(&d(&experimental), false, conv),
            Err(Ineligible::ExperimentalNotAllowed)
        );
    }

    proptest! {
        /// Whatever the catalog and the policy, selection never returns a
        /// quarantined, quarantine-only, unapproved or disallowed high-risk entry.
        #[test]
        fn selection_never_returns_a_forbidden_entry(
            specs in proptest::collection::vec(
                (0i32..4, 0.0f64..1.0, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
                0..24,
            ),
            allow_experimental in any::<bool>(),
            allow_high_risk in any::<bool>(),
            max_risk in 0.0f64..1.0,
        ) {
            let mut approved = BTreeSet::new();
            let entries: Vec<CatalogEntry> = specs
                .iter()
                .enumerate()
                .map(|(i, (tier, risk, q_only, needs_approval, quarantined, approve))| {
                    let id = format!("bp{i:02}");
                    if *approve {
                        approved.insert(id.clone());
                    }
                    let mut e = entry(&id, BlueprintTier::Safe, *risk, (*q_only, *needs_approval, *quarantined));
                    if let Some(d) = e.descriptor.as_mut() {
                        d.tier = *tier;
                    }
                    e
                })
                .collect();
            let policy = SelectionPolicy { allow_experimental, allow_high_risk, approved: approved.clone(), max_risk };
            for e in policy.eligible(&entries, SlotKind::Conv2d) {
                let d = e.descriptor.as_ref().unwrap();
                prop_assert!(!e.quarantined);
                prop_assert!(!d.quarantine_only);
                prop_assert!(!d.approval_required || approved.contains(&d.blueprint_id));
                prop_assert!(d.tier != BlueprintTier::HighRisk as i32 || allow_high_risk);
                prop_assert!(d.tier != BlueprintTier::Experimental as i32 || allow_experimental);
                prop_assert!(d.tier != BlueprintTier::Unspecified as i32);
                prop_assert!(d.risk <= max_risk);
            }
        }
    }
}
