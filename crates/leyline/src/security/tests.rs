use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::config::SecurityConfig;
use crate::v1::adaptation_command::Payload;
use crate::v1::{CommandSeedOperation, CommandType, SeedOperation, VerificationFailure};

const NOW: u64 = 1_800_000_000_000;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32]).unwrap()
}

fn command(id: &str, issued_at_ms: u64) -> AdaptationCommand {
    AdaptationCommand {
        version: 1,
        command_id: id.into(),
        command_type: CommandType::Seed as i32,
        target_seed_id: "seed-1".into(),
        issued_at_ms,
        deadline_at_ms: issued_at_ms + 1000,
        issued_by: "tamiyo".into(),
        training_run_id: "run-1".into(),
        generation: 3,
        payload: Some(Payload::SeedOperation(CommandSeedOperation {
            operation: SeedOperation::Germinate as i32,
            blueprint_id: "conv-light".into(),
            parameters: [("width".to_string(), 16.0)].into(),
            slot_id: "r0".into(),
            mesh_layers: vec!["conv1".into()],
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn signed(id: &str, issued_at_ms: u64) -> AdaptationCommand {
    let mut c = command(id, issued_at_ms);
    sign(&key(), &mut c);
    c
}

fn verifier() -> Verifier {
    Verifier::new(key(), &SecurityConfig::default())
}

fn reason(result: std::result::Result<(), Rejection>) -> VerificationFailure {
    result.unwrap_err().reason
}

#[test]
fn signed_command_verifies_once() {
    let mut v = verifier();
    let c = signed("c1", NOW);
    assert_eq!(c.signature.len(), 32);
    v.verify(&c, NOW).unwrap();
    assert_eq!(
        reason(v.verify(&c, NOW + 10)),
        VerificationFailure::NonceReplayed
    );
    assert_eq!(v.stats().accepted, 1);
    assert_eq!(v.stats().rejected["VERIFICATION_FAILURE_NONCE_REPLAYED"], 1);
}

#[test]
fn unsigned_stale_future_and_missing_fields_are_rejected_with_their_reason() {
    let mut v = verifier();
    assert_eq!(
        reason(v.verify(&command("u", NOW), NOW)),
        VerificationFailure::MissingSignature
    );
    // Stale: older than the 60 s window.
    assert_eq!(
        reason(v.verify(&signed("s", NOW - 60_001), NOW)),
        VerificationFailure::Stale
    );
    // Exactly at the window's edge is still fresh.
    v.verify(&signed("edge", NOW - 60_000), NOW).unwrap();
    // Future-dated beyond the 5 s skew.
    assert_eq!(
        reason(v.verify(&signed("f", NOW + 5_001), NOW)),
        VerificationFailure::IssuedInFuture
    );
    v.verify(&signed("f-ok", NOW + 5_000), NOW).unwrap();
    assert_eq!(
        reason(v.verify(&signed("", NOW), NOW)),
        VerificationFailure::MissingId
    );
    assert_eq!(
        reason(v.verify(&signed("t", 0), NOW)),
        VerificationFailure::MissingTimestamp
    );
}

#[test]
fn wrong_key_is_an_invalid_signature() {
    let mut c = command("k", NOW);
    sign(&SigningKey::from_bytes(&[8u8; 32]).unwrap(), &mut c);
    assert_eq!(
        reason(verifier().verify(&c, NOW)),
        VerificationFailure::InvalidSignature
    );
}

#[test]
fn verification_order_is_signature_id_freshness_nonce() {
    let mut v = verifier();
    v.verify(&signed("dup", NOW), NOW).unwrap();
    // A replayed id with a bad signature is reported as a bad signature.
    let mut forged = signed("dup", NOW);
    forged.signature[0] ^= 1;
    assert_eq!(
        reason(v.verify(&forged, NOW)),
        VerificationFailure::InvalidSignature
    );
    // A replayed id that is also stale is reported as stale (freshness before nonce).
    let stale_dup = signed("dup", NOW - 120_000);
    assert_eq!(
        reason(v.verify(&stale_dup, NOW)),
        VerificationFailure::Stale
    );
    // A rejected message never burns its nonce.
    let mut v = verifier();
    assert_eq!(
        reason(v.verify(&signed("late", NOW - 120_000), NOW)),
        VerificationFailure::Stale
    );
    v.verify(&signed("late", NOW), NOW).unwrap();
}

#[test]
fn signing_bytes_are_domain_separated_and_exclude_the_signature() {
    let c = signed("d", NOW);
    let bytes = signing_bytes(&c);
    assert!(bytes.starts_with(b"esper.leyline.v1.AdaptationCommand\0"));
    assert_eq!(bytes, signing_bytes(&command("d", NOW)));
}

#[test]
fn every_signed_message_type_round_trips_through_the_verifier() {
    let mut v = verifier();
    let mut env = BusEnvelope {
        message_id: "m".into(),
        issued_at_ms: NOW,
        payload: vec![1, 2, 3],
        ..Default::default()
    };
    sign(&key(), &mut env);
    v.verify(&env, NOW).unwrap();
    let mut sig = EmergencySignal {
        signal_id: "e".into(),
        triggered_at_ms: NOW,
        ..Default::default()
    };
    sign(&key(), &mut sig);
    v.verify(&sig, NOW).unwrap();
    let mut pol = PolicyUpdate {
        policy_id: "p".into(),
        issued_at_ms: NOW,
        ..Default::default()
    };
    sign(&key(), &mut pol);
    v.verify(&pol, NOW).unwrap();
    env.priority = 4;
    assert_eq!(
        reason(v.verify(&env, NOW)),
        VerificationFailure::InvalidSignature
    );
}

#[test]
fn ledger_expires_after_ttl_and_counts_evictions() {
    let mut ledger = NonceLedger::new(300_000, 3);
    assert!(ledger.burn("a", 0));
    assert!(!ledger.burn("a", 299_999));
    assert!(ledger.burn("a", 300_000), "expired ids may be seen again");
    for id in ["b", "c", "d"] {
        assert!(ledger.burn(id, 300_001));
    }
    assert_eq!(ledger.len(), 3);
    assert_eq!(ledger.evictions(), 1);
    assert!(
        !ledger.contains("a"),
        "the earliest expiry is evicted first"
    );
}

#[test]
fn keys_are_checked_and_never_printed() {
    assert!(SigningKey::from_bytes(&[1u8; 31]).is_err());
    assert!(SigningKey::from_hex("zz").is_err());
    assert!(SigningKey::from_hex("abc").is_err());
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    let k = SigningKey::from_hex(hex).unwrap();
    assert_eq!(format!("{k:?}"), "SigningKey(32 bytes, redacted)");
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let mut c1 = command("x", NOW);
    let mut c2 = command("x", NOW);
    sign(&a, &mut c1);
    sign(&b, &mut c2);
    assert_ne!(c1.signature, c2.signature, "generated keys differ");
}

proptest! {
    /// Flipping any bit of any byte of a signed command on the wire is detected:
    /// the bytes no longer decode, or they decode to a message whose signature
    /// fails, or they decode to the very same message (e.g. a bool encoded as 3).
    #[test]
    fn tampering_with_any_byte_is_detected(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let original = signed("tamper", NOW);
        let mut wire = original.encode_to_vec();
        let i = index.index(wire.len());
        wire[i] ^= 1 << bit;
        if let Ok(decoded) = AdaptationCommand::decode(wire.as_slice()) {
            let same = decoded.encode_to_vec() == original.encode_to_vec();
            let outcome = verifier().verify(&decoded, NOW);
            prop_assert!(same || outcome.is_err(), "tampered byte {i} bit {bit} verified");
        }
    }
}
