//! What the property tests' load tables share: the idle bytes, kept as the program's load table
//! keeps them (one byte per slot, read 8 at a time, little-endian).
use std::cell::RefCell;

/// Word `w` of `idle`: slots `8 w .. 8 w + 8`, slot `8 w` in the low byte
/// ([`balancer_common::LoadSource::idle_word`]).
pub fn idle_word(idle: &RefCell<Vec<u8>>, w: u32) -> u64 {
    let idle = idle.borrow();
    let i = w as usize * 8;
    u64::from_le_bytes(idle[i..i + 8].try_into().expect("8 bytes"))
}

/// Clears `slot`'s idle byte ([`balancer_common::LoadSource::clear_idle`]).
pub fn clear_idle(idle: &RefCell<Vec<u8>>, slot: u32) {
    idle.borrow_mut()[slot as usize] = 0;
}
