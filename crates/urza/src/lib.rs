//! Urza: the blueprint catalog, the durable artifact library (SQLite +
//! content-addressed safetensors) and its gRPC service and client.
//!
//! * [`catalog`] and [`definition`]: thirteen explicit blueprint builders ([`BlueprintDef`]), each with declared
//!   parameter bounds, an exact parameter count and an output shape equal to
//!   its input shape.
//! * [`select`]: which blueprints a controller may choose (tiers, quarantine,
//!   approval, risk).
//! * [`forge`]: builds an instance on a probe input, checks shapes and
//!   gradients, measures build time and forward latency, computes its guard
//!   digest.
//! * [`artifact`]: the artifact file format (safetensors + Urza header).
//! * [`library`]: the SQLite catalog and content-addressed artifact store.
//! * [`store`]: [`BlueprintStore`], implemented by [`LocalStore`] and by the
//!   gRPC client [`grpc::RemoteStore`] ([`grpc::serve`] is the server).
//! * [`notify`]: forwards catalog changes onto Oona as `KernelCatalogUpdate`.
//! * [`prefetch`]: answers `KernelPrefetchRequest`s with Ready/Error messages.

#![deny(missing_docs)]

pub mod artifact;
mod blueprint;
mod config;
mod error;
pub mod forge;
pub mod grpc;
pub mod library;
pub mod notify;
mod params;
pub mod prefetch;
pub mod select;
mod slot;
pub mod store;

pub use artifact::Artifact;
pub use blueprint::{BlueprintDef, BlueprintModule, OutputForm, Weights, catalog, definition};
pub use config::Config;
pub use error::{Error, Result};
pub use library::{CatalogQuery, Library, LibraryConfig};
pub use params::{ParamSpec, Parameters};
pub use slot::SlotShape;
pub use store::{BlueprintStore, CatalogWatch, EnsureRequest, LocalStore};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// The bytes of lower-case hex `text`; `None` for an odd length or another
/// character.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let raw = text.as_bytes();
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    raw.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}
