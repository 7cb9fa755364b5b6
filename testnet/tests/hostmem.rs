//! `hostmem` against the running kernel: free page reporting paused and
//! restored through the real parameter (where the machine has one and the
//! test runs as root; elsewhere it says why it did nothing).

use std::path::Path;

use edgeswarm_testnet::hostmem::{page_orders, QuietMemory, PAGE_REPORTING_ORDER, REPORTED_KIB};

fn order() -> Option<u32> {
    std::fs::read_to_string(PAGE_REPORTING_ORDER)
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn the_kernels_page_reporting_is_paused_and_restored() {
    let Some(before) = order() else {
        println!("skipped: no {PAGE_REPORTING_ORDER} on this machine");
        return;
    };
    let quiet = QuietMemory::pause(
        Path::new(PAGE_REPORTING_ORDER),
        Path::new(REPORTED_KIB),
        page_orders(),
        64 << 20,
    );
    let during = order();
    let said = quiet.describe(Path::new(REPORTED_KIB));
    drop(quiet);
    assert_eq!(order(), Some(before), "restored after: {said}");
    if said.contains("not writable") {
        println!("skipped: {said}");
        return;
    }
    if said.contains("already off") {
        assert_eq!(during, Some(before), "{said}");
    } else {
        assert!(during.is_some_and(|o| o > before), "{said}");
        assert!(said.contains(&format!("order {before}")), "{said}");
    }
    assert!(said.contains("0.1 GB of memory touched"), "{said}");
    println!("{said}");
}
