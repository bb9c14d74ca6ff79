//! CPU time of the processes of a run, from `/proc/PID/stat`, to show where each job's
//! CPU goes (broker, ingress, consumers, this process: stubs and load generator).

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux/x86).
const TICKS_PER_SEC: f64 = 100.0;

/// `utime + stime` of a process, in seconds; `None` when it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line: utime, stime; `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// CPU seconds the whole machine spent busy (every core, every process) since boot, from
/// the first line of `/proc/stat`: all but idle and iowait; `None` when it cannot be read.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let busy = ticks.iter().sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy / TICKS_PER_SEC)
}

/// Bytes a process wrote since it started, from `/proc/PID/io`: `wchar` (every `write`,
/// sockets included) and `write_bytes` (what it sent towards storage: pages it dirtied);
/// `None` when it cannot be read (another user's process, no such process).
pub fn io_written(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("wchar")?, field("write_bytes")?))
}

/// CPU seconds of a set of processes since `start`.
pub struct CpuMeter {
    procs: Vec<(&'static str, Vec<u32>, f64)>,
}

impl CpuMeter {
    /// Starts measuring; each entry is a label and the processes counted under it.
    pub fn start(groups: Vec<(&'static str, Vec<u32>)>) -> CpuMeter {
        let procs = groups
            .into_iter()
            .filter(|(_, pids)| !pids.is_empty())
            .map(|(label, pids)| {
                let now = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
                (label, pids, now)
            })
            .collect();
        CpuMeter { procs }
    }

    /// CPU seconds of each group since the start.
    pub fn spent(&self) -> CpuSpent {
        CpuSpent(
            self.procs
                .iter()
                .map(|(label, pids, start)| {
                    let now: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
                    (*label, (now - start).max(0.0))
                })
                .collect(),
        )
    }

    /// CPU per job of each group since the start, as `broker 310 · ingress 420` (µs).
    pub fn per_job(&self, jobs: usize) -> String {
        self.spent().per_job(jobs)
    }
}

/// CPU seconds by label.
#[derive(Clone, Debug, Default)]
pub struct CpuSpent(Vec<(&'static str, f64)>);

impl CpuSpent {
    /// Adds `other`'s seconds to the same labels.
    pub fn add(&mut self, other: &CpuSpent) {
        for (label, secs) in &other.0 {
            match self.0.iter_mut().find(|(l, _)| l == label) {
                Some((_, s)) => *s += secs,
                None => self.0.push((label, *secs)),
            }
        }
    }

    /// CPU seconds of every group together.
    pub fn total_seconds(&self) -> f64 {
        self.0.iter().map(|(_, secs)| secs).sum()
    }

    /// CPU µs per job of the group `label`, when it was measured.
    pub fn micros_of(&self, label: &str, jobs: usize) -> Option<f64> {
        let (_, secs) = self.0.iter().find(|(l, _)| *l == label)?;
        Some(secs * 1e6 / jobs.max(1) as f64)
    }

    pub fn per_job(&self, jobs: usize) -> String {
        let jobs = jobs.max(1) as f64;
        self.0
            .iter()
            .map(|(label, secs)| format!("{label} {:.0}", secs * 1e6 / jobs))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_cpu_time() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(machine_busy_seconds().is_some());
        assert!(io_written(std::process::id()).is_some());
        assert!(io_written(u32::MAX).is_none());
    }
}
