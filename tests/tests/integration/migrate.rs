//! Zero-drop worker exits, in the style of the kernel selftest migrate_reuseport.c: connections
//! wait in one listener's accept queue and in its handshake queue (half-open, the client's final
//! ACK held back by an nftables rule), then that listener closes. With the select-or-migrate
//! program every client is served by another listener; with select-only they are reset.
use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use balancer_common::{Event, Policy};
use balancer_user::{loader::Program, Mode};
use integration_tests::{NetNs, Pool, LOOPBACKS};

const ESTABLISHED: usize = 8;
const HALF_OPEN: usize = 8;

/// Holds the final ACK of handshakes to `port` while alive (an nftables table in the namespace).
struct HoldAcks<'a> {
    ns: &'a NetNs,
}

impl<'a> HoldAcks<'a> {
    fn new(ns: &'a NetNs, port: u16) -> Result<Self> {
        ns.exec("nft", &["add", "table", "inet", "reuselb_test"])?;
        ns.exec(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                "reuselb_test",
                "input",
                "{ type filter hook input priority 0; }",
            ],
        )?;
        let port = port.to_string();
        ns.exec(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                "reuselb_test",
                "input",
                "tcp",
                "dport",
                &port,
                "tcp",
                "flags",
                "==",
                "ack",
                "drop",
            ],
        )?;
        Ok(Self { ns })
    }
}

impl Drop for HoldAcks<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec("nft", &["delete", "table", "inet", "reuselb_test"]);
    }
}

/// Accepts on `listeners` until `count` connections arrived or `timeout` passed; answers each
/// with one byte.
fn accept_and_answer(listeners: &[TcpListener], count: usize, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut served = 0;
    while served < count && Instant::now() < deadline {
        let mut idle = true;
        for l in listeners {
            match l.accept() {
                Ok((mut s, _)) => {
                    idle = false;
                    s.set_nonblocking(false)?;
                    s.write_all(b"!")?;
                    served += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("accept"),
            }
        }
        if idle {
            thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(served)
}

/// How many clients read the server's byte (the others were reset or timed out). Called after
/// the server wrote to every connection it accepted, so a short wait is enough.
fn clients_served(clients: &mut [TcpStream]) -> usize {
    let mut b = [0u8; 1];
    clients
        .iter_mut()
        .map(|c| {
            c.set_read_timeout(Some(Duration::from_millis(500))).is_ok()
                && c.read_exact(&mut b).is_ok()
        })
        .filter(|&ok| ok)
        .count()
}

/// Queues connections on listener 0 (the others are made to look busy), then closes it.
/// Returns (clients served, the pool's migration count).
fn close_a_listener_with_queued_connections(
    ns: &NetNs,
    ip: &str,
    mode: Mode,
) -> Result<(usize, u64)> {
    let mut pool = Pool::new(ip, 3, Policy::LeastLoaded, mode)?;
    for slot in &pool.slots[1..] {
        pool.group.loads().add_inflight(*slot, 1_000_000);
    }
    let mut clients = pool.connect_many(ESTABLISHED)?;
    {
        let _hold = HoldAcks::new(ns, pool.addr.port())?;
        clients.extend(pool.connect_many(HALF_OPEN)?);
        // Not asserted here: the test's own assertions need every client queued on listener 0
        // (the control serves none of them, the migration moves every one), and a build whose
        // program places nothing must fail those, not this setup.
        println!(
            "[{ip}] queued on listener 0 by the program: {} of {}",
            pool.group.selected_total(pool.slots[0])?,
            ESTABLISHED + HALF_OPEN
        );
        // The worker of slot 0 exits.
        drop(pool.listeners.remove(0));
        pool.group.remove(pool.slots[0])?;
    }
    // Half-open handshakes complete on the server's next SYN-ACK retransmission (about 1 s).
    accept_and_answer(&pool.listeners, clients.len(), Duration::from_secs(5))?;
    let served = clients_served(&mut clients);
    Ok((served, pool.group.stats()?.get(Event::MigrateSelected)))
}

/// The README's claim, "0 of 16 queued clients served without it, 16 of 16 with it", with its
/// control in the same test: the select-only program (no migration) on the same scene first.
#[test]
fn a_closing_listener_hands_its_queue_to_the_others() {
    let _machine = integration_tests::apps::shared();
    let total = ESTABLISHED + HALF_OPEN;
    for ip in LOOPBACKS {
        let scene = |mode| {
            let ns = NetNs::new().expect("creating a network namespace (tests must run as root)");
            ns.run(|| close_a_listener_with_queued_connections(&ns, ip, mode))
                .unwrap_or_else(|e| panic!("[{ip}] {e:#}"))
        };
        let (served, migrated) = scene(Mode::SelectOrMigrate);
        println!(
            "[{ip}] select-or-migrate: {served} of {total} clients served, {migrated} migrated"
        );
        assert_eq!(served, total, "[{ip}] only {served} of {total} clients served");
        assert_eq!(
            migrated, total as u64,
            "[{ip}] the program migrated {migrated} of the {total} queued clients"
        );
        let (control, control_migrated) = scene(Mode::Select);
        println!("[{ip}] select-only (the control): {control} of {total} clients served");
        assert_eq!(control_migrated, 0, "[{ip}] the select-only program migrated");
        assert_eq!(
            control, 0,
            "[{ip}] select-only served {control} of {total} queued clients: the scene did not queue them all on the closing listener"
        );
    }
}

#[test]
fn the_group_reports_which_program_runs() {
    let _machine = integration_tests::apps::shared();
    let ns = NetNs::new().expect("creating a network namespace (tests must run as root)");
    ns.run(|| -> Result<()> {
        let auto = Pool::new("127.0.0.1", 1, Policy::LeastLoaded, Mode::Auto)?;
        ensure!(
            auto.group.program() == Program::SelectOrMigrate,
            "Linux 5.14+ should run select-or-migrate"
        );
        let select = Pool::new("127.0.0.1", 1, Policy::LeastLoaded, Mode::Select)?;
        ensure!(select.group.program() == Program::Select);
        Ok(())
    })
    .unwrap();
}
