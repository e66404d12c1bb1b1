//! A controller that dies leaves the service balanced, and the next one adopts the pinned state.
use anyhow::{ensure, Result};
use balancer_common::Policy;
use balancer_user::{Group, GroupOptions, Mode};
use integration_tests::{apps::PinDir, NetNs, Pool, LOOPBACKS};

fn options(pin: &PinDir, policy: Policy) -> GroupOptions {
    GroupOptions {
        policy,
        mode: Mode::Auto,
        pin_dir: Some(pin.path().to_path_buf()),
        ..Default::default()
    }
}

#[test]
fn balancing_survives_the_controller_and_the_next_one_adopts_it() {
    let _machine = integration_tests::apps::shared();
    for (n, ip) in LOOPBACKS.iter().enumerate() {
        let pin = PinDir::new(&n.to_string());
        let ns = NetNs::new().expect("creating a network namespace (tests must run as root)");
        ns.run(|| -> Result<()> {
            let pool = Pool::with_options(ip, 2, options(&pin, Policy::LeastLoaded))?;
            ensure!(!pool.group.adopted());
            let loads = pool.group.loads().clone();
            loads.add_inflight(pool.slots[1], 100);
            let _a = pool.connect_many(3)?;
            ensure!(pool.drain()? == vec![3, 0]);

            // The controller dies; the workers' sockets and the shared loads live on.
            let Pool { listeners, slots, group, addr } = pool;
            drop(group);
            loads.add_inflight(slots[0], 1000);
            let _b: Vec<_> =
                (0..3).map(|_| std::net::TcpStream::connect(addr)).collect::<Result<_, _>>()?;
            let survivors = Pool {
                listeners,
                slots,
                addr,
                group: Group::new(options(&pin, Policy::PowerOfTwo))?,
            };
            ensure!(
                survivors.drain()? == vec![0, 3],
                "balancing stopped while the controller was away"
            );

            // The new controller adopted everything, and applied its own policy.
            let g = &survivors.group;
            ensure!(g.adopted(), "pinned group not adopted");
            ensure!(g.occupied_slots().collect::<Vec<_>>() == survivors.slots);
            ensure!(g.policy() == Policy::PowerOfTwo);
            ensure!(
                g.selected_total(survivors.slots[0])? == 3
                    && g.selected_total(survivors.slots[1])? == 3
            );
            let views = g.slots()?;
            ensure!(views.iter().all(|v| v.pid == std::process::id()), "owners lost: {views:?}");
            g.unpin()?;
            ensure!(!pin.path().exists(), "unpin left {}", pin.path().display());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("[{ip}] {e:#}"));
    }
}
