//! A strict parser of the Prometheus/OpenMetrics text exposition format, for tests: every
//! sample must belong to a family announced with `# HELP` and `# TYPE` before it, label
//! sets must be well formed, values must be numbers, and the text must end with `# EOF`.

use std::collections::{BTreeMap, HashMap};

/// One sample: its full name (with `_total`, `_bucket`... suffixes), labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name to its TYPE.
    pub types: HashMap<String, String>,
    pub helps: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include all of `labels`, summed over
    /// the matching samples; `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Exposition::value`], 0 when absent (a counter not yet incremented).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

const SUFFIXES: [&str; 6] = ["_total", "_bucket", "_count", "_sum", "_created", "_info"];

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `{a="x",b="y"}` (the braces already removed): with the escapes `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("no '=' in labels {s:?}"))?;
        let key = &rest[..eq];
        if !valid_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let after = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key} is not quoted"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in label {key}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label {key}")),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// Parses `text`, or says what is wrong with it.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = parts.next().unwrap_or("");
            if !valid_name(name) {
                return Err(at("bad family name".into()));
            }
            match kind {
                "HELP" => {
                    out.helps.insert(name.to_owned(), rest.to_owned());
                }
                "TYPE" => {
                    const TYPES: [&str; 8] = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "gaugehistogram",
                        "unknown",
                    ];
                    if !TYPES.contains(&rest) {
                        return Err(at(format!("unknown type {rest:?}")));
                    }
                    out.types.insert(name.to_owned(), rest.to_owned());
                }
                "UNIT" => {}
                _ => return Err(at("unknown # line".into())),
            }
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        let (head, value) = match line.rfind('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => line.split_once(' ').ok_or_else(|| at("no value".into()))?,
        };
        let value = value.split(' ').next().unwrap_or("");
        let value = parse_value(value).ok_or_else(|| at(format!("bad value {value:?}")))?;
        let (name, labels) = match head.find('{') {
            Some(open) => {
                let inner = head[open + 1..]
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                (&head[..open], parse_labels(inner).map_err(at)?)
            }
            None => (head, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(at("bad sample name".into()));
        }
        let family = SUFFIXES
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| out.types.contains_key(*f))
            .unwrap_or(name);
        if !out.types.contains_key(family) || !out.helps.contains_key(family) {
            return Err(at(format!(
                "family {family} has no # TYPE and # HELP before it"
            )));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_prometheus_client_writes_and_refuses_the_rest() {
        let text = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{code=\"200\",route=\"/x\"} 3\n# HELP b Seconds.\n# TYPE b histogram\n# UNIT b seconds\nb_bucket{le=\"+Inf\"} 1\nb_sum 0.5\nb_count 1\n# EOF\n";
        let e = parse(text).unwrap();
        assert_eq!(e.value("a_requests_total", &[("code", "200")]), Some(3.0));
        assert_eq!(e.value("b_count", &[]), Some(1.0));
        assert_eq!(e.count("a_requests_total", &[("code", "500")]), 0.0);
        for bad in [
            "x_total 1\n# EOF\n",
            "# TYPE x counter\nx_total 1\n# EOF\n",
            "# HELP x X\n# TYPE x counter\nx_total{a=b} 1\n# EOF\n",
            "# HELP x X\n# TYPE x counter\nx_total one\n# EOF\n",
            "# HELP x X\n# TYPE x counter\nx_total 1\n",
            "# HELP x X\n# TYPE x nonsense\n# EOF\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
