//! The signed bytes, read from a message as transmitted (docs/SIGNING.md).
//!
//! A signature covers `full proto name ‖ 0x00 ‖ M`, where `M` is the
//! message's encoding as it travelled with every top-level record of the
//! signature field removed and every other byte kept, in order. Nothing is
//! re-encoded, so a message another protobuf library wrote (fields in another
//! order, an explicit empty map value, a field this build does not know)
//! verifies exactly when its producer signed those bytes.
//!
//! The scan reads only top-level record headers (a varint key, then a varint,
//! 8 bytes, a length-prefixed run or 4 bytes); groups (wire types 3 and 4,
//! deprecated since proto2) are refused.

use thiserror::Error;

/// Why an encoded message could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The bytes end inside a record.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A varint longer than 10 bytes.
    #[error("overlong varint at byte {0}")]
    Overlong(usize),
    /// Field number 0, or a wire type that is not 0, 1, 2 or 5.
    #[error("bad record key {key} at byte {at}")]
    BadKey {
        /// The key's value.
        key: u64,
        /// Where it starts.
        at: usize,
    },
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let start = *at;
    let mut value = 0u64;
    for shift in 0..10 {
        let b = *bytes.get(*at).ok_or(WireError::Truncated(start))?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * shift);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Overlong(start))
}

/// Splits `encoded` into the bytes that are signed (every top-level record
/// but those of field `field`, in order) and the value of the last record of
/// `field` (the signature; empty when there is none).
pub fn split_signature(encoded: &[u8], field: u32) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let mut signed = Vec::with_capacity(encoded.len());
    let mut signature = Vec::new();
    let mut at = 0;
    while at < encoded.len() {
        let start = at;
        let key = varint(encoded, &mut at)?;
        let (number, wire_type) = (key >> 3, key & 7);
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(WireError::BadKey { key, at: start });
        }
        let value_start;
        match wire_type {
            0 => {
                value_start = at;
                varint(encoded, &mut at)?;
            }
            1 | 5 => {
                value_start = at;
                at += if wire_type == 1 { 8 } else { 4 };
            }
            2 => {
                let len = varint(encoded, &mut at)?;
                value_start = at;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated(start))?;
                at = at.checked_add(len).ok_or(WireError::Truncated(start))?;
            }
            _ => return Err(WireError::BadKey { key, at: start }),
        }
        let record = encoded.get(start..at).ok_or(WireError::Truncated(start))?;
        if number == u64::from(field) && wire_type == 2 {
            signature = encoded[value_start..at].to_vec();
        } else {
            signed.extend_from_slice(record);
        }
    }
    Ok((signed, signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_record_is_cut_wherever_it_stands_and_the_rest_kept_in_order() {
        // field 1 varint 150; field 15 bytes "ab"; field 99 (unknown) bytes "x"; field 2 fixed32.
        let bytes = [
            0x08, 0x96, 0x01, 0x7a, 0x02, b'a', b'b', 0x9a, 0x06, 0x01, b'x', 0x15, 1, 2, 3, 4,
        ];
        let (signed, sig) = split_signature(&bytes, 15).unwrap_or_default();
        assert_eq!(sig, b"ab");
        assert_eq!(
            signed,
            [0x08, 0x96, 0x01, 0x9a, 0x06, 0x01, b'x', 0x15, 1, 2, 3, 4]
        );
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        assert_eq!(
            split_signature(&[0x0a, 0x05, 1], 15),
            Err(WireError::Truncated(0))
        );
        assert!(matches!(
            split_signature(&[0x0b], 15),
            Err(WireError::BadKey { .. })
        ));
        assert!(matches!(
            split_signature(&[0x00, 0x01], 15),
            Err(WireError::BadKey { .. })
        ));
        assert!(matches!(
            split_signature(&[0x88; 12], 15),
            Err(WireError::Overlong(0))
        ));
        assert_eq!(split_signature(&[], 15), Ok((Vec::new(), Vec::new())));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_scan_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = split_signature(&bytes, 15);
        }
    }
}
