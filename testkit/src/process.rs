//! Child processes (ingress and consumers from the built binaries): start with their
//! output in a log file, optionally under `perf record`, memory from `/proc/PID/status`,
//! signals, and a clean stop. Used by the tests that kill processes for real and by the
//! benchmarks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

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
        env: &[(&str, String)],
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
                "starting {} (build it with `cargo build --workspace --bins`)",
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

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT` ...) to the process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        // `kill` the command: the workspace forbids `unsafe`, so no libc::kill here.
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.pid);
        Ok(())
    }

    /// Waits for the process to exit, up to `deadline`; its exit code.
    pub async fn wait(&mut self, deadline: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .with_context(|| format!("{} still runs after {deadline:?}", self.name))??;
        Ok(status.code())
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
        let _ = self.signal("TERM").await;
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

/// The directory of the workspace's built binaries: that of the running executable, or
/// its parent for a test binary (which lives in `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let dir = exe
        .parent()
        .expect("the executable's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// The path of workspace binary `name` in [`bin_dir`], checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}
