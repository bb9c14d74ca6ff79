//! What the run ran on, for the report: CPU, cores, memory, kernel, broker, compiler.

use crate::config::BenchConfig;

pub fn describe(config: &BenchConfig) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}; RabbitMQ {}; {}; \
         broker, stubs, ingress, consumers and load generator all share these cores",
        config
            .broker_version
            .as_deref()
            .unwrap_or("(version unknown)"),
        config
            .rustc_version
            .as_deref()
            .unwrap_or("rustc (version unknown)"),
    )
}
