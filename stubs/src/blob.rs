//! The blob service stand-in: an in-memory store of blobs by id, and its HTTP routes.
//!
//! - `PUT /api/v1/blob/{id}` stores the body under `id` (201 when new, 200 when replaced; the
//!   same id with the same content is a harmless repeat, which is what makes the consumer's
//!   upload idempotent);
//! - `POST /api/v1/blob` stores the body under a new UUID;
//! - `GET /api/v1/blob/{id}` returns the bytes with the Content-Type they were stored with,
//!   and `Access-Control-Allow-Origin: *` (a browser may follow a result's 307 here).
//!
//! Both writes answer `{"id", "payload_location": "<base>/blob/{id}"}`.
//!
//! The store is bounded by a number of blobs and a number of bytes and evicts the oldest first,
//! so a benchmark pushing hundreds of thousands of images does not exhaust memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use reqwest::Url;
use serde::Serialize;

use crate::error::ApiError;
use crate::stats::Stats;

/// Largest blob the service accepts. Well above the pipeline's 3 MiB images, and above axum's
/// 2 MB default, which would otherwise refuse them.
pub const MAX_BLOB_BYTES: usize = 32 * 1024 * 1024;

/// Longest blob id accepted, to keep ids (and the memory they take as keys) sane.
const MAX_ID_LEN: usize = 512;

/// Content type of blobs stored without one.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The in-memory blob store; a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub(crate) struct BlobStore {
    shelf: Arc<Mutex<Shelf>>,
    capacity: usize,
    max_bytes: u64,
}

#[derive(Debug, Default)]
struct Shelf {
    blobs: HashMap<String, Blob>,
    /// Ids from oldest to newest insertion; always exactly the keys of `blobs`.
    order: VecDeque<String>,
    bytes: u64,
    evicted: u64,
}

#[derive(Debug, Clone)]
struct Blob {
    data: Bytes,
    content_type: String,
}

/// Whether a PUT created a blob or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    Created,
    Replaced,
}

/// Sizes of the store at one moment, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreFigures {
    pub blobs: u64,
    pub bytes: u64,
    pub evicted: u64,
}

impl BlobStore {
    /// An empty store holding at most `capacity` blobs (at least 1) and about `max_bytes` of
    /// content (the newest blob is kept whatever its size).
    pub(crate) fn new(capacity: usize, max_bytes: u64) -> Self {
        Self {
            shelf: Arc::default(),
            capacity: capacity.max(1),
            max_bytes,
        }
    }

    /// Stores `data` under `id`, replacing what was there (a replaced blob keeps its place in
    /// the eviction order), then evicts the oldest blobs until the store is within bounds.
    pub(crate) fn put(&self, id: &str, data: Bytes, content_type: String) -> Stored {
        let size = data.len() as u64;
        let mut shelf = self.shelf();
        let blob = Blob { data, content_type };
        let stored = match shelf.blobs.insert(id.to_owned(), blob) {
            Some(old) => {
                shelf.bytes -= old.data.len() as u64;
                Stored::Replaced
            }
            None => {
                shelf.order.push_back(id.to_owned());
                Stored::Created
            }
        };
        shelf.bytes += size;
        while shelf.blobs.len() > 1
            && (shelf.blobs.len() > self.capacity || shelf.bytes > self.max_bytes)
        {
            let Some(oldest) = shelf.order.pop_front() else {
                break;
            };
            if oldest == id {
                // Never evict what was just written; it goes to the back instead.
                shelf.order.push_back(oldest);
                continue;
            }
            if let Some(old) = shelf.blobs.remove(&oldest) {
                shelf.bytes -= old.data.len() as u64;
                shelf.evicted += 1;
            }
        }
        stored
    }

    /// The blob stored under `id` and its content type.
    pub(crate) fn get(&self, id: &str) -> Option<(Bytes, String)> {
        self.shelf()
            .blobs
            .get(id)
            .map(|blob| (blob.data.clone(), blob.content_type.clone()))
    }

    pub(crate) fn figures(&self) -> StoreFigures {
        let shelf = self.shelf();
        StoreFigures {
            blobs: shelf.blobs.len() as u64,
            bytes: shelf.bytes,
            evicted: shelf.evicted,
        }
    }

