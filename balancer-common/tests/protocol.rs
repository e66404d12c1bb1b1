//! The shim protocol's fixed-size records: round trips, and rejection of anything else.
use balancer_common::protocol::{DecodeError, Register, Reply, Status, MAGIC, REASON_LEN, VERSION};

#[test]
fn register_round_trips() {
    let r = Register::new(4242, 20);
    assert_eq!(Register::decode(&r.encode()), Ok(r));
}

#[test]
fn reply_round_trips_with_reason() {
    let r = Reply::new(Status::NotAListener, 3, 9, "socket is not listening on 127.0.0.1:8000");
    let back = Reply::decode(&r.encode()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.status(), Status::NotAListener);
    assert_eq!(back.reason(), "socket is not listening on 127.0.0.1:8000");
}

#[test]
fn long_reasons_are_cut_on_a_character_boundary() {
    let reason = "é".repeat(REASON_LEN); // 2 bytes each
    let r = Reply::new(Status::Internal, 0, 0, &reason);
    assert_eq!(r.reason().len(), REASON_LEN);
    assert!(r.reason().chars().all(|c| c == 'é'));
}

#[test]
fn wrong_sizes_magic_and_versions_are_rejected() {
    let good = Register::new(1, 1).encode();
    assert_eq!(Register::decode(&good[..15]), Err(DecodeError::Size(15)));
    assert_eq!(Register::decode(&[good.as_slice(), &[0]].concat()), Err(DecodeError::Size(17)));
    assert_eq!(Register::decode(&[]), Err(DecodeError::Size(0)));
    let mut bad_magic = good;
    bad_magic[0] ^= 0xff;
    assert_eq!(Register::decode(&bad_magic), Err(DecodeError::BadMagic));
    let mut bad_version = good;
    bad_version[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert_eq!(Register::decode(&bad_version), Err(DecodeError::Version(VERSION + 1)));
    let mut reply = Reply::new(Status::Ok, 0, 0, "").encode();
    reply[6..8].copy_from_slice(&999u16.to_le_bytes());
    assert_eq!(Reply::decode(&reply), Err(DecodeError::Status(999)));
    assert_eq!(u32::from_le_bytes(good[0..4].try_into().unwrap()), MAGIC);
}

#[test]
fn invalid_utf8_reason_reads_up_to_the_valid_prefix() {
    let mut bytes = Reply::new(Status::Internal, 0, 0, "ok").encode();
    bytes[24 + 2] = 0xff;
    let r = Reply::decode(&bytes).unwrap();
    assert_eq!(r.reason(), "ok");
}

#[test]
fn version_2_carries_the_layout_and_the_map_id() {
    let r = Register::new(7, 3);
    assert_eq!(r.layout, balancer_common::LAYOUT_VERSION);
    let mut other = r;
    other.layout = r.layout.wrapping_add(1);
    assert_eq!(Register::decode(&other.encode()), Ok(other), "another layout still decodes");
    let reply = Reply::new(Status::Ok, 5, 11, "registered").with_map_id(4242);
    let back = Reply::decode(&reply.encode()).unwrap();
    assert_eq!((back.map_id, back.slot, back.epoch), (4242, 5, 11));
    assert_eq!(Status::LayoutMismatch.name(), "layout_mismatch");
}
