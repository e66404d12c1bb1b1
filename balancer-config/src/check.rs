//! The checks across values, run after the file is read (and by [`Config::validate`] for a
//! config built in code): unique service names, listen addresses once per network namespace,
//! one registration socket per service and one for the pods, and the group settings' ranges
//! ([`crate::settings::check`]). Each finding is a [`Problem`] with the path of the node at fault,
//! which [`crate::locate`] turns into a line and column.
use std::{collections::HashMap, net::SocketAddr, path::Path};

use crate::{
    error::Problem,
    locate::Seg,
    pods::Pods,
    values::{check_listen, name_message, valid_name},
    Config, Service,
};

/// The path of `services[i].field`.
fn at_service(i: usize, field: &'static str) -> Vec<Seg> {
    vec![Seg::Key("services"), Seg::Index(i), Seg::Key(field)]
}

/// One listen address seen so far: its network namespace, the address, and its service's index.
type Seen<'c> = (Option<&'c Path>, SocketAddr, usize);

impl Config {
    pub(crate) fn check(&self) -> Result<(), Problem> {
        if self.services.is_empty() && self.pods.is_none() {
            return Err(Problem::new(
                vec![Seg::Key("services")],
                "no services: expected at least one, or a `pods:` section".to_owned(),
            ));
        }
        if let Some(pods) = &self.pods {
            self.check_pods(pods)?;
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut sockets: HashMap<&Path, usize> = HashMap::new();
        let mut addrs: Vec<Seen<'_>> = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            check_name(s, i, &mut names)?;
            self.check_listen_addrs(s, i, &mut addrs)?;
            s.check_settings()
                .map_err(|(field, message)| Problem::new(at_service(i, field), message))?;
            self.check_socket(s, i, &mut sockets)?;
        }
        Ok(())
    }

    /// The pods section on its own, and what it must not share with the services.
    fn check_pods(&self, pods: &Pods) -> Result<(), Problem> {
        pods.check().map_err(|(at, message)| Problem::new(at, message))?;
        if let Some(i) = self.services.iter().position(|s| s.name == "pods") {
            return Err(Problem::new(
                at_service(i, "name"),
                "the service name `pods` is taken by the pods section (its pins and metrics \
                 label): expected another name"
                    .to_owned(),
            ));
        }
        let socket = pods.shim_socket();
        if let Some(s) = self.services.iter().find(|s| s.shim_socket() == socket) {
            return Err(Problem::new(
                vec![Seg::Key("pods"), Seg::Key("shim_socket")],
                format!(
                    "shim socket {} is also the socket of service `{}`: expected one socket \
                     per service, and one for the pods",
                    socket.display(),
                    s.name
                ),
            ));
        }
        Ok(())
    }

    /// Service `i`'s listen addresses: at least one, none with port 0, none used (or overlapped)
    /// already in the same network namespace. Adds them to `seen`.
    fn check_listen_addrs<'c>(
        &'c self,
        s: &'c Service,
        i: usize,
        seen: &mut Vec<Seen<'c>>,
    ) -> Result<(), Problem> {
        if s.listen.is_empty() {
            return Err(Problem::new(
                at_service(i, "listen"),
                "no listen address: expected at least one IP:PORT".to_owned(),
            ));
        }
        for (k, addr) in s.listen.iter().enumerate() {
            let mut at = at_service(i, "listen");
            at.push(Seg::Index(k));
            if let Err(msg) = check_listen(addr) {
                return Err(Problem::new(at, msg));
            }
            let netns = s.netns.as_deref();
            if let Some(&(_, other, j)) =
                seen.iter().find(|(n, other, _)| *n == netns && overlaps(addr, other))
            {
                return Err(Problem::new(at, self.overlap_message(addr, other, i, j, netns)));
            }
            seen.push((netns, *addr, i));
        }
        Ok(())
    }

    fn overlap_message(
        &self,
        addr: &SocketAddr,
        other: SocketAddr,
        i: usize,
        j: usize,
        netns: Option<&Path>,
    ) -> String {
        let whose = if j == i {
            "this service".to_owned()
        } else {
            format!("service `{}`", self.services[j].name)
        };
        let same = if *addr == other {
            "is already".to_owned()
        } else {
            format!("overlaps {other}, which is")
        };
        let netns = match netns {
            Some(p) => format!(" (netns {})", p.display()),
            None => String::new(),
        };
        format!(
            "listen address {addr} {same} used by {whose}{netns}; expected every listen address \
             once per network namespace"
        )
    }

    /// Service `i`'s registration socket is no other service's. Adds it to `seen`.
    fn check_socket<'c>(
        &'c self,
        s: &'c Service,
        i: usize,
        seen: &mut HashMap<&'c Path, usize>,
    ) -> Result<(), Problem> {
        let socket = s.shim_socket();
        if let Some(&first) = seen.get(socket) {
            // Point at the explicit shim_socket if there is one, else at the name that made it.
            let field = if self.explicit_shim_socket(i) { "shim_socket" } else { "name" };
            return Err(Problem::new(
                at_service(i, field),
                format!(
                    "shim socket {} is also the socket of service `{}`: expected one socket per \
                     service",
                    socket.display(),
                    self.services[first].name
                ),
            ));
        }
        seen.insert(socket, i);
        Ok(())
    }

    /// Whether service `i`'s shim socket was given explicitly (differs from the default path).
    fn explicit_shim_socket(&self, i: usize) -> bool {
        let s = &self.services[i];
        s.shim_socket() != self.shim_socket_dir.join(format!("{}.sock", s.name))
    }
}

/// Service `i`'s name is valid and not taken by an earlier service. Adds it to `seen`.
fn check_name<'c>(
    s: &'c Service,
    i: usize,
    seen: &mut HashMap<&'c str, usize>,
) -> Result<(), Problem> {
    if !valid_name(&s.name) {
        return Err(Problem::new(at_service(i, "name"), name_message(&s.name)));
    }
    if let Some(&first) = seen.get(s.name.as_str()) {
        return Err(Problem::new(
            at_service(i, "name"),
            format!(
                "duplicate service name `{}`: services[{first}] has it already; expected unique \
                 names",
                s.name
            ),
        ));
    }
    seen.insert(&s.name, i);
    Ok(())
}

fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    // IPv6 listeners are V6ONLY (see listener::bind_reuseport), so the families never overlap.
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
