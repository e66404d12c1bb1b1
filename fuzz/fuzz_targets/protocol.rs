//! The shim protocol's decoders on arbitrary bytes: `Register::decode` and `Reply::decode` never
//! panic, anything they accept has exactly the record's size, magic and version, and
//! `decode(encode(x)) == x` for every decoded `x`. The same bytes also drive the encoders
//! (`Register::new`, `Reply::new` with an arbitrary reason), which must round-trip as well.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use balancer_common::protocol::{
    DecodeError, Name, Register, Reply, Status, MAGIC, POD_LEN, REASON_LEN, TEMPLATE_LEN, VERSION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decode_register(data);
    decode_reply(data);
    let mut u = Unstructured::new(data);
    let _ = encode_register(&mut u);
    let _ = encode_reply(&mut u);
});

fn header_ok(b: &[u8], size: usize) -> bool {
    b.len() == size && b[0..4] == MAGIC.to_le_bytes() && b[4..6] == VERSION.to_le_bytes()
}

fn decode_register(b: &[u8]) {
    match Register::decode(b) {
        Ok(r) => {
            assert!(header_ok(b, Register::SIZE), "accepted a bad header: {b:02x?}");
            assert_eq!((r.magic, r.version), (MAGIC, VERSION));
            let again = r.encode();
            assert_eq!(Register::decode(&again), Ok(r), "decode(encode(x)) != x");
            // Every byte is carried over (reserved bytes and name padding must be 0 to decode).
            assert_eq!(again[..], b[..]);
            assert_eq!(r.template.as_str().len() + 1 <= TEMPLATE_LEN, true);
            assert_eq!(r.pod.as_str().len() + 1 <= POD_LEN, true);
        }
        Err(e) => {
            if header_ok(b, Register::SIZE) {
                // Only the body can be wrong: unknown flags or a malformed name.
                assert!(matches!(e, DecodeError::Flags(_) | DecodeError::Name), "{e}: {b:02x?}");
            } else {
                check_error(e, b, Register::SIZE);
            }
        }
    }
}

fn decode_reply(b: &[u8]) {
    match Reply::decode(b) {
        Ok(r) => {
            assert!(header_ok(b, Reply::SIZE), "accepted a bad header: {b:02x?}");
            assert_eq!((r.magic, r.version), (MAGIC, VERSION));
            assert_eq!(Status::from_id(r.status).map(|s| s as u16), Some(r.status));
            assert_eq!(r.status() as u16, r.status);
            let again = r.encode();
            assert_eq!(Reply::decode(&again), Ok(r), "decode(encode(x)) != x");
            assert_eq!(again[..], b[..]);
            check_reason(&r);
        }
        Err(e) => {
            let status_ok = b.len() == Reply::SIZE
                && Status::from_id(u16::from_le_bytes([b[6], b[7]])).is_some();
            if header_ok(b, Reply::SIZE) && status_ok {
                assert!(
                    matches!(e, DecodeError::Flags(_)),
                    "rejected a good reply ({e}): {b:02x?}"
                );
            } else {
                check_error(e, b, Reply::SIZE);
            }
        }
    }
}

/// The error names the first thing wrong, in the decoder's order: size, magic, version (status).
fn check_error(e: DecodeError, b: &[u8], size: usize) {
    let expected = if b.len() != size {
        DecodeError::Size(b.len())
    } else if b[0..4] != MAGIC.to_le_bytes() {
        DecodeError::BadMagic
    } else if b[4..6] != VERSION.to_le_bytes() {
        DecodeError::Version(u16::from_le_bytes([b[4], b[5]]))
    } else {
        DecodeError::Status(u16::from_le_bytes([b[6], b[7]]))
    };
    assert_eq!(e, expected);
    assert!(!e.to_string().is_empty());
}

/// `reason()` is the longest valid UTF-8 prefix of the bytes before the first NUL.
fn check_reason(r: &Reply) {
    let text = r.reason();
    let end = r.reason.iter().position(|&c| c == 0).unwrap_or(REASON_LEN);
    let bytes = &r.reason[..end];
    assert!(bytes.starts_with(text.as_bytes()));
    let valid = match core::str::from_utf8(bytes) {
        Ok(s) => s.len(),
        Err(e) => e.valid_up_to(),
    };
    assert_eq!(text.len(), valid);
}

fn encode_register(u: &mut Unstructured) -> arbitrary::Result<()> {
    let mut r = Register::new(u.arbitrary()?, u.arbitrary()?);
    r.flags = u.int_in_range(0..=Register::WANT_SOCKET)?;
    // Names: whatever `Name::new` accepts round-trips; what it refuses is never built.
    let (t, p) = (<&str>::arbitrary(u)?, <&str>::arbitrary(u)?);
    if let Some(name) = Name::new(t) {
        assert_eq!(name.as_str(), t);
        r.template = name;
    } else {
        assert!(
            t.len() >= TEMPLATE_LEN
                || !t.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_/:".contains(&c))
        );
    }
    if let Some(name) = Name::new(p) {
        assert_eq!(name.as_str(), p);
        r.pod = name;
    }
    let bytes = r.encode();
    assert_eq!(bytes.len(), Register::SIZE);
    assert_eq!(Register::decode(&bytes), Ok(r));
    // Any other length is refused, whatever the content.
    let cut = u.int_in_range(0..=Register::SIZE - 1)?;
    assert_eq!(Register::decode(&bytes[..cut]), Err(DecodeError::Size(cut)));
    Ok(())
}

fn encode_reply(u: &mut Unstructured) -> arbitrary::Result<()> {
    let status = *u.choose(&Status::ALL)?;
    let (slot, epoch): (u32, u64) = (u.arbitrary()?, u.arbitrary()?);
    let reason = <&str>::arbitrary(u)?;
    let map_id: u32 = u.arbitrary()?;
    let flags = u.int_in_range(0..=Reply::SOCKET_ATTACHED)?;
    let r = Reply::new(status, slot, epoch, reason).with_map_id(map_id).with_flags(flags);
    let bytes = r.encode();
    assert_eq!(bytes.len(), Reply::SIZE);
    let back = Reply::decode(&bytes).expect("an encoded reply decodes");
    assert_eq!(back, r);
    assert_eq!((back.status(), back.slot, back.epoch, back.map_id), (status, slot, epoch, map_id));
    // The reason is cut at REASON_LEN bytes on a character boundary, and read up to its first NUL.
    let mut end = reason.len().min(REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let kept = &reason[..end];
    let kept = kept.split('\0').next().unwrap_or("");
    assert_eq!(back.reason(), kept);
    assert!(reason.len() <= REASON_LEN || end + 3 >= REASON_LEN, "cut more than one character");
    Ok(())
}
