//! Generated Leyline v1 types (`esper.leyline.v1`), one Rust item per proto message
//! and enum. Do not edit: change `proto/leyline/v1/*.proto` instead.
//!
//! Enum fields of messages are stored as `i32` (prost's open enums); use the typed
//! getters (`command.command_type()`) or `Enum::try_from(i32)` to read them, and
//! [`crate::validate`] to reject unknown values.

#![allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq
)]

include!(concat!(env!("OUT_DIR"), "/esper.leyline.v1.rs"));
