//! What the fuzz targets share.

/// Decodes `bytes` as `M`; whatever decodes must re-encode to bytes that decode
/// to the same encoding (a stable round trip).
pub fn stable<M: prost::Message + prost::Name + Default>(bytes: &[u8]) -> Option<M> {
    let message: M = leyline::codec::decode(bytes).ok()?;
    let once = leyline::codec::encode(&message);
    let again: M = leyline::codec::decode(&once).expect("re-encoded message must decode");
    assert_eq!(
        leyline::codec::encode(&again),
        once,
        "{} round trip is not stable",
        M::full_name()
    );
    Some(message)
}
