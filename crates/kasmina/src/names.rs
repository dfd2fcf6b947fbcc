//! The one home of the parameter-name scheme. A seed's parameters are named
//! `seed/<seed id>/<parameter>` and its optimizer group `seed/<seed id>`;
//! every other name belongs to the host. Checkpoints, snapshots, optimizer
//! groups and the registry all read names through these functions, so the
//! scheme can change in one place.

use crate::registry::Owner;

/// The prefix every seed-owned name starts with.
const SEED_PREFIX: &str = "seed/";

/// The optimizer group of seed `seed_id`.
pub fn seed_group(seed_id: &str) -> String {
    format!("{SEED_PREFIX}{seed_id}")
}

/// The stable name of seed `seed_id`'s parameter `param`.
pub fn seed_parameter(seed_id: &str, param: &str) -> String {
    format!("{SEED_PREFIX}{seed_id}/{param}")
}

/// Whether `name` (a parameter or a group) belongs to a seed.
pub fn is_seed_name(name: &str) -> bool {
    name.starts_with(SEED_PREFIX)
}

/// The seed a parameter or group name belongs to, if any.
pub fn seed_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(SEED_PREFIX)?;
    Some(rest.split_once('/').map_or(rest, |(id, _)| id))
}

/// The owner of the optimizer group `group` (a seed's group or the host's).
pub fn group_owner(group: &str) -> Owner {
    match seed_of(group) {
        Some(id) => Owner::Seed(id.to_string()),
        None => Owner::Host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_their_seed_and_owner() {
        let p = seed_parameter("s1", "conv.weight");
        assert_eq!(p, "seed/s1/conv.weight");
        assert_eq!(seed_of(&p), Some("s1"));
        assert_eq!(seed_of(&seed_group("s1")), Some("s1"));
        assert!(is_seed_name(&p) && !is_seed_name("conv1.weight"));
        assert_eq!(seed_of("conv1.weight"), None);
        assert_eq!(group_owner(&seed_group("s1")), Owner::Seed("s1".into()));
        assert_eq!(group_owner("host"), Owner::Host);
    }
}
