//! The shim protocol's fixed-size records: round trips, and rejection of anything else.
use balancer_common::protocol::{
    DecodeError, Name, Register, Reply, Status, MAGIC, POD_LEN, REASON_LEN, TEMPLATE_LEN, VERSION,
};

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
    let n = Register::SIZE;
    assert_eq!(Register::decode(&good[..n - 1]), Err(DecodeError::Size(n - 1)));
    assert_eq!(Register::decode(&[good.as_slice(), &[0]].concat()), Err(DecodeError::Size(n + 1)));
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
    bytes[32 + 2] = 0xff;
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

#[test]
fn version_3_carries_flags_and_names() {
    let mut r = Register::new(7, 3);
    r.flags = Register::WANT_SOCKET;
    r.template = Name::new("web-small").unwrap();
    r.pod = Name::new("default/web-5d9f8-abcde").unwrap();
    let back = Register::decode(&r.encode()).unwrap();
    assert_eq!(back, r);
    assert_eq!(
        (back.template.as_str(), back.pod.as_str()),
        ("web-small", "default/web-5d9f8-abcde")
    );
    assert!(Register::new(1, 1).template.is_empty());

    let reply = Reply::new(Status::Ok, 1, 2, "").with_flags(Reply::SOCKET_ATTACHED);
    assert_eq!(Reply::decode(&reply.encode()).unwrap().flags, Reply::SOCKET_ATTACHED);
    assert_eq!(Status::UnknownTemplate.name(), "unknown_template");
    assert_eq!(Status::PodLimit.name(), "pod_limit");
    let refused = Reply::new(Status::PodLimit, 0, 0, "max_groups_per_pod (8) reached");
    assert_eq!(Reply::decode(&refused.encode()).unwrap().status(), Status::PodLimit);
}

#[test]
fn names_are_short_printable_ascii() {
    assert!(Name::<TEMPLATE_LEN>::new(&"a".repeat(TEMPLATE_LEN - 1)).is_some());
    assert!(Name::<TEMPLATE_LEN>::new(&"a".repeat(TEMPLATE_LEN)).is_none());
    for bad in ["a b", "a\nb", "é", "a\0b", "x{y}", "\"q\""] {
        assert!(Name::<POD_LEN>::new(bad).is_none(), "{bad:?} accepted");
    }
    assert_eq!(Name::<POD_LEN>::new("").unwrap(), Name::EMPTY);
}

#[test]
fn unknown_flags_and_malformed_names_are_refused() {
    let good = Register::new(1, 1).encode();
    let mut flags = good;
    flags[16] = 0x80;
    assert_eq!(Register::decode(&flags), Err(DecodeError::Flags(0x80)));
    let mut reserved = good;
    reserved[21] = 1;
    assert!(matches!(Register::decode(&reserved), Err(DecodeError::Flags(_))));
    let mut name = good;
    name[24] = b' ';
    assert_eq!(Register::decode(&name), Err(DecodeError::Name));
    let mut no_nul = good;
    no_nul[24..24 + TEMPLATE_LEN].fill(b'a');
    assert_eq!(Register::decode(&no_nul), Err(DecodeError::Name));
    let mut after_nul = good;
    after_nul[24 + TEMPLATE_LEN + 3] = b'a';
    assert_eq!(Register::decode(&after_nul), Err(DecodeError::Name));
    let mut reply = Reply::new(Status::Ok, 0, 0, "").encode();
    reply[17] = 1;
    assert!(matches!(Reply::decode(&reply), Err(DecodeError::Flags(_))));
}
