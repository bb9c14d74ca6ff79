//! The one table of a run, the verdicts on the targets, and `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::latency::{ms, Summary};

/// One figure of the table.
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// The part of the benchmark (1 ceiling ... 5 memory).
    pub part: &'static str,
    pub what: String,
    pub size: String,
    pub setting: String,
    pub result: String,
    pub p50: String,
    pub p99: String,
    /// The figure over the ceiling (or the expected value) it is compared with.
    pub ratio: String,
    /// CPU microseconds per job of each process.
    pub cpu: String,
}

impl Row {
    pub fn new(part: &'static str, what: impl Into<String>) -> Row {
        Row {
            part,
            what: what.into(),
            ..Row::default()
        }
    }
    pub fn size(mut self, s: impl Into<String>) -> Row {
        self.size = s.into();
        self
    }
    pub fn setting(mut self, s: impl Into<String>) -> Row {
        self.setting = s.into();
        self
    }
    pub fn result(mut self, s: impl Into<String>) -> Row {
        self.result = s.into();
        self
    }
    pub fn latency(mut self, s: Option<Summary>) -> Row {
        if let Some(s) = s {
            self.p50 = ms(s.p50);
            self.p99 = ms(s.p99);
        }
        self
    }
    pub fn ratio(mut self, s: impl Into<String>) -> Row {
        self.ratio = s.into();
        self
    }
    pub fn cpu(mut self, s: impl Into<String>) -> Row {
        self.cpu = s.into();
        self
    }
}

/// Whether one target of the issue is met.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    /// `None` when the run could not tell (a scenario failed or was skipped).
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    /// A smoke run: its figures are printed but not judged.
    pub smoke: bool,
    pub rows: Vec<Row>,
    pub verdicts: Vec<Verdict>,
    pub failures: Vec<String>,
    /// Blocks of Markdown under the table.
    pub sections: Vec<String>,
    /// Consumer jobs/s by (processes, prefetch), for the plot.
    pub curve: std::collections::HashMap<(usize, u16), f64>,
    /// Index memory (bytes per job) and ready time (s) by jobs indexed, for the plot.
    pub index_curve: Vec<(usize, f64, f64)>,
}

impl Report {
    pub fn row(&mut self, row: Row) {
        eprintln!(
            "    {} | {} | {} | {} | {} | {} | {} | {}",
            row.what, row.size, row.setting, row.result, row.p50, row.p99, row.ratio, row.cpu
        );
        self.rows.push(row);
    }

    pub fn verdict(
        &mut self,
        target: impl Into<String>,
        measured: impl Into<String>,
        met: Option<bool>,
    ) {
        self.verdicts.push(Verdict {
            target: target.into(),
            measured: measured.into(),
            met,
        });
    }

    /// A block of Markdown printed under the table (a curve, say).
    pub fn section(&mut self, markdown: String) {
        self.sections.push(markdown);
    }

    pub fn fail(&mut self, what: &str, error: &anyhow::Error) {
        let msg = format!("{what}: {error:#}");
        eprintln!("FAILED {msg}");
        self.failures.push(msg);
    }

    /// The table and the verdicts, as Markdown (readable as plain text too).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let header = [
            "part",
            "measurement",
            "size",
            "setting",
            "result",
            "p50",
            "p99",
            "ratio",
            "CPU µs per job",
        ];
        let rows: Vec<[String; 9]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.part.to_owned(),
                    r.what.clone(),
                    r.size.clone(),
                    r.setting.clone(),
                    r.result.clone(),
                    r.p50.clone(),
                    r.p99.clone(),
                    r.ratio.clone(),
                    r.cpu.clone(),
                ]
            })
            .collect();
        table(&mut out, &header, &rows);
        if !self.verdicts.is_empty() {
            out.push('\n');
            let rows: Vec<[String; 3]> = self
                .verdicts
                .iter()
                .map(|v| {
                    let met = match v.met {
                        _ if self.smoke => "not judged (smoke)",
                        Some(true) => "met",
                        Some(false) => "NOT met",
                        None => "unknown",
                    };
                    [v.target.clone(), v.measured.clone(), met.to_owned()]
                })
                .collect();
            table(&mut out, &["target", "measured", "verdict"], &rows);
        }
        for section in &self.sections {
            out.push('\n');
            out.push_str(section);
        }
        if !self.failures.is_empty() {
            out.push_str("\nFailed scenarios:\n");
            for f in &self.failures {
                let _ = writeln!(out, "- {f}");
            }
        }
        out
    }
}

pub fn table<const N: usize>(out: &mut String, header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        out.push('|');
        for (c, w) in cells.iter().zip(widths) {
            let pad = w - c.chars().count();
            let _ = write!(out, " {c}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(out, header);
    out.push('|');
    for w in widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for r in rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(out, &cells);
    }
}

/// `1234.5` as `1,235`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `x / of`, as `0.62 × <what>`; empty when there is nothing to compare with.
pub fn ratio(x: f64, of: Option<f64>, what: &str) -> String {
    match of {
        Some(of) if of > 0.0 => format!("{:.2} × {what}", x / of),
        _ => String::new(),
    }
}

const BEGIN: &str =
    "<!-- bench:begin (generated by imagejobs-bench; edit outside these markers) -->";
const END: &str = "<!-- bench:end -->";

/// Puts `section` between the bench markers of `path`, keeping what is around them;
/// creates the file, or appends the markers, when they are missing.
pub fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let new_file = "# Benchmarks\n\nWritten by `make bench` (scripts/bench.sh, bench/).\n\n";
    write_between(path, BEGIN, END, new_file, section)
}

/// Replaces what stands between the lines `begin` and `end` of `path` with `section`,
/// or appends the markers and the section; a missing file starts as `new_file`.
pub fn write_between(
    path: &Path,
    begin: &str,
    end: &str,
    new_file: &str,
    section: &str,
) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_file.to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let block = format!("{begin}\n{section}\n{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(thousands(1234.5), "1,235");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(ratio(50.0, Some(100.0), "ceiling"), "0.50 × ceiling");
        assert_eq!(ratio(50.0, None, "ceiling"), "");
    }

    #[test]
    fn section_is_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("B.md");
        write_section(&path, "one").expect("write");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).expect("read") + "\nafter\n",
        )
        .expect("append");
        write_section(&path, "two").expect("rewrite");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("two") && !text.contains("one") && text.contains("after"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
