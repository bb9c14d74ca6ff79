//! What becomes of a delivery, decided without a broker (docs/consumer.md).
//!
//! [`settle`] is a pure function of the job, how its attempt ended ([`Outcome`]) and the
//! retry delays: it says which copy of the message to publish where, which status event
//! to report, and whether to ack or to return the delivery. `delivery` carries the
//! [`Settlement`] out; one unit test per row of docs/consumer.md pins the rules.
//!
//! | outcome | copy | event | then |
//! | --- | --- | --- | --- |
//! | success | none | SUCCESS with the result's location | ack |
//! | the worker's FAILED | none | FAILED with its error | ack |
//! | transient, a delay left | next `{p}.jobs.retry.{N}s`, `x-attempt` + 1 | RETRYING with `next_attempt_at` | ack |
//! | transient, last attempt | `{p}.jobs.dlx`, `x-error` | FAILED | ack |
//! | permanent (4xx) | `{p}.jobs.dlx`, `x-error` | FAILED | ack |
//! | invalid message | `{p}.jobs.dlx`, `x-error` | FAILED when the job is known | ack |
//! | last delivery before the limit | `{p}.jobs.dlx`, `x-error` | FAILED | ack |
//! | cancelled (before or while it ran) | none | CANCELLED | ack |
//! | abandoned (drain timeout) | none | none | requeue |
//!
//! Every "ack" is conditional: the delivery is acked only after the copy and the event are
//! confirmed, and returned to the queue when they are not.

use std::time::{Duration, SystemTime};

use imagejobs_core::message::JobMeta;
use imagejobs_core::status::{rfc3339, Status, StatusEvent};

/// How the attempt at a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The worker finished; its result lives at `payload_location`.
    Success { payload_location: String },
    /// The worker ran the job and reports FAILED: a result, not an error.
    WorkerFailed(String),
    /// Services were unreachable or overloaded past the in-process retries.
    Transient(String),
    /// A service refused the job; retrying will not help.
    Permanent(String),
    /// The message is not a valid job.
    Invalid(String),
    /// The broker delivered it this many times without an outcome (consumers crashed or
    /// lost the broker while holding it); this is its last delivery before the limit.
    DeliveryLimit { deliveries: u32 },
    /// The job's tenant cancelled it (read from the control stream): it is not started,
    /// or no longer followed.
    Cancelled,
    /// The consumer gave up waiting for the attempt (drain timeout at shutdown).
    Abandoned,
}

/// Where a copy of the message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The delay queue of this delay, for the next attempt.
    Retry(Duration),
    /// The dead-letter exchange (and so the dead queue).
    DeadLetter,
}

/// The header a copy gets on top of the original's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// `x-attempt`: the attempt the copy is.
    Attempt(u32),
    /// `x-error`: why the job was dead-lettered.
    Error(String),
}

/// A copy of the delivered message to publish (with a confirm) before the ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub route: Route,
    pub mark: Mark,
}

/// What to do with the delivery once the copy and the event are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Ack,
    /// Return it to the queue for another consumer (nack with requeue).
    Requeue,
}

/// Everything that settles one delivery, in the order it is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub copy: Option<Copy>,
    pub event: Option<StatusEvent>,
    pub then: Then,
}

