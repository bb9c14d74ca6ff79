//! A reader of server-sent events (the ingress's `/events` routes) over a reqwest
//! response: the CLI's `watch` and `submit --wait` and the tests read with it.
//!
//! It follows the parts of the WHATWG event-stream format the ingress writes: `event:`,
//! `id:`, `data:` (joined by newlines), comments (`:`), blank lines ending an event. A
//! line longer than [`MAX_LINE`] is an error rather than a growing buffer.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Longest line accepted.
pub const MAX_LINE: usize = 1024 * 1024;

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the stream names none.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("the event stream failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("an event stream line is over {MAX_LINE} bytes")]
    TooLong,
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub struct SseStream {
    body: Body,
    buf: Vec<u8>,
    pending: SseEvent,
    has_data: bool,
    /// Comment lines read (the heartbeats).
    pub comments: u64,
}

impl SseStream {
    pub fn new(resp: reqwest::Response) -> Self {
        SseStream {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            pending: SseEvent::default(),
            has_data: false,
            comments: 0,
        }
    }

    /// The next event; `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<Result<SseEvent, SseError>> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]);
                if let Some(event) = self.line(line.trim_end_matches('\r')) {
                    return Some(Ok(event));
                }
            }
            if self.buf.len() > MAX_LINE {
                return Some(Err(SseError::TooLong));
            }
            match self.body.next().await? {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Takes one line; returns the event a blank line completes.
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let mut done = std::mem::take(&mut self.pending);
            let had = std::mem::take(&mut self.has_data);
            if done.event.is_empty() {
                done.event = "message".into();
            }
            return had.then_some(done);
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.pending.event = value.to_owned(),
            "id" => self.pending.id = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<SseEvent>, u64) {
        let mut s = SseStream {
            body: Box::pin(futures::stream::empty()),
            buf: Vec::new(),
            pending: SseEvent::default(),
            has_data: false,
            comments: 0,
        };
        let events = text
            .split_inclusive('\n')
            .filter_map(|l| s.line(l.trim_end_matches('\n').trim_end_matches('\r')));
        let events: Vec<SseEvent> = events.collect();
        (events, s.comments)
    }

    #[test]
    fn events_ids_data_lines_and_comments() {
        let (events, comments) =
            parse(": heartbeat\nevent: status\nid: 9\ndata: {\"a\":\ndata: 1}\n\ndata:x\r\n\r\n");
        assert_eq!(comments, 1);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "status".into(),
                    id: Some("9".into()),
                    data: "{\"a\":\n1}".into()
                },
                SseEvent {
                    event: "message".into(),
                    id: None,
                    data: "x".into()
                }
            ]
        );
    }
}
