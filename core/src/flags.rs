//! Each setting is written once, on its clap field (name, flag, variable, default, parser);
//! what else a configuration needs is derived from those definitions here: the command
//! line's defaults ([`defaults`], for `Default`) and the flags that give a child process
//! the same configuration ([`to_args`]). A field's value goes back to text by its serde
//! form (`#[serde(serialize_with = ...)]` beside the field's `value_parser` where the two
//! must agree, e.g. seconds or milliseconds); secrets are `#[serde(skip)]` and travel in
//! the environment instead.

use clap::{Args, Command, FromArgMatches};
use serde::Serialize;
use serde_json::Value;

/// `T` as its command line gives it with no flag and no environment variable.
///
/// Panics when a default does not parse: a bug in the definitions, caught by every test
/// that builds a default configuration.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults")).mut_args(|a| a.env(None));
    let matches = cmd
        .try_get_matches_from(["defaults"])
        .unwrap_or_else(|e| panic!("the command line's defaults do not parse: {e}"));
    T::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("the command line's defaults do not parse: {e}"))
}

/// The flags that give a child process `value`: `--flag value` for every argument that
/// has a value, in the order the command defines them. Fields that serialize to nothing
/// (`None`, skipped secrets) are left out.
///
/// Panics on a field that serializes to a list or a map: settings are scalars.
pub fn to_args<T: Args + Serialize>(value: &T) -> Vec<String> {
    let fields = match serde_json::to_value(value) {
        Ok(Value::Object(fields)) => fields,
        other => panic!("a configuration serializes to an object, not {other:?}"),
    };
    let cmd = T::augment_args(Command::new("args"));
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let (Some(long), Some(field)) = (arg.get_long(), fields.get(arg.get_id().as_str())) else {
            continue;
        };
        let text = match field {
            Value::Null => continue,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => panic!("setting --{long} is not a scalar: {other}"),
        };
        out.extend([format!("--{long}"), text]);
    }
    out
}

/// Serializers for fields whose text form is not their serde default: paired with the
/// field's `value_parser`.
pub mod ser {
    use std::time::Duration;

    use serde::Serializer;

    /// Whole seconds (`value_parser = config::secs`).
    pub fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    /// Whole milliseconds (`value_parser = config::millis`).
    pub fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// With a unit (`value_parser = config::duration`).
    pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::config::format_duration(*d))
    }

    /// Its `Display` form (URLs and the like, parsed back by `FromStr`).
    pub fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// An optional value's `Display` form.
    pub fn display_opt<T: std::fmt::Display, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
}
