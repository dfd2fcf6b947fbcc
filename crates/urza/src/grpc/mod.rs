//! Urza over gRPC (tonic): [`serve`] exposes a [`crate::Library`] as
//! `esper.leyline.v1.UrzaService`; [`RemoteStore`] is the client, implementing
//! [`crate::BlueprintStore`] like the local library does.
//!
//! Errors cross the wire as a gRPC status plus two metadata entries
//! (`urza-error`: the [`Error::label`], `urza-subject`: the blueprint or
//! artifact concerned), so the client rebuilds the typed errors callers match
//! on (unknown blueprint/artifact, quarantined, integrity) and keeps the label
//! of the others in [`Error::Remote`].

mod auth;
mod client;
mod codec;
mod server;

pub use auth::ServiceAuth;
pub use client::{RemoteStore, RemoteStoreConfig};
pub use server::{Served, serve};

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::Error;

/// Generated service code (tonic); messages are Leyline's.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub(crate) mod generated {
    /// The server half, decoding requests with [`super::codec::StrictCodec`].
    pub(crate) mod server {
        include!(concat!(env!("OUT_DIR"), "/server/esper.leyline.v1.rs"));
    }
    /// The client half, with tonic's codec.
    pub(crate) mod client {
        include!(concat!(env!("OUT_DIR"), "/client/esper.leyline.v1.rs"));
    }
    pub(crate) use client::urza_service_client;
    pub(crate) use server::urza_service_server;
}

/// Largest artifact accepted by PutArtifact or returned by FetchArtifact.
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;
/// Bytes per streamed chunk.
pub const CHUNK_BYTES: usize = 64 << 10;

const ERROR_KEY: &str = "urza-error";
const SUBJECT_KEY: &str = "urza-subject";

/// The status a server sends for `error`.
pub(crate) fn to_status(error: &Error) -> Status {
    let (code, subject) = match error {
        Error::UnknownBlueprint { blueprint_id } => (Code::NotFound, blueprint_id.clone()),
        Error::UnknownArtifact { artifact_ref } => (Code::NotFound, artifact_ref.clone()),
        Error::InvalidParameter { blueprint_id, .. }
        | Error::SlotMismatch { blueprint_id, .. }
        | Error::Forge { blueprint_id, .. }
        | Error::Ineligible { blueprint_id, .. } => (Code::InvalidArgument, blueprint_id.clone()),
        Error::InvalidSlot { .. } | Error::Shape { .. } | Error::MalformedArtifact { .. } => {
            (Code::InvalidArgument, String::new())
        }
        Error::Quarantined { what, .. } => (Code::FailedPrecondition, what.clone()),
        Error::Integrity { artifact_ref, .. } => (Code::DataLoss, artifact_ref.clone()),
        Error::WatchLagged { .. } => (Code::DataLoss, String::new()),
        Error::Tensor { .. }
        | Error::Io { .. }
        | Error::Sqlite { .. }
        | Error::CorruptCatalog { .. }
        | Error::Transport(_) => (Code::Internal, String::new()),
        Error::Remote { code, .. } => (*code, String::new()),
    };
    let mut status = Status::new(code, error.to_string());
    if let Ok(label) = MetadataValue::try_from(error.label()) {
        status.metadata_mut().insert(ERROR_KEY, label);
    }
    if let Ok(subject) = MetadataValue::try_from(subject.as_str()) {
        status.metadata_mut().insert(SUBJECT_KEY, subject);
    }
    status
}

/// The typed error a client rebuilds from a status.
pub(crate) fn from_status(status: Status) -> Error {
    let read = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let label = read(ERROR_KEY);
    let subject = read(SUBJECT_KEY);
    match label.as_str() {
        "unknown_blueprint" => Error::UnknownBlueprint {
            blueprint_id: subject,
        },
        "unknown_artifact" => Error::UnknownArtifact {
            artifact_ref: subject,
        },
        "quarantined" => Error::Quarantined {
            what: subject,
            reason: status.message().to_string(),
        },
        "integrity" => Error::Integrity {
            artifact_ref: subject,
            actual: status.message().to_string(),
        },
        other => Error::Remote {
            code: status.code(),
            label: Error::LABELS
                .iter()
                .find(|l| **l == other)
                .copied()
                .unwrap_or("remote"),
            message: status.message().to_string(),
        },
    }
}
