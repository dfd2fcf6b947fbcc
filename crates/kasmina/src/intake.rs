//! Command intake: AdaptationCommands are validated (`leyline::validate`) and
//! verified (`leyline::security`: signature, id, freshness, nonce) when they
//! arrive, queued, and applied only on the training thread at a fence — where a
//! command past its deadline, of a stale controller generation, or not yet due
//! (`apply_at_step`) is rejected or held. Kasmina executes SEED commands only;
//! every other command type is Tolaria's and is refused here with that reason,
//! never "logged only".

use std::collections::{BTreeMap, VecDeque};

use leyline::security::{SigningKey, Verifier};
use leyline::v1::{AdaptationCommand, CommandType, SeedOperation, adaptation_command::Payload};
use leyline::validate::Validator;

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The contract validator refused it.
    #[error("{0}")]
    Invalid(String),
    /// Signature, id, freshness or replay check failed.
    #[error("{0}")]
    Security(String),
    /// Kasmina does not execute this command type (Tolaria does).
    #[error("{0} commands are executed by Tolaria, not Kasmina")]
    NotForKasmina(&'static str),
    /// Its deadline passed before its fence.
    #[error("deadline {deadline_ms} passed (now {now_ms})")]
    Expired {
        /// The command's deadline.
        deadline_ms: u64,
        /// The time at the fence.
        now_ms: u64,
    },
    /// Decided by an older controller generation than one already seen.
    #[error("stale generation {generation} (current {current})")]
    StaleGeneration {
        /// The command's generation.
        generation: u64,
        /// The newest generation seen.
        current: u64,
    },
    /// Executing it failed (unknown seed, illegal transition, blueprint error, …).
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// Why a due SEED command could not be executed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The payload is not a seed operation.
    #[error("not a seed operation")]
    NotASeedOperation,
    /// The seed operation is `SEED_OP_UNSPECIFIED`.
    #[error("operation unspecified")]
    Unspecified,
    /// No slot holds the target seed.
    #[error("no slot holds seed {seed}")]
    NoSuchSeed {
        /// The command's target seed.
        seed: String,
    },
    /// ADVANCE named a stage that is not the seed's next one.
    #[error("ADVANCE to {target} but {current} moves on to {next}")]
    WrongTarget {
        /// The stage the command asked for.
        target: &'static str,
        /// The seed's stage.
        current: &'static str,
        /// Its next stage (`nothing` at the end of the table).
        next: &'static str,
    },
    /// The command needs the seed in another stage.
    #[error("{operation} needs {needs}, the seed is {stage}")]
    WrongStage {
        /// The operation.
        operation: &'static str,
        /// What it needs.
        needs: &'static str,
        /// The seed's stage.
        stage: &'static str,
    },
    /// A required part of the operation is absent.
    #[error("{operation} without {missing}")]
    Missing {
        /// The operation.
        operation: &'static str,
        /// The absent part.
        missing: &'static str,
    },
    /// The stage's gate has not got its evidence yet.
    #[error("gate not ready: {0}")]
    GateNotReady(String),
    /// There was nothing to advance.
    #[error("nothing to advance")]
    NothingToAdvance,
    /// The blueprint could not be loaded or built for the slot.
    #[error("loading {blueprint}: {source}")]
    Load {
        /// The blueprint.
        blueprint: String,
        /// Urza's error.
        #[source]
        source: std::sync::Arc<urza::Error>,
    },
    /// The seed would cost more forward MACs than the counted budget allows
    /// (`kasmina.max_seed_mac_ratio` × the host's).
    #[error(
        "{blueprint} costs {seed_macs} forward MACs per image, over the budget of {ratio} x the host's {host_macs}"
    )]
    OverBudget {
        /// The blueprint.
        blueprint: String,
        /// Its module's forward MACs per image at the slot.
        seed_macs: u64,
        /// The host's.
        host_macs: u64,
        /// The budget's multiple.
        ratio: f64,
    },
    /// The blueprint's module was built on another device than the model's
    /// (a kernel source that ignored the device it was given).
    #[error("{blueprint}: {source}")]
    Device {
        /// The blueprint.
        blueprint: String,
        /// Which parameter, and where it was.
        #[source]
        source: esper_ops::device::DeviceMismatch,
    },
    /// Kasmina refused the change (unknown slot, busy slot, illegal move,
    /// bad blend, tensor failure).
    #[error(transparent)]
    Engine(std::sync::Arc<crate::Error>),
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        Self::Engine(std::sync::Arc::new(e))
    }
}