    /// The shelf; no code panics while holding it, but should one, the map is still
    /// consistent enough for a stub, so a poisoned lock is taken over.
    fn shelf(&self) -> MutexGuard<'_, Shelf> {
        self.shelf
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the blob routes share.
#[derive(Clone, Debug)]
pub(crate) struct BlobService {
    pub store: BlobStore,
    pub stats: Stats,
    /// Base of the `payload_location`s handed out, e.g. `http://127.0.0.1:8081/api/v1`.
    pub public_base: Url,
}

/// The blob API routes, with full paths (the stats recognise endpoints by route).
pub(crate) fn routes(service: BlobService) -> Router {
    Router::new()
        .route("/api/v1/blob", post(post_blob))
        .route("/api/v1/blob/{id}", put(put_blob).get(get_blob))
        .layer(DefaultBodyLimit::max(MAX_BLOB_BYTES))
        .with_state(service)
}

#[derive(Serialize)]
struct StoredAnswer {
    id: String,
    payload_location: String,
}

async fn put_blob(
    State(service): State<BlobService>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    validate_id(&id)?;
    service.stats.record_blob_put(&id);
    store(&service, id, &headers, body?)
}

async fn post_blob(
    State(service): State<BlobService>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::new_v4().to_string();
    store(&service, id, &headers, body?)
}

/// `GET /api/v1/blob/{id}`, readable from any origin: with `RESULT_REDIRECT=true` the
/// ingress answers a result with a 307 to this URL, and a browser (the dashboard) follows it
/// from the ingress's origin. A real object store or CDN in front answers the same header.
/// The 404 carries it too, so that a page sees "not found" rather than a CORS error.
async fn get_blob(
    State(service): State<BlobService>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let mut response = match read_blob(&service, id) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

fn read_blob(
    service: &BlobService,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let (data, content_type) = service
        .store
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no blob with id {id:?}")))?;
    let content_type = HeaderValue::from_str(&content_type)
        .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    Ok(([(header::CONTENT_TYPE, content_type)], data).into_response())
}

fn store(
    service: &BlobService,
    id: String,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_owned();
    let payload_location = location(&service.public_base, &id)?;
    // A copy of our own: a small body may be a slice of a larger connection buffer, which
    // holding on to would keep alive and make the byte bound meaningless.
    let data = Bytes::copy_from_slice(&body);
    let status = match service.store.put(&id, data, content_type) {
        Stored::Created => StatusCode::CREATED,
        Stored::Replaced => StatusCode::OK,
    };
    tracing::debug!(blob_id = %id, bytes = body.len(), "blob stored");
    Ok((
        status,
        Json(StoredAnswer {
            id,
            payload_location,
        }),
    )
        .into_response())
}

fn validate_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::bad_request("blob id is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(ApiError::bad_request(format!(
            "blob id is longer than {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

/// `<base>/blob/<id>`, with the id percent-encoded as one path segment.
pub(crate) fn location(base: &Url, id: &str) -> Result<String, ApiError> {
    blob_url(base, id).map(String::from).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad blob base URL",
            format!("{base} cannot take path segments"),
        )
    })
}

/// `<base>/blob/<id>` as a URL; `None` when `base` cannot have a path (e.g. `data:` URLs).
pub(crate) fn blob_url(base: &Url, id: &str) -> Option<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .push("blob")
        .push(id);
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn puts_create_then_replace() {
        let store = BlobStore::new(10, 1_000);
        assert_eq!(
            store.put("a", bytes(3), "image/png".into()),
            Stored::Created
        );
        assert_eq!(
            store.put("a", bytes(5), "image/png".into()),
            Stored::Replaced
        );
        let (data, content_type) = store.get("a").expect("stored");
        assert_eq!(data.len(), 5);
        assert_eq!(content_type, "image/png");
        assert_eq!(store.figures().bytes, 5);
        assert_eq!(store.get("b"), None);
    }

    #[test]
    fn the_oldest_blobs_are_evicted_by_count() {
        let store = BlobStore::new(2, u64::MAX);
        store.put("a", bytes(1), "x".into());
        store.put("b", bytes(1), "x".into());
        store.put("a", bytes(1), "x".into()); // a replace keeps a's place
        store.put("c", bytes(1), "x".into());
        assert!(store.get("a").is_none());
        assert!(store.get("b").is_some());
        assert!(store.get("c").is_some());
        assert_eq!(
            store.figures(),
            StoreFigures {
                blobs: 2,
                bytes: 2,
                evicted: 1
            }
        );
    }

    #[test]
    fn the_oldest_blobs_are_evicted_by_bytes_but_the_newest_stays() {
        let store = BlobStore::new(100, 10);
        store.put("a", bytes(4), "x".into());
        store.put("b", bytes(4), "x".into());
        store.put("c", bytes(4), "x".into());
        assert!(store.get("a").is_none());
        assert_eq!(store.figures().bytes, 8);
        store.put("huge", bytes(50), "x".into());
        assert!(store.get("huge").is_some());
        assert_eq!(store.figures().blobs, 1);
        // Replacing the oldest blob with a big one evicts the others, not itself.
        let store = BlobStore::new(100, 10);
        store.put("a", bytes(1), "x".into());
        store.put("b", bytes(1), "x".into());
        store.put("a", bytes(10), "x".into());
        assert!(store.get("a").is_some());
        assert!(store.get("b").is_none());
    }

    #[test]
    fn locations_encode_the_id_as_one_segment() {
        let base: Url = "http://127.0.0.1:8081/api/v1".parse().expect("url");
        assert_eq!(
            location(&base, "abc.thumb").expect("location"),
            "http://127.0.0.1:8081/api/v1/blob/abc.thumb"
        );
        let slash: Url = "http://h/api/v1/".parse().expect("url");
        assert_eq!(
            location(&slash, "a/b c").expect("location"),
            "http://h/api/v1/blob/a%2Fb%20c"
        );
    }
}
