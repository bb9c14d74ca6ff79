//! W3C trace context (`traceparent`, `tracestate`): one trace per job, from the HTTP
//! submit through the job message's headers to the blob and worker calls (docs/amqp.md).
//!
//! The format is four dash-separated lowercase hex fields, `00-{trace 32}-{parent 16}-{flags 2}`.
//! An all-zero trace or parent id is invalid; a future version with extra fields is read
//! by its first four. What is invalid is replaced by a new trace, as the spec says.

use std::fmt;

use rand::RngCore;

/// The `traceparent` of one span: its trace, its own id, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

/// What travels with a job: the parent and the vendors' `tracestate`, passed on as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: TraceParent,
    pub state: Option<String>,
}

impl TraceParent {
    /// A new trace, sampled.
    pub fn new_trace() -> Self {
        let mut rng = rand::rng();
        TraceParent {
            trace_id: nonzero128(&mut rng),
            span_id: nonzero64(&mut rng),
            flags: 1,
        }
    }

    /// A span in the same trace, its parent being this one.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: nonzero64(&mut rand::rng()),
            ..*self
        }
    }

    /// Parses a `traceparent` header value; `None` when it is not valid.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" || !lower_hex(trace, 32) {
            return None;
        }
        if !lower_hex(span, 16) || !lower_hex(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let parent = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parent.trace_id != 0 && parent.span_id != 0).then_some(parent)
    }

    /// The trace id as its 32 hex digits (what logs and the stubs show).
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl TraceContext {
    /// Continues the caller's trace (a child of its `traceparent`), or starts one when the
    /// header is absent or invalid; `tracestate` is kept only with a valid parent.
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(TraceParent::parse) {
            Some(parent) => TraceContext {
                parent: parent.child(),
                state: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= 512)
                    .map(str::to_owned),
            },
            None => TraceContext {
                parent: TraceParent::new_trace(),
                state: None,
            },
        }
    }

    /// A child span for one outgoing call, with the same state.
    pub fn child(&self) -> Self {
        TraceContext {
            parent: self.parent.child(),
            state: self.state.clone(),
        }
    }
}

fn nonzero128(rng: &mut impl RngCore) -> u128 {
    loop {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        let v = u128::from_be_bytes(b);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero64(rng: &mut impl RngCore) -> u64 {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_specs_example_and_writes_it_back() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(s).unwrap();
        assert_eq!(p.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.to_string(), s);
        let c = p.child();
        assert_eq!((c.trace_id, c.flags), (p.trace_id, p.flags));
        assert_ne!(c.span_id, p.span_id);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn an_invalid_parent_starts_a_new_trace_without_its_state() {
        let t = TraceContext::continue_or_start(Some("junk"), Some("k=v"));
        assert_eq!(t.state, None);
        assert_ne!(t.parent.trace_id, 0);
        let p = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::continue_or_start(Some(p), Some("k=v"));
        assert_eq!(t.parent.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.state.as_deref(), Some("k=v"));
    }
}
