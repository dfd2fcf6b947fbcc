//! Decoding outside bytes into Leyline messages.
//!
//! Every decoder of bytes that come from outside the process (the bus, gRPC, files)
//! goes through [`decode`], so that a malformed input is always a typed
//! [`Error::Decode`] naming the message, never a panic.

use crate::error::{Error, Result};

/// Decodes `bytes` as the message `M`.
///
/// ```
/// use leyline::v1::AdaptationCommand;
/// let err = leyline::codec::decode::<AdaptationCommand>(&[0xff, 0xff]).unwrap_err();
/// assert!(err.to_string().contains("esper.leyline.v1.AdaptationCommand"));
/// ```
pub fn decode<M: prost::Message + prost::Name + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| Error::Decode {
        message: M::full_name(),
        len: bytes.len(),
        source,
    })
}

/// Encodes a message into a new buffer (prost encodes deterministically: fields in
/// tag order, maps are `BTreeMap`s).
pub fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

use crate::v1::{
    AdaptationCommand, BusEnvelope, BusMessageType, EmergencySignal, FieldReport,
    KernelArtifactError, KernelArtifactReady, KernelCatalogUpdate, KernelPrefetchRequest,
    PolicyUpdate, RunJob, RunResult, SystemStatePacket, TelemetryPacket,
};

/// A bus payload decoded according to its envelope's [`BusMessageType`].
#[derive(Debug, Clone, PartialEq)]
pub enum BusPayload {
    /// `BUS_MESSAGE_TYPE_SYSTEM_STATE`.
    SystemState(SystemStatePacket),
    /// `BUS_MESSAGE_TYPE_ADAPTATION_COMMAND`.
    AdaptationCommand(AdaptationCommand),
    /// `BUS_MESSAGE_TYPE_FIELD_REPORT`.
    FieldReport(FieldReport),
    /// `BUS_MESSAGE_TYPE_TELEMETRY`.
    Telemetry(TelemetryPacket),
    /// `BUS_MESSAGE_TYPE_POLICY_UPDATE`.
    PolicyUpdate(PolicyUpdate),
    /// `BUS_MESSAGE_TYPE_KERNEL_PREFETCH_REQUEST`.
    KernelPrefetchRequest(KernelPrefetchRequest),
    /// `BUS_MESSAGE_TYPE_KERNEL_PREFETCH_READY`.
    KernelPrefetchReady(KernelArtifactReady),
    /// `BUS_MESSAGE_TYPE_KERNEL_PREFETCH_ERROR`.
    KernelPrefetchError(KernelArtifactError),
    /// `BUS_MESSAGE_TYPE_KERNEL_CATALOG_UPDATE`.
    KernelCatalogUpdate(KernelCatalogUpdate),
    /// `BUS_MESSAGE_TYPE_EMERGENCY_SIGNAL`.
    EmergencySignal(EmergencySignal),
    /// `BUS_MESSAGE_TYPE_RUN_JOB`.
    RunJob(RunJob),
    /// `BUS_MESSAGE_TYPE_RUN_RESULT`.
    RunResult(RunResult),
}

