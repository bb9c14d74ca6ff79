//! Result locations, kept without a string per job.
//!
//! A blob service names results after the job, so nearly every location is
//! `{prefix}{job id}{suffix}` with one of a handful of prefixes and suffixes
//! (`http://blob/api/v1/blob/` and `.thumb`, say). The index keeps each such
//! (prefix, suffix) pattern once and a two-byte number per job; a location of any other
//! shape is kept as a string.

use std::collections::HashMap;
use std::sync::RwLock;

use imagejobs_core::ids::JobId;

/// Patterns kept at most: a blob service has a handful; each is checked for every
/// location stored, so beyond this many the rest are kept as text.
const MAX_PATTERNS: usize = 64;

/// How one job's location is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Pattern number (1-based) of `{prefix}{job id}{suffix}`.
    Pattern(u16),
    /// Any other location, whole.
    Text(Box<str>),
}

/// A location split around the job id.
type Parts = (Box<str>, Box<str>);

/// The patterns seen so far, both ways; at most [`MAX_PATTERNS`].
#[derive(Default)]
pub struct Patterns {
    by_parts: RwLock<(HashMap<Parts, u16>, Vec<Parts>)>,
}

impl Patterns {
    pub fn store(&self, id: JobId, location: &str) -> Stored {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id_text: &str = id.0.hyphenated().encode_lower(&mut buf);
        // The usual case: a pattern seen before. Checking each (a handful) costs less than
        // searching the location for the id, and allocates nothing.
        {
            let map = self.by_parts.read().unwrap_or_else(|p| p.into_inner());
            for (n, (prefix, suffix)) in map.1.iter().enumerate() {
                if location.len() == prefix.len() + id_text.len() + suffix.len()
                    && location.starts_with(&**prefix)
                    && location.ends_with(&**suffix)
                    && &location[prefix.len()..prefix.len() + id_text.len()] == id_text
                {
                    return Stored::Pattern(u16::try_from(n + 1).unwrap_or(u16::MAX));
                }
            }
        }
        let Some(at) = location.find(id_text) else {
            return Stored::Text(location.into());
        };
        let (prefix, suffix) = (&location[..at], &location[at + id_text.len()..]);
        let mut map = self.by_parts.write().unwrap_or_else(|p| p.into_inner());
        let key: Parts = (prefix.into(), suffix.into());
        if let Some(&n) = map.0.get(&key) {
            return Stored::Pattern(n);
        }
        if map.1.len() >= MAX_PATTERNS {
            return Stored::Text(location.into());
        }
        let Ok(n) = u16::try_from(map.1.len() + 1) else {
            return Stored::Text(location.into());
        };
        map.1.push(key.clone());
        map.0.insert(key, n);
        Stored::Pattern(n)
    }

    /// Every pattern, by number (the first is number 1).
    pub fn all(&self) -> Vec<Parts> {
        let map = self.by_parts.read().unwrap_or_else(|p| p.into_inner());
        map.1.clone()
    }

    /// Puts back the patterns of a snapshot, numbered as they were; into an empty set only
    /// (a set that has some keeps them), and at most [`MAX_PATTERNS`].
    pub fn restore(&self, parts: Vec<Parts>) {
        let mut map = self.by_parts.write().unwrap_or_else(|p| p.into_inner());
        if !map.1.is_empty() {
            return;
        }
        for key in parts.into_iter().take(MAX_PATTERNS) {
            let n = u16::try_from(map.1.len() + 1).unwrap_or(u16::MAX);
            map.0.entry(key.clone()).or_insert(n);
            map.1.push(key);
        }
    }

    pub fn load(&self, id: JobId, n: u16) -> Option<String> {
        let map = self.by_parts.read().unwrap_or_else(|p| p.into_inner());
        let (prefix, suffix) = map.1.get(usize::from(n).checked_sub(1)?)?;
        Some(format!("{prefix}{id}{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_shapes_become_numbers() {
        let p = Patterns::default();
        let (a, b) = (JobId::new(), JobId::new());
        let sa = p.store(a, &format!("http://blob/api/v1/blob/{a}.thumb"));
        let sb = p.store(b, &format!("http://blob/api/v1/blob/{b}.thumb"));
        assert_eq!(sa, sb);
        let Stored::Pattern(n) = sa else {
            panic!("pattern expected")
        };
        assert_eq!(
            p.load(a, n).unwrap(),
            format!("http://blob/api/v1/blob/{a}.thumb")
        );
        assert_eq!(
            p.store(a, "s3://bucket/other"),
            Stored::Text("s3://bucket/other".into())
        );
        assert_eq!(p.load(a, 0), None);
    }
}
