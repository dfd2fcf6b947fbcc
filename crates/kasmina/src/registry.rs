//! The parameter registry: every trainable parameter has exactly one owner —
//! the host, one seed, or the teacher — and no optimizer step touches a
//! parameter its group does not own. `validate_update` runs before every step.

use std::collections::HashMap;

use candle_core::TensorId;

use crate::host::NamedParameter;

/// Who owns a parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The host model.
    Host,
    /// A seed, by id.
    Seed(String),
    /// The frozen knowledge-distillation teacher (never updated).
    Teacher,
}

/// Why an update of a parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateRejection {
    /// The parameter belongs to the frozen teacher.
    #[error("parameter {name} belongs to the teacher and is frozen")]
    Teacher {
        /// Parameter name.
        name: String,
    },
    /// No one registered the parameter.
    #[error("parameter {name} is not registered")]
    Unregistered {
        /// Parameter name.
        name: String,
    },
    /// Another owner holds it.
    #[error("parameter {name} belongs to {owner:?}, not to the group updating it")]
    ForeignOwner {
        /// Parameter name.
        name: String,
        /// Its owner.
        owner: Owner,
    },
}

/// A registration that would give a parameter a second owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {name} is already owned by {owner:?}")]
pub struct AlreadyOwned {
    /// Parameter name.
    pub name: String,
    /// Its current owner.
    pub owner: Owner,
}

/// Owners by tensor identity.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParamRegistry {
    owners: HashMap<TensorId, (String, Owner)>,
}

impl ParamRegistry {
    /// An empty registry.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Registers `params` for `owner` (not the teacher: see
    /// [`ParamRegistry::replace_teacher`]). All or nothing: if any parameter is
    /// owned by someone else, nothing is registered.
    pub(crate) fn register(
        &mut self,
        owner: Owner,
        params: &[NamedParameter],
    ) -> Result<(), AlreadyOwned> {
        for p in params {
            if let Some((_, current)) = self.owners.get(&p.var.id())
                && *current != owner
            {
                return Err(AlreadyOwned {
                    name: p.name.clone(),
                    owner: current.clone(),
                });
            }
        }
        for p in params {
            self.owners
                .insert(p.var.id(), (p.name.clone(), owner.clone()));
        }
        Ok(())
    }

    /// Removes every parameter of `owner`; returns how many.
    pub(crate) fn unregister(&mut self, owner: &Owner) -> usize {
        let before = self.owners.len();
        self.owners.retain(|_, (_, o)| o != owner);
        before - self.owners.len()
    }

    /// Replaces the teacher's parameters with `params` in one step: the old set
    /// is gone and the new one present, or (on a conflict) nothing changed.
    pub(crate) fn replace_teacher(
        &mut self,
        params: &[NamedParameter],
    ) -> Result<(), AlreadyOwned> {
        let mut next = self.owners.clone();
        next.retain(|_, (_, o)| *o != Owner::Teacher);
        for p in params {
            if let Some((_, current)) = next.get(&p.var.id()) {
                return Err(AlreadyOwned {
                    name: p.name.clone(),
                    owner: current.clone(),
                });
            }
            next.insert(p.var.id(), (p.name.clone(), Owner::Teacher));
        }
        self.owners = next;
        Ok(())
    }

    /// The owner of a parameter.
    #[cfg(test)]
    pub(crate) fn owner(&self, param: &NamedParameter) -> Option<&Owner> {
        self.owners.get(&param.var.id()).map(|(_, o)| o)
    }

    /// Parameters registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether nothing is registered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Checks that `group` may update every one of `params`; the first refusal
    /// is returned.
    pub(crate) fn validate_update(
        &self,
        group: &Owner,
        params: &[NamedParameter],
    ) -> Result<(), UpdateRejection> {
        for p in params {
            match self.owners.get(&p.var.id()) {
                None => {
                    return Err(UpdateRejection::Unregistered {
                        name: p.name.clone(),
                    });
                }
                Some((_, Owner::Teacher)) => {
                    return Err(UpdateRejection::Teacher {
                        name: p.name.clone(),
                    });
                }
                Some((_, owner)) if owner != group => {
                    return Err(UpdateRejection::ForeignOwner {
                        name: p.name.clone(),
                        owner: owner.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Device, Var};

    fn param(name: &str) -> NamedParameter {
        NamedParameter {
            name: name.into(),
            var: Var::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
        }
    }

    #[test]
    fn each_parameter_has_one_owner_and_updates_are_checked() {
        let mut reg = ParamRegistry::new();
        let host = [param("fc.weight")];
        let seed = [param("seed/s1/w")];
        let stray = param("stray");
        reg.register(Owner::Host, &host).unwrap();
        reg.register(Owner::Seed("s1".into()), &seed).unwrap();
        assert_eq!(reg.validate_update(&Owner::Host, &host), Ok(()));
        assert_eq!(
            reg.validate_update(&Owner::Host, &seed),
            Err(UpdateRejection::ForeignOwner {
                name: "seed/s1/w".into(),
                owner: Owner::Seed("s1".into())
            })
        );
        assert_eq!(
            reg.validate_update(&Owner::Host, std::slice::from_ref(&stray)),
            Err(UpdateRejection::Unregistered {
                name: "stray".into()
            })
        );
        // A second owner is refused, atomically.
        let err = reg
            .register(Owner::Seed("s2".into()), &[param("new"), host[0].clone()])
            .unwrap_err();
        assert_eq!(err.owner, Owner::Host);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.unregister(&Owner::Seed("s1".into())), 1);
        assert!(matches!(
            reg.validate_update(&Owner::Seed("s1".into()), &seed),
            Err(UpdateRejection::Unregistered { .. })
        ));
    }

    #[test]
    fn the_teacher_is_replaced_atomically_and_never_updated() {
        let mut reg = ParamRegistry::new();
        let old = [param("t.a"), param("t.b")];
        reg.replace_teacher(&old).unwrap();
        assert_eq!(
            reg.validate_update(&Owner::Teacher, &old[..1]),
            Err(UpdateRejection::Teacher { name: "t.a".into() })
        );
        let host = [param("h")];
        reg.register(Owner::Host, &host).unwrap();
        let new = [param("t.c")];
        reg.replace_teacher(&new).unwrap();
        assert_eq!(reg.owner(&old[0]), None);
        assert_eq!(reg.owner(&new[0]), Some(&Owner::Teacher));
        // A teacher set that includes a host parameter is refused and the old
        // teacher set stays.
        assert!(
            reg.replace_teacher(&[param("t.d"), host[0].clone()])
                .is_err()
        );
        assert_eq!(reg.owner(&new[0]), Some(&Owner::Teacher));
        assert_eq!(reg.len(), 2);
    }
}
