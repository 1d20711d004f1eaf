//! Measures what one test control plane costs: start-up time and resident
//! memory per component, for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p fleetforge-testenv --example footprint
//! ```

use std::time::{Duration, Instant};

use fleetforge_testenv::ControlPlane;

#[tokio::main]
async fn main() -> Result<(), fleetforge_testenv::Error> {
    for workloads in [false, true] {
        let started = Instant::now();
        let plane = ControlPlane::builder().workloads(workloads).start().await?;
        let ready = started.elapsed();
        // Let the components settle (caches filled, first leases written).
        tokio::time::sleep(Duration::from_secs(10)).await;
        println!(
            "control plane (workloads: {workloads}): ready in {:.1}s",
            ready.as_secs_f64()
        );
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let (mut total_rss, mut total_pss) = (0, 0);
        println!("  {:<24} {:>9} {:>9}", "component", "RSS MiB", "PSS MiB");
        for (name, pid) in plane.processes() {
            let rss = fleetforge_testenv::rss_bytes(pid).unwrap_or(0);
            let pss = fleetforge_testenv::pss_bytes(pid).unwrap_or(0);
            total_rss += rss;
            total_pss += pss;
            println!("  {name:<24} {:>9.1} {:>9.1}", mib(rss), mib(pss));
        }
        println!(
            "  {:<24} {:>9.1} {:>9.1}",
            "total",
            mib(total_rss),
            mib(total_pss)
        );
    }
    Ok(())
}
