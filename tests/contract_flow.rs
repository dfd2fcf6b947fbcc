//! The contract path end to end across crates: a command built by a controller,
//! checked by the shared validator, signed with the key `esper-runtime` resolved
//! from configuration, carried in a bus envelope as raw bytes, and verified and
//! decoded on the receiving side — the path every command will take once Tamiyo,
//! Oona and Kasmina exist.

use std::collections::BTreeMap;

use leyline::codec::{BusPayload, decode, decode_payload, encode};
use leyline::security::{Verifier, sign};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, BusEnvelope, BusMessageType, CommandSeedOperation, CommandType,
    MessagePriority, SeedOperation, VerificationFailure,
};
use leyline::validate::Validator;
use proptest::prelude::*;

const HEX_KEY: &str = "3f1d2c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f001";

fn resolved_with_env_secret() -> esper_runtime::Resolved {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esper.toml");
    std::fs::write(
        &path,
        "[run]\nrun_id = \"flow-1\"\n[leyline.security.secret]\nsource = \"env\"\nvar = \"ESPER_TEST_SECRET\"\n",
    )
    .unwrap();
    let env = BTreeMap::from([("ESPER_TEST_SECRET".to_string(), HEX_KEY.to_string())]);
    esper_runtime::config::load(Some(&path), &env).unwrap()
}

fn command(run_id: &str, id: &str, now: u64) -> AdaptationCommand {
    AdaptationCommand {
        version: leyline::CONTRACT_VERSION,
        command_id: id.into(),
        command_type: CommandType::Seed as i32,
        target_seed_id: "seed-r0".into(),
        issued_at_ms: now,
        deadline_at_ms: now + 2_000,
        issued_by: "tamiyo".into(),
        training_run_id: run_id.into(),
        payload: Some(Payload::SeedOperation(CommandSeedOperation {
            operation: SeedOperation::Germinate as i32,
            blueprint_id: "conv-residual".into(),
            slot_id: "r0".into(),
            mesh_layers: vec!["r0".into()],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Sender side: validate, sign, wrap, sign the envelope, and put bytes on the wire.
fn send(resolved: &esper_runtime::Resolved, cmd: &mut AdaptationCommand, now: u64) -> Vec<u8> {
    let validator = Validator::new(&resolved.config.leyline.limits);
    validator.command(cmd).into_result().unwrap();
    sign(&resolved.signing_key, cmd);
    let mut envelope = BusEnvelope {
        message_type: BusMessageType::AdaptationCommand as i32,
        payload: encode(cmd),
        message_id: format!("env-{}", cmd.command_id),
        source: "tamiyo".into(),
        issued_at_ms: now,
        training_run_id: resolved.run_id.clone(),
        priority: MessagePriority::Normal as i32,
        ..Default::default()
    };
    sign(&resolved.signing_key, &mut envelope);
    encode(&envelope)
}

/// Receiver side: decode, verify the envelope, decode the payload, verify and
/// validate the command.
fn receive(
    resolved: &esper_runtime::Resolved,
    bus_verifier: &mut Verifier,
    intake_verifier: &mut Verifier,
    wire: &[u8],
    now: u64,
) -> Result<AdaptationCommand, String> {
    let envelope: BusEnvelope = decode(wire).map_err(|e| e.to_string())?;
    bus_verifier
        .verify(&envelope, now)
        .map_err(|e| e.to_string())?;
    let BusPayload::AdaptationCommand(cmd) =
        decode_payload(&envelope).map_err(|e| e.to_string())?
    else {
        return Err("wrong payload type".into());
    };
    intake_verifier
        .verify(&cmd, now)
        .map_err(|e| e.to_string())?;
    Validator::new(&resolved.config.leyline.limits)
        .command(&cmd)
        .into_result()
        .map_err(|e| e.to_string())?;
    Ok(cmd)
}

fn verifiers(resolved: &esper_runtime::Resolved) -> (Verifier, Verifier) {
    let sec = &resolved.config.leyline.security;
    (
        Verifier::new(resolved.signing_key.clone(), sec),
        Verifier::new(resolved.signing_key.clone(), sec),
    )
}

#[test]
fn a_command_crosses_the_wire_and_is_accepted_exactly_once() {
    let resolved = resolved_with_env_secret();
    assert_eq!(resolved.run_id, "flow-1");
    let (mut bus, mut intake) = verifiers(&resolved);
    let now = leyline::unix_now_ms();
    let mut cmd = command(&resolved.run_id, "cmd-1", now);
    let wire = send(&resolved, &mut cmd, now);
    let received = receive(&resolved, &mut bus, &mut intake, &wire, now).unwrap();
    assert_eq!(received, cmd);
    let replay = receive(&resolved, &mut bus, &mut intake, &wire, now).unwrap_err();
    assert!(replay.contains("NONCE_REPLAYED"), "{replay}");
}

#[test]
fn a_receiver_with_another_key_rejects_everything() {
    let resolved = resolved_with_env_secret();
    let other = esper_runtime::config::load(None, &BTreeMap::new()).unwrap(); // ephemeral key
    let (mut bus, mut intake) = verifiers(&other);
    let now = leyline::unix_now_ms();
    let wire = send(&resolved, &mut command(&resolved.run_id, "cmd-2", now), now);
    let err = receive(&other, &mut bus, &mut intake, &wire, now).unwrap_err();
    assert!(
        err.contains(VerificationFailure::InvalidSignature.as_str_name()),
        "{err}"
    );
}

#[test]
fn a_re_wrapped_command_is_still_caught_by_intake() {
    // An attacker who can sign envelopes (a compromised bus hop) but not commands:
    // the command's own signature and nonce still protect Kasmina.
    let resolved = resolved_with_env_secret();
    let (mut bus, mut intake) = verifiers(&resolved);
    let now = leyline::unix_now_ms();
    let mut cmd = command(&resolved.run_id, "cmd-3", now);
    let wire = send(&resolved, &mut cmd, now);
    receive(&resolved, &mut bus, &mut intake, &wire, now).unwrap();
    // Same command, new envelope id: the bus accepts it, intake refuses the replay.
    let wire2 = send(&resolved, &mut cmd, now);
    let err = receive(&resolved, &mut bus, &mut intake, &wire2, now).unwrap_err();
    assert!(err.contains("NONCE_REPLAYED"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    /// Arbitrary bytes on the wire never panic the receiving side and are never
    /// accepted.
    #[test]
    fn garbage_on_the_wire_is_rejected_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let resolved = resolved_with_env_secret();
        let (mut bus, mut intake) = verifiers(&resolved);
        prop_assert!(receive(&resolved, &mut bus, &mut intake, &bytes, leyline::unix_now_ms()).is_err());
    }
}
