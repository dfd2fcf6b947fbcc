//! The signing test vectors in `proto/signing/vectors.txt` (docs/SIGNING.md):
//! this build produces exactly the checked-in file, verifies every vector as
//! the file says, and the stand-alone script `proto/signing/verify.py` (which
//! uses no Esper code and no protobuf library) agrees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use leyline::security::{SigningKey, sign, signature_valid_encoded, signing_bytes_encoded};
use leyline::v1::{BusEnvelope, BusMessageType, MessagePriority, SystemStatePacket};
use prost::Message;

const KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/signing/vectors.txt")
}

fn envelope() -> BusEnvelope {
    BusEnvelope {
        message_type: BusMessageType::SystemState as i32,
        payload: SystemStatePacket {
            global_step: 42,
            ..Default::default()
        }
        .encode_to_vec(),
        message_id: "vector-1".into(),
        source: "tolaria".into(),
        issued_at_ms: 1_767_225_600_000,
        training_run_id: "run-vectors".into(),
        priority: MessagePriority::Normal as i32,
        attributes: BTreeMap::from([("experiment".to_owned(), "vectors".to_owned())]),
        signature: Vec::new(),
    }
}

/// A length-delimited record: key (field, wire type 2), length, bytes.
fn record(field: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

/// What a producer on another protobuf library does: MAC its own bytes `m`
/// (no signature yet), then append the signature record.
fn signed_by_producer(m: &[u8]) -> Vec<u8> {
    let (signed, _) = signing_bytes_encoded::<BusEnvelope>(m).unwrap();
    let mut bytes = m.to_vec();
    bytes.extend(record(15, &mac(&signed)));
    bytes
}

fn mac(signed: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&KEY).unwrap();
    mac.update(signed);
    mac.finalize().into_bytes().to_vec()
}

/// (name, bytes as transmitted, whether they verify).
fn vectors() -> Vec<(&'static str, Vec<u8>, bool)> {
    let key = SigningKey::from_bytes(&KEY).unwrap();
    let mut e = envelope();
    sign(&key, &mut e);
    let prost_bytes = e.encode_to_vec();

    let unsigned = envelope().encode_to_vec();
    // A newer producer's field 99, which this contract does not know.
    let mut with_unknown = unsigned.clone();
    with_unknown.extend(record(99, b"added in a later contract"));
    // Another library: fields in reverse order and a map entry whose empty
    // value is written out (prost omits it).
    let mut reordered = Vec::new();
    let mut entry = record(1, b"note");
    entry.extend(record(2, b""));
    reordered.extend(record(8, &entry));
    let plain = envelope();
    reordered.extend(record(6, plain.training_run_id.as_bytes()));
    reordered.extend(record(4, plain.source.as_bytes()));
    reordered.extend(record(3, plain.message_id.as_bytes()));
    reordered.extend(record(2, &plain.payload));
    prost::encoding::uint64::encode(5, &plain.issued_at_ms, &mut reordered);
    prost::encoding::int32::encode(1, &plain.message_type, &mut reordered);

    let mut tampered = prost_bytes.clone();
    // The payload's last byte (global_step 42 → 43).
    let payload = &envelope().payload;
    let at = prost_bytes
        .windows(payload.len())
        .position(|w| w == payload.as_slice())
        .unwrap()
        + payload.len()
        - 1;
    assert_eq!(tampered[at], 42);
    tampered[at] = 43;
    let mut appended = prost_bytes.clone();
    appended.extend(record(99, b"added after signing"));
    vec![
        ("prost-envelope", prost_bytes, true),
        ("unknown-field", signed_by_producer(&with_unknown), true),
        (
            "reordered-with-empty-map-value",
            signed_by_producer(&reordered),
            true,
        ),
        ("tampered-payload", tampered, false),
        ("field-added-after-signing", appended, false),
    ]
}

fn render() -> String {
    let mut out = String::from(
        "# Esper signing test vectors (docs/SIGNING.md). Each vector is a\n\
         # BusEnvelope as transmitted. signed = the bytes the MAC covers:\n\
         # \"esper.leyline.v1.BusEnvelope\" 0x00, then every top-level record but\n\
         # field 15's, in order; mac = HMAC-SHA256(key, signed); valid = whether\n\
         # the field-15 value in bytes equals mac. Regenerate with\n\
         # `cargo test -p leyline --test signing_vectors` (it prints the file).\n",
    );
    writeln!(out, "key = {}", hex(&KEY)).unwrap();
    let key = SigningKey::from_bytes(&KEY).unwrap();
    for (name, bytes, valid) in vectors() {
        let (signed, _) = signing_bytes_encoded::<BusEnvelope>(&bytes).unwrap();
        assert_eq!(
            signature_valid_encoded::<BusEnvelope>(&key, &bytes),
            valid,
            "{name}"
        );
        writeln!(out, "\n[vector]\nname = {name}\nbytes = {}", hex(&bytes)).unwrap();
        writeln!(
            out,
            "signed = {}\nmac = {}",
            hex(&signed),
            hex(&mac(&signed))
        )
        .unwrap();
        writeln!(out, "valid = {valid}").unwrap();
    }
    out
}

#[test]
fn the_checked_in_vectors_are_what_this_build_signs_and_verifies() {
    let expected = render();
    let found = std::fs::read_to_string(path()).unwrap_or_default();
    assert!(
        found == expected,
        "proto/signing/vectors.txt differs from what this build produces; if the \
         change is intended (a wire change: write an ADR), replace the file with:\n{expected}"
    );
}

#[test]
fn an_envelope_with_an_unknown_field_decodes_and_verifies() {
    let key = SigningKey::from_bytes(&KEY).unwrap();
    let (_, bytes, _) = vectors()
        .into_iter()
        .find(|v| v.0 == "unknown-field")
        .unwrap();
    let decoded = BusEnvelope::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded.message_id, "vector-1");
    let mut verifier =
        leyline::security::Verifier::new(key.clone(), &leyline::SecurityConfig::default());
    verifier
        .verify_encoded(&decoded, &bytes, decoded.issued_at_ms)
        .unwrap();
    // A re-encoding drops the unknown field: that is why nothing re-encodes.
    assert!(!leyline::security::signature_valid(&key, &decoded));
}

#[test]
fn the_stand_alone_script_agrees() {
    let script = path().with_file_name("verify.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(path())
        .output()
        .expect("python3 runs the stand-alone check (any Debian has it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("5 vectors, 5 as expected"), "{text}");
}
