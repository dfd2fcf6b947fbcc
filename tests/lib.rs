//! Cross-crate integration tests of the Esper workspace. The tests live beside
//! this file (`contract_flow.rs`, ...); this library is empty on purpose.
#![deny(missing_docs)]
