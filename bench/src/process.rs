//! Child processes of the run (ingress and consumers, from the release binaries): start,
//! readiness, memory from `/proc/PID/status`, and a clean stop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most it was ever resident.
    pub hwm: u64,
}

/// A running child process; killed when dropped without [`Service::stop`].
pub struct Service {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// `perf record` attached to the process, when profiling.
    perf: Option<Child>,
}

impl Service {
    /// Starts `program` with `args` and `env`, its stdout and stderr going to
    /// `<log_dir>/<name>.log`.
    /// With `perf`, a `perf record` samples it into `<log_dir>/<name>.perf.data`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
        perf: bool,
    ) -> anyhow::Result<Service> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release --workspace --bins`)",
                program.display()
            )
        })?;
        let pid = child.id().context("the child has no pid")?;
        let perf = if perf {
            let data = log_dir.join(format!("{name}.perf.data"));
            let perf = Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-F",
                    "1999",
                    "--call-graph",
                    "dwarf,16384",
                    "-p",
                ])
                .arg(pid.to_string())
                .arg("-o")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?;
            Some(perf)
        } else {
            None
        };
        Ok(Service {
            name: name.to_owned(),
            child,
            pid,
            log,
            perf,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid)
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let stopped = self.terminate(grace).await;
        if let Some(mut perf) = self.perf.take() {
            // perf record ends by itself when the process it follows has exited.
            if tokio::time::timeout(Duration::from_secs(60), perf.wait())
                .await
                .is_err()
            {
                let _ = perf.kill().await;
            }
        }
        stopped
    }

    async fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // `kill` the command: the workspace forbids `unsafe`, so no libc::kill here.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                tracing::warn!(name = %self.name, "did not stop on SIGTERM; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:").context("no VmRSS")?,
        hwm: field("VmHWM:").context("no VmHWM")?,
    })
}

/// A free TCP port on 127.0.0.1 for a child to listen on (taken from the OS and released
/// again; nothing else on this machine is expected to grab it in between).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
