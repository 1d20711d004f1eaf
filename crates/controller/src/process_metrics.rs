//! The standard process metrics (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, open file descriptors, ...), read from
//! `/proc` at every scrape, as the Prometheus client libraries of other
//! languages export them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports process times in clock ticks of `USER_HZ`, which is 100
/// on every architecture Kubernetes runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The collector; register it on the root registry so the names carry no
/// prefix.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process.
#[derive(Debug, Default, PartialEq)]
pub struct Reading {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_memory_bytes: i64,
    /// Virtual memory size, in bytes.
    pub virtual_memory_bytes: i64,
    /// Start time since the Unix epoch, in seconds.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: i64,
    /// The soft limit on open file descriptors.
    pub max_fds: i64,
    /// Threads.
    pub threads: i64,
}

impl Reading {
    /// Reads `/proc/self`; what cannot be read stays zero.
    pub fn now() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let mut reading = parse_stat(&read("/proc/self/stat"), boot_time(&read("/proc/stat")));
        let status = read("/proc/self/status");
        reading.resident_memory_bytes = status_kib(&status, "VmRSS:") * 1024;
        reading.virtual_memory_bytes = status_kib(&status, "VmSize:") * 1024;
        reading.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| dir.count() as i64)
            .unwrap_or(0);
        reading.max_fds = max_open_files(&read("/proc/self/limits"));
        reading
    }
}

/// CPU time, thread count and start time from `/proc/self/stat`.
fn parse_stat(stat: &str, boot_time: f64) -> Reading {
    // The command name (field 2) is in parentheses and may hold spaces;
    // the fields after it are plain.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // `fields[0]` is field 3 (state) of proc(5).
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Reading {
        cpu_seconds: (field(14) + field(15)) / TICKS_PER_SECOND,
        threads: field(20) as i64,
        start_time_seconds: boot_time + field(22) / TICKS_PER_SECOND,
        ..Reading::default()
    }
}

fn boot_time(stat: &str) -> f64 {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn status_kib(status: &str, key: &str) -> i64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn max_open_files(limits: &str) -> i64 {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = Reading::now();
        let cpu = ConstCounter::new(reading.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                reading.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                reading.virtual_memory_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                reading.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                reading.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                reading.max_fds as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                reading.threads as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (fleet (forge) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 12345 1000000 500 18446744073709551615";
        let reading = parse_stat(stat, 1_700_000_000.0);
        assert_eq!(reading.cpu_seconds, 3.0);
        assert_eq!(reading.threads, 7);
        assert_eq!(reading.start_time_seconds, 1_700_000_000.0 + 123.45);
    }

    #[test]
    fn limits_and_status_are_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), 1024);
        let status = "Name:\tfleetforge\nVmSize:\t  123456 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), 40960);
        assert_eq!(status_kib(status, "VmSize:"), 123456);
    }

    #[test]
    fn this_process_is_read_for_real() {
        let reading = Reading::now();
        assert!(reading.resident_memory_bytes > 0);
        assert!(reading.open_fds > 0);
        assert!(reading.max_fds > 0);
        assert!(reading.start_time_seconds > 1_600_000_000.0);
    }

    #[test]
    fn the_collector_writes_the_standard_names() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