/// Decides the settlement of a delivery of `job` (unknown only for an invalid message)
/// whose attempt ended with `outcome`; `now` stamps the event.
pub fn settle(
    job: Option<&JobMeta>,
    outcome: Outcome,
    retry_delays: &[Duration],
    now: SystemTime,
) -> Settlement {
    let event = |status: Status| job.map(|j| StatusEvent::at(j, status, now));
    let dead = |why: String| Settlement {
        event: event(Status::Failed).map(|e| e.with_error(why.clone())),
        copy: Some(Copy {
            route: Route::DeadLetter,
            mark: Mark::Error(why),
        }),
        then: Then::Ack,
    };
    match outcome {
        Outcome::Success { payload_location } => Settlement {
            copy: None,
            event: event(Status::Success).map(|mut e| {
                e.payload_location = Some(payload_location);
                e
            }),
            then: Then::Ack,
        },
        Outcome::WorkerFailed(error) => Settlement {
            copy: None,
            event: event(Status::Failed).map(|e| e.with_error(error)),
            then: Then::Ack,
        },
        Outcome::Transient(error) => {
            let attempt = job.map_or(1, |j| j.attempt.max(1));
            match retry_delays.get(attempt as usize - 1).copied() {
                Some(delay) => Settlement {
                    copy: Some(Copy {
                        route: Route::Retry(delay),
                        mark: Mark::Attempt(attempt + 1),
                    }),
                    event: event(Status::Retrying).map(|mut e| {
                        e.next_attempt_at = Some(rfc3339(now + delay));
                        e.with_error(error)
                    }),
                    then: Then::Ack,
                },
                None => dead(format!("gave up after {attempt} attempts: {error}")),
            }
        }
        Outcome::Permanent(error) | Outcome::Invalid(error) => dead(error),
        Outcome::DeliveryLimit { deliveries } => dead(format!(
            "delivered {deliveries} times without an outcome (consumers crashed or lost the broker while holding it)"
        )),
        Outcome::Cancelled => Settlement {
            copy: None,
            event: event(Status::Cancelled),
            then: Then::Ack,
        },
        Outcome::Abandoned => Settlement {
            copy: None,
            event: None,
            then: Then::Requeue,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagejobs_core::ids::{ClientId, JobId, TenantId};

    const DELAYS: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(30)];

    fn job(attempt: u32) -> JobMeta {
        JobMeta {
            id: JobId::new(),
            tenant_id: TenantId(3),
            client_id: ClientId(4),
            content_type: Some("image/png".into()),
            md5: None,
            attempt,
            payload_location: None,
            payload_size: Some(10),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn status(s: &Settlement) -> Option<&str> {
        s.event.as_ref().map(|e| e.status.as_str())
    }

    #[test]
    fn success_reports_the_result_and_acks() {
        let j = job(1);
        let s = settle(
            Some(&j),
            Outcome::Success {
                payload_location: "http://blob/t".into(),
            },
            &DELAYS,
            now(),
        );
        assert_eq!(s.copy, None);
        assert_eq!(status(&s), Some("SUCCESS"));
        let ev = s.event.as_ref().unwrap();
        assert_eq!(ev.payload_location.as_deref(), Some("http://blob/t"));
        assert_eq!((ev.job_id, ev.attempt), (j.id, 1));
        assert_eq!(s.then, Then::Ack);
    }

    #[test]
    fn the_workers_failed_is_a_result_not_a_dead_letter() {
        let s = settle(
            Some(&job(1)),
            Outcome::WorkerFailed("bad pixels".into()),
            &DELAYS,
            now(),
        );
        assert_eq!(s.copy, None);
        assert_eq!(status(&s), Some("FAILED"));
        assert_eq!(s.event.unwrap().error.as_deref(), Some("bad pixels"));
        assert_eq!(s.then, Then::Ack);
    }

    #[test]
    fn transient_with_a_delay_left_goes_to_the_next_delay_queue() {
        let s = settle(
            Some(&job(2)),
            Outcome::Transient("503".into()),
            &DELAYS,
            now(),
        );
        assert_eq!(
            s.copy,
            Some(Copy {
                route: Route::Retry(Duration::from_secs(30)),
                mark: Mark::Attempt(3)
            })
        );
        assert_eq!(status(&s), Some("RETRYING"));
        let ev = s.event.unwrap();
        assert_eq!(ev.error.as_deref(), Some("503"));
        assert_eq!(
            ev.next_attempt_at,
            Some(rfc3339(now() + Duration::from_secs(30)))
        );
        assert_eq!(s.then, Then::Ack);
    }

    #[test]
    fn transient_on_the_last_attempt_is_dead_lettered() {
        let s = settle(
            Some(&job(3)),
            Outcome::Transient("503".into()),
            &DELAYS,
            now(),
        );
        let why = "gave up after 3 attempts: 503".to_owned();
        assert_eq!(
            s.copy,
            Some(Copy {
                route: Route::DeadLetter,
                mark: Mark::Error(why.clone())
            })
        );
        assert_eq!(status(&s), Some("FAILED"));
        assert_eq!(s.event.unwrap().error, Some(why));
        assert_eq!(s.then, Then::Ack);
        // No delays at all: the first transient failure is the last.
        let s = settle(Some(&job(1)), Outcome::Transient("x".into()), &[], now());
        assert_eq!(s.copy.unwrap().route, Route::DeadLetter);
    }

    #[test]
    fn permanent_is_dead_lettered_with_its_reason() {
        let s = settle(
            Some(&job(1)),
            Outcome::Permanent("worker submit: HTTP 422".into()),
            &DELAYS,
            now(),
        );
        assert_eq!(
            s.copy,
            Some(Copy {
                route: Route::DeadLetter,
                mark: Mark::Error("worker submit: HTTP 422".into())
            })
        );
        assert_eq!(status(&s), Some("FAILED"));
        assert_eq!(s.then, Then::Ack);
    }

    #[test]
    fn invalid_is_dead_lettered_and_reported_when_the_job_is_known() {
        let known = settle(
            Some(&job(1)),
            Outcome::Invalid("bad md5".into()),
            &DELAYS,
            now(),
        );
        assert_eq!(known.copy.as_ref().unwrap().route, Route::DeadLetter);
        assert_eq!(status(&known), Some("FAILED"));
        let unknown = settle(
            None,
            Outcome::Invalid("no message_id".into()),
            &DELAYS,
            now(),
        );
        assert_eq!(
            unknown.copy,
            Some(Copy {
                route: Route::DeadLetter,
                mark: Mark::Error("no message_id".into())
            })
        );
        assert_eq!(unknown.event, None, "no job to report on");
        assert_eq!(unknown.then, Then::Ack);
    }

    #[test]
    fn the_last_delivery_before_the_limit_is_dead_lettered() {
        let s = settle(
            Some(&job(1)),
            Outcome::DeliveryLimit { deliveries: 10 },
            &DELAYS,
            now(),
        );
        let copy = s.copy.clone().unwrap();
        assert_eq!(copy.route, Route::DeadLetter);
        assert!(matches!(copy.mark, Mark::Error(ref e) if e.contains("delivered 10 times")));
        assert_eq!(status(&s), Some("FAILED"));
        assert_eq!(s.then, Then::Ack);
    }

    #[test]
    fn a_cancelled_job_is_reported_and_acked_without_a_copy() {
        let j = job(2);
        let s = settle(Some(&j), Outcome::Cancelled, &DELAYS, now());
        assert_eq!(s.copy, None);
        assert_eq!(status(&s), Some("CANCELLED"));
        assert_eq!(s.event.as_ref().map(|e| e.attempt), Some(2));
        assert_eq!(s.then, Then::Ack);
    }

    #[test]
    fn an_abandoned_attempt_goes_back_to_the_queue_untouched() {
        let s = settle(Some(&job(1)), Outcome::Abandoned, &DELAYS, now());
        assert_eq!((s.copy, s.event, s.then), (None, None, Then::Requeue));
    }
}