impl PartialEq for Failure {
    /// Errors from other crates have no equality: two failures are equal when
    /// they say the same thing.
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Rejection {
    /// A stable label for counters and telemetry.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Security(_) => "security",
            Self::NotForKasmina(_) => "not_for_kasmina",
            Self::Expired { .. } => "expired",
            Self::StaleGeneration { .. } => "stale_generation",
            Self::Failed(_) => "failed",
        }
    }
}

/// Validates, verifies and holds commands until their fence.
#[derive(Debug)]
pub struct CommandIntake {
    validator: Validator,
    verifier: Verifier,
    pending: VecDeque<AdaptationCommand>,
    generation: u64,
    rejected: BTreeMap<&'static str, u64>,
}

impl CommandIntake {
    /// An intake verifying with `key` under the shared Leyline config.
    pub fn new(key: SigningKey, leyline: &leyline::Config) -> Self {
        Self {
            validator: Validator::new(&leyline.limits),
            verifier: Verifier::new(key, &leyline.security),
            pending: VecDeque::new(),
            generation: 0,
            rejected: BTreeMap::new(),
        }
    }

    /// Rejections so far, by label.
    pub fn rejected(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    /// Commands waiting for their fence.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn count(&mut self, rejection: Rejection) -> Rejection {
        *self.rejected.entry(rejection.label()).or_default() += 1;
        rejection
    }

    /// Accepts a command on arrival (any thread that owns the intake):
    /// validation, then verification, then the command-type check.
    pub fn submit(&mut self, command: AdaptationCommand, now_ms: u64) -> Result<(), Rejection> {
        if let Err(invalid) = self.validator.command(&command).into_result() {
            return Err(self.count(Rejection::Invalid(invalid.to_string())));
        }
        if let Err(e) = self.verifier.verify(&command, now_ms) {
            return Err(self.count(Rejection::Security(e.to_string())));
        }
        let kind = CommandType::try_from(command.command_type).unwrap_or(CommandType::Unspecified);
        let other = match kind {
            CommandType::Seed => None,
            CommandType::Unspecified => Some("UNSPECIFIED"),
            CommandType::Rollback => Some("ROLLBACK"),
            CommandType::Optimizer => Some("OPTIMIZER"),
            CommandType::CircuitBreaker => Some("CIRCUIT_BREAKER"),
            CommandType::Pause => Some("PAUSE"),
            CommandType::Emergency => Some("EMERGENCY"),
        };
        if let Some(name) = other {
            return Err(self.count(Rejection::NotForKasmina(name)));
        }
        let Some(Payload::SeedOperation(op)) = &command.payload else {
            return Err(self.count(Rejection::Invalid(
                "a SEED command needs a seed_operation payload".into(),
            )));
        };
        // Kasmina's own requirement on top of the contract: a germinated seed
        // must know how it will blend and ramp (nothing is defaulted later).
        if op.operation == SeedOperation::Germinate as i32
            && (op.blend.is_none() || op.alpha_schedule.is_none())
        {
            return Err(self.count(Rejection::Invalid(
                "GERMINATE needs a blend and an alpha schedule".into(),
            )));
        }
        self.pending.push_back(command);
        Ok(())
    }

    /// The commands due at this fence (`apply_at_step` ≤ `step`), in arrival
    /// order, each either ready to execute or rejected (expired, stale).
    pub fn due(
        &mut self,
        step: u64,
        now_ms: u64,
    ) -> Vec<Result<AdaptationCommand, (AdaptationCommand, Rejection)>> {
        let mut out = Vec::new();
        let mut held = VecDeque::new();
        while let Some(command) = self.pending.pop_front() {
            if command.apply_at_step > step {
                held.push_back(command);
                continue;
            }
            if command.deadline_at_ms != 0 && now_ms > command.deadline_at_ms {
                let r = self.count(Rejection::Expired {
                    deadline_ms: command.deadline_at_ms,
                    now_ms,
                });
                out.push(Err((command, r)));
                continue;
            }
            if command.generation < self.generation {
                let r = self.count(Rejection::StaleGeneration {
                    generation: command.generation,
                    current: self.generation,
                });
                out.push(Err((command, r)));
                continue;
            }
            self.generation = command.generation;
            out.push(Ok(command));
        }
        self.pending = held;
        out
    }
}