/// Decodes an envelope's payload as the message its `message_type` names.
///
/// An unspecified or unknown message type is [`Error::UnknownEnumValue`].
pub fn decode_payload(envelope: &BusEnvelope) -> Result<BusPayload> {
    let message_type =
        BusMessageType::try_from(envelope.message_type).map_err(|_| Error::UnknownEnumValue {
            enum_name: "BusMessageType",
            value: envelope.message_type,
        })?;
    let bytes = envelope.payload.as_slice();
    Ok(match message_type {
        BusMessageType::Unspecified => {
            return Err(Error::UnknownEnumValue {
                enum_name: "BusMessageType",
                value: envelope.message_type,
            });
        }
        BusMessageType::SystemState => BusPayload::SystemState(decode(bytes)?),
        BusMessageType::AdaptationCommand => BusPayload::AdaptationCommand(decode(bytes)?),
        BusMessageType::FieldReport => BusPayload::FieldReport(decode(bytes)?),
        BusMessageType::Telemetry => BusPayload::Telemetry(decode(bytes)?),
        BusMessageType::PolicyUpdate => BusPayload::PolicyUpdate(decode(bytes)?),
        BusMessageType::KernelPrefetchRequest => BusPayload::KernelPrefetchRequest(decode(bytes)?),
        BusMessageType::KernelPrefetchReady => BusPayload::KernelPrefetchReady(decode(bytes)?),
        BusMessageType::KernelPrefetchError => BusPayload::KernelPrefetchError(decode(bytes)?),
        BusMessageType::KernelCatalogUpdate => BusPayload::KernelCatalogUpdate(decode(bytes)?),
        BusMessageType::EmergencySignal => BusPayload::EmergencySignal(decode(bytes)?),
        BusMessageType::RunJob => BusPayload::RunJob(decode(bytes)?),
        BusMessageType::RunResult => BusPayload::RunResult(decode(bytes)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::*;
    use proptest::prelude::*;
    use prost::Message;

    /// Round trip: encode, decode, re-encode gives the same bytes. Bytes, not `==`,
    /// because an arbitrary `f64` may be NaN (NaN != NaN, but its bits survive).
    fn round_trips<M: Message + prost::Name + Default>(
        m: &M,
    ) -> std::result::Result<(), TestCaseError> {
        let bytes = encode(m);
        let decoded: M = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            encode(&decoded),
            bytes,
            "{} changed in a round trip",
            M::full_name()
        );
        Ok(())
    }

    macro_rules! round_trip_tests {
        ($($ty:ident),* $(,)?) => {
            /// Names of the messages the round-trip property covers.
            const COVERED: &[&str] = &[$(stringify!($ty)),*];
            proptest! {
                // Small collections keep nested messages (packets of seeds with maps) fast
                // to generate; structure, not size, is what a round trip exercises.
                #![proptest_config(ProptestConfig { cases: 64, max_default_size_range: 6, ..ProptestConfig::default() })]
                $(
                    #[test]
                    #[allow(non_snake_case)]
                    fn $ty(m in any::<$ty>()) { round_trips(&m)?; }
                )*
            }
        };
    }

    round_trip_tests!(
        GateEvaluation,
        StageTransition,
        ParameterBound,
        BlueprintDescriptor,
        BenchmarkProfile,
        BlueprintBenchmark,
        PerformanceBudgets,
        MemoryBudgets,
        SystemLimits,
        BusEnvelope,
        EmergencySignal,
        PolicyUpdate,
        MetricPoint,
        TelemetryEvent,
        TraceSpan,
        SystemHealth,
        TelemetryPacket,
        ConfidenceGate,
        BlendConfig,
        AlphaSchedule,
        CommandSeedOperation,
        CommandOptimizerAdjustment,
        CommandCircuitBreaker,
        CommandRollback,
        CommandPause,
        CommandEmergency,
        DecisionContext,
        AdaptationCommand,
        RollbackPayload,
        HardwareContext,
        AlphaState,
        SeedState,
        SlotState,
        SystemStatePacket,
        KernelPrefetchRequest,
        KernelArtifactReady,
        KernelArtifactError,
        KernelCatalogUpdate,
        MitigationAction,
        FieldReport,
        CatalogEntry,
        ArtifactProvenance,
        ArtifactRecord,
        ListBlueprintsRequest,
        ListBlueprintsResponse,
        GetBlueprintRequest,
        ListArtifactsRequest,
        ListArtifactsResponse,
        FetchArtifactRequest,
        ArtifactChunk,
        PutArtifactChunk,
        PutArtifactResponse,
        EnsureArtifactRequest,
        WatchCatalogRequest,
        RunFile,
        RunJob,
        RunResult,
        OpenSessionRequest,
        OpenSessionResponse,
        SessionRequest,
        CloseSessionResponse,
        StepRequest,
        RiskFinding,
        StepError,
        StepResponse,
        ControllerStateBlob,
        ImportStateRequest,
        ImportStateResponse,
    );

    #[test]
    fn every_proto_message_has_a_round_trip_test() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/leyline/v1");
        let mut declared = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("message ") {
                    let name = rest.trim_end_matches('}').trim_end().trim_end_matches('{');
                    declared.push(name.trim().to_string());
                }
            }
        }
        declared.sort();
        let mut covered: Vec<String> = COVERED.iter().map(|s| s.to_string()).collect();
        covered.sort();
        assert_eq!(declared, covered);
    }

    #[test]
    fn payloads_decode_by_their_envelope_type() {
        let signal = EmergencySignal {
            signal_id: "s".into(),
            level: 4,
            ..Default::default()
        };
        let env = BusEnvelope {
            message_type: BusMessageType::EmergencySignal as i32,
            payload: encode(&signal),
            ..Default::default()
        };
        assert_eq!(
            decode_payload(&env).unwrap(),
            BusPayload::EmergencySignal(signal)
        );
        let bad = BusEnvelope {
            message_type: 0,
            ..env.clone()
        };
        assert!(matches!(
            decode_payload(&bad),
            Err(Error::UnknownEnumValue { .. })
        ));
        let garbage = BusEnvelope {
            payload: vec![0x0a, 0xff],
            ..env
        };
        let err = decode_payload(&garbage).unwrap_err().to_string();
        assert!(err.contains("esper.leyline.v1.EmergencySignal"), "{err}");
    }
}
