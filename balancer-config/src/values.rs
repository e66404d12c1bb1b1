//! The rules of one value that both the reading ([`crate::de`], with the value's position) and
//! the checks across values ([`crate::check`], for a config built in code) apply: service and
//! template names, and listen addresses.
use std::net::SocketAddr;

use crate::MAX_NAME_LEN;

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(crate) fn name_message(name: &str) -> String {
    format!(
        "invalid service name `{name}`: expected 1 to {MAX_NAME_LEN} characters of a-z, 0-9, \
         `_` and `-`"
    )
}

pub(crate) fn check_listen(addr: &SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Err(format!(
            "invalid listen address `{addr}`: port 0 is not a fixed port; expected IP:PORT with \
             a port of 1..=65535"
        ));
    }
    Ok(())
}
