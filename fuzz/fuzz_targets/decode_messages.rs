//! Fuzzes every decoder of outside bytes in Leyline: each top-level message, and a
//! bus envelope followed by its typed payload. Whatever the bytes, decoding must
//! return a value or a typed error (never panic), validation and verification must
//! not panic on what decodes, and whatever decodes must re-encode to bytes that
//! decode to the same encoding (a stable round trip).
//!
//! Run: `cargo +nightly fuzz run decode_messages -- -max_total_time=60`
//! (from the repository root; see docs/PERFORMANCE.md for recorded runs).

#![no_main]

use leyline::codec::decode_payload;
use leyline::security::{SigningKey, Verifier};
use leyline::v1::*;
use leyline::validate::Validator;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;
use common::stable;

fuzz_target!(|data: &[u8]| {
    let validator = Validator::default();
    let key = SigningKey::from_bytes(&[0x5a; 32]).expect("static key");
    let mut verifier = Verifier::new(key, &leyline::SecurityConfig::default());
    let now = 1_800_000_000_000;

    if let Some(m) = stable::<AdaptationCommand>(data) {
        let _ = validator.command(&m);
        let _ = verifier.verify(&m, now);
    }
    if let Some(m) = stable::<SystemStatePacket>(data) {
        let _ = validator.state_packet(&m);
    }
    if let Some(m) = stable::<TelemetryPacket>(data) {
        let _ = validator.telemetry_packet(&m);
    }
    // The signed bytes are read from the raw input, decodable or not.
    let _ = leyline::security::signature_valid_encoded::<BusEnvelope>(verifier.key(), data);
    if let Some(m) = stable::<BusEnvelope>(data) {
        let _ = validator.envelope(&m);
        let _ = verifier.verify(&m, now);
        let _ = verifier.verify_encoded(&m, data, now);
        let _ = decode_payload(&m);
    }
    if let Some(m) = stable::<EmergencySignal>(data) {
        let _ = validator.emergency_signal(&m);
        let _ = verifier.verify(&m, now);
    }
    if let Some(m) = stable::<FieldReport>(data) {
        let _ = validator.field_report(&m);
    }
    if let Some(m) = stable::<BlueprintDescriptor>(data) {
        let _ = validator.blueprint_descriptor(&m);
    }
    let _ = stable::<PolicyUpdate>(data);
    let _ = stable::<KernelPrefetchRequest>(data);
    let _ = stable::<KernelArtifactReady>(data);
    let _ = stable::<KernelArtifactError>(data);
    let _ = stable::<KernelCatalogUpdate>(data);
    let _ = stable::<RunJob>(data);
    let _ = stable::<RunResult>(data);
    let _ = stable::<OpenSessionRequest>(data);
    let _ = stable::<StepRequest>(data);
    let _ = stable::<ImportStateRequest>(data);
    let _ = stable::<SessionRequest>(data);
    let _ = stable::<StepResponse>(data);
    let _ = stable::<BlueprintBenchmark>(data);
    let _ = stable::<GateEvaluation>(data);
    let _ = stable::<StageTransition>(data);
    let _ = stable::<RollbackPayload>(data);
    let _ = stable::<PerformanceBudgets>(data);
    let _ = stable::<SystemLimits>(data);
});
