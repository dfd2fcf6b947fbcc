//! Kasmina: runs every seed through its guarded lifecycle inside any host that
//! implements its [`Host`] trait — germinate, train in isolation, blend, probation,
//! fossilize or cull (DESIGN §5).
//!
//! **Status:** the [`Host`] contract is built (issue #3): a host declares its
//! slots and runs its forward pass through a [`SlotRunner`], which for now is
//! [`DormantSlots`] (every slot is identity). Seeds, the lifecycle executor, gates,
//! blending and isolation arrive with issue #7.

#![deny(missing_docs)]

pub mod alpha;
pub mod blend;
mod error;
mod host;

pub use error::{Error, Result};
pub use host::{DormantSlots, Host, NamedParameter, SlotRunner, SlotSpec};
