//! Turning a submit request's body into image bytes: JSON with base64 content, or a raw
//! `image/*` body. Pure functions, so that every rule here is unit- and property-tested.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::error::ApiError;
use imagejobs_core::ids::Md5;
use imagejobs_core::sniff;

/// Standard alphabet; padding optional, since some encoders drop it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A validated image, ready to submit.
pub use crate::submitter::Image as Upload;

/// How the body is to be read, from its `Content-Type`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum BodyKind {
    Json,
    Raw,
    /// No useful type (none, `application/octet-stream`, or the form type curl sends by
    /// default with `--data-binary`): an image is taken raw, anything else as JSON.
    Sniff,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> Result<Self, ApiError> {
        let Some(ct) = content_type else {
            return Ok(BodyKind::Sniff);
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            Ok(BodyKind::Json)
        } else if essence.starts_with("image/") {
            Ok(BodyKind::Raw)
        } else if essence == "application/octet-stream"
            || essence == "application/x-www-form-urlencoded"
        {
            Ok(BodyKind::Sniff)
        } else {
            Err(ApiError::Unsupported(format!(
                "Content-Type {essence:?} is neither application/json nor image/*"
            )))
        }
    }

    /// The most body bytes worth reading for an image of at most `max_image` bytes.
    pub fn body_limit(self, max_image: usize) -> usize {
        match self {
            BodyKind::Raw => max_image,
            // base64 is 4/3 of the bytes, plus room for the other fields and whitespace.
            BodyKind::Json | BodyKind::Sniff => max_image / 3 * 4 + max_image / 64 + 4096,
        }
    }

    /// What a `Sniff` body turns out to be.
    pub fn resolve(self, body: &[u8]) -> Self {
        match self {
            BodyKind::Sniff if sniff::image_mime(body).is_some() => BodyKind::Raw,
            BodyKind::Sniff => BodyKind::Json,
            other => other,
        }
    }
}

#[derive(Deserialize)]
struct SubmitJson<'a> {
    #[serde(default, borrow)]
    encoding: Option<Cow<'a, str>>,
    #[serde(default, borrow, alias = "MD5")]
    md5: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// Parses `{"encoding": "base64", "md5": "<hex>", "content": "<base64>"}`.
pub fn from_json(body: &[u8], max_image: usize) -> Result<Upload, ApiError> {
    let req: SubmitJson<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid JSON body", e.to_string()))?;
    match req.encoding.as_deref().map(str::trim) {
        None => {}
        Some(e) if e.eq_ignore_ascii_case("base64") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "unknown encoding",
                format!(
                    "encoding {:?} is not supported; use \"base64\"",
                    truncate(other)
                ),
            ))
        }
    }
    let expected = match req.md5.as_deref() {
        None => None,
        Some(hex) => Some(Md5::from_hex(hex).ok_or_else(|| {
            ApiError::bad_request("invalid md5", "md5 must be 32 hexadecimal digits")
        })?),
    };
    let content = req.content.as_bytes();
    if content.len() / 4 * 3 > max_image + max_image / 16 + 3 {
        return Err(ApiError::TooLarge { limit: max_image });
    }
    // Wrapped base64 (as `base64` prints it) carries newlines: only when the plain decode
    // fails is the content scanned and compacted, so the usual case pays for one pass.
    let bytes = match BASE64.decode(content) {
        Ok(bytes) => bytes,
        Err(first) => {
            if !content.iter().any(u8::is_ascii_whitespace) {
                return Err(ApiError::bad_request(
                    "invalid base64 content",
                    first.to_string(),
                ));
            }
            let compact: Vec<u8> = content
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            BASE64
                .decode(&compact)
                .map_err(|e| ApiError::bad_request("invalid base64 content", e.to_string()))?
        }
    };
    if bytes.len() > max_image {
        return Err(ApiError::TooLarge { limit: max_image });
    }
    finish(Bytes::from(bytes), expected, None)
}

/// Checks a raw `image/*` body, with an optional `Content-MD5` (RFC 1864: base64 of the
/// digest; 32 hex digits are taken too). `digest` is the body's MD5 when it was computed
/// while the body arrived; it is checked against and kept instead of hashing again.
pub fn from_raw(
    body: Bytes,
    content_md5: Option<&str>,
    digest: Option<Md5>,
    max_image: usize,
) -> Result<Upload, ApiError> {
    if body.len() > max_image {
        return Err(ApiError::TooLarge { limit: max_image });
    }
    let expected = match content_md5.map(str::trim) {
        None => None,
        Some(v) => Some(parse_content_md5(v).ok_or_else(|| {
            ApiError::bad_request(
                "invalid Content-MD5",
                "Content-MD5 must be the base64 (or hex) MD5 digest of the body",
            )
        })?),
    };
    finish(body, expected, digest)
}

fn parse_content_md5(v: &str) -> Option<Md5> {
    if let Some(m) = Md5::from_hex(v) {
        return Some(m);
    }
    let raw = BASE64.decode(v).ok()?;
    Some(Md5(raw.try_into().ok()?))
}

fn finish(bytes: Bytes, expected: Option<Md5>, digest: Option<Md5>) -> Result<Upload, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty image",
            "the image has no bytes",
        ));
    }
    let digest = match (expected, digest) {
        (Some(_), None) => Some(Md5::of(&bytes)),
        (_, known) => known,
    };
    if let (Some(expected), Some(actual)) = (expected, digest) {
        if actual != expected {
            return Err(ApiError::bad_request(
                "md5 mismatch",
                format!("md5 {expected} was given but the image hashes to {actual}"),
            ));
        }
    }
    let mime = sniff::image_mime(&bytes).ok_or_else(|| {
        ApiError::Unsupported("the content is not a PNG, JPEG, GIF, WebP, BMP or TIFF image".into())
    })?;
    Ok(Upload {
        bytes,
        mime,
        md5: expected,
        digest,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn json(content: &str, md5_key: &str, md5: &str) -> Vec<u8> {
        format!(r#"{{"encoding":"base64","{md5_key}":"{md5}","content":"{content}"}}"#).into_bytes()
    }

    #[test]
    fn json_with_either_md5_key() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
        let md5 = Md5::of(PNG).to_string();
        for key in ["md5", "MD5"] {
            let up = from_json(&json(&b64, key, &md5), 1024).unwrap();
            assert_eq!(&up.bytes[..], PNG);
            assert_eq!(up.mime, "image/png");
        }
    }

    #[test]
    fn json_errors() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
        let md5 = Md5::of(PNG).to_string();
        let status = |r: Result<Upload, ApiError>| r.unwrap_err().status();
        assert_eq!(status(from_json(b"{", 1024)), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(from_json(br#"{"encoding":"hex","content":"00"}"#, 1024)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(from_json(&json("!!!", "md5", &md5), 1024)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(from_json(
                &json(&b64, "md5", &Md5::of(b"x").to_string()),
                1024
            )),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(from_json(&json(&b64, "md5", "abc"), 1024)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(from_json(&json(&b64, "md5", &md5), 4)),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let text = base64::engine::general_purpose::STANDARD.encode(b"hello world");
        assert_eq!(
            status(from_json(
                &json(&text, "md5", &Md5::of(b"hello world").to_string()),
                1024
            )),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn wrapped_and_unpadded_base64() {
        let mut b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
        b64.insert_str(8, "\\n");
        let body = format!(r#"{{"content":"{}"}}"#, b64.trim_end_matches('='));
        assert_eq!(&from_json(body.as_bytes(), 1024).unwrap().bytes[..], PNG);
    }

    #[test]
    fn raw_with_content_md5() {
        let digest = base64::engine::general_purpose::STANDARD.encode(Md5::of(PNG).0);
        assert!(from_raw(Bytes::from_static(PNG), Some(&digest), None, 1024).is_ok());
        assert!(from_raw(
            Bytes::from_static(PNG),
            Some(&Md5::of(PNG).to_string()),
            Some(Md5::of(PNG)),
            1024
        )
        .is_ok());
        let wrong = base64::engine::general_purpose::STANDARD.encode(Md5::of(b"x").0);
        assert_eq!(
            from_raw(Bytes::from_static(PNG), Some(&wrong), None, 1024)
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            from_raw(Bytes::from_static(PNG), None, None, 4)
                .unwrap_err()
                .status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            from_raw(Bytes::new(), None, None, 4).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn body_kinds() {
        assert_eq!(BodyKind::of(None).unwrap(), BodyKind::Sniff);
        let form = BodyKind::of(Some("application/x-www-form-urlencoded")).unwrap();
        assert_eq!(form.resolve(PNG), BodyKind::Raw);
        assert_eq!(form.resolve(b"{\"content\":\"\"}"), BodyKind::Json);
        assert_eq!(
            BodyKind::of(Some("application/json; charset=utf-8")).unwrap(),
            BodyKind::Json
        );
        assert_eq!(BodyKind::of(Some("image/png")).unwrap(), BodyKind::Raw);
        assert_eq!(
            BodyKind::of(Some("text/plain")).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const MAX: usize = 2048;

        /// The documented answers to a bad body: 400, 413 or 415, with details.
        fn documented(e: &ApiError) -> bool {
            let kind = matches!(
                e,
                ApiError::BadRequest { .. } | ApiError::TooLarge { .. } | ApiError::Unsupported(_)
            );
            kind && !e.to_string().is_empty()
        }

        /// An image body (a PNG signature and random bytes) or random bytes.
        fn image() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000).prop_map(|mut v| {
                    let mut png = PNG.to_vec();
                    png.append(&mut v);
                    png
                }),
                proptest::collection::vec(any::<u8>(), 0..300),
            ]
        }

        /// A JSON submit body built from `image`, then maybe cut or with one byte changed;
        /// and what a correct parser must do with it, when that is known.
        fn json_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Option<bool>)> {
            (
                image(),
                any::<bool>(),
                prop_oneof![Just("base64"), Just("BASE64"), Just("hex"), Just("")],
                any::<prop::sample::Index>(),
                prop_oneof![Just(None), any::<u8>().prop_map(Some)],
                any::<bool>(),
            )
                .prop_map(|(img, with_md5, enc, at, byte, cut)| {
                    let md5 = if with_md5 {
                        format!(r#","md5":"{}""#, Md5::of(&img))
                    } else {
                        String::new()
                    };
                    let body = format!(
                        r#"{{"encoding":"{enc}"{md5},"content":"{}"}}"#,
                        BASE64.encode(&img)
                    );
                    let mut body = body.into_bytes();
                    let intact = body.clone();
                    let i = at.index(body.len());
                    if cut {
                        body.truncate(i);
                    } else if let Some(b) = byte {
                        body[i] = b;
                    }
                    // Untouched, it is accepted exactly when it says base64 and holds a
                    // small enough image.
                    let accept = (body == intact).then(|| {
                        enc.eq_ignore_ascii_case("base64")
                            && img.len() <= MAX
                            && sniff::image_mime(&img).is_some()
                    });
                    (img, body, accept)
                })
        }

        proptest! {
            /// Whatever the JSON body, the parser gives the image it holds or a
            /// documented error; never a panic.
            #[test]
            fn json_bodies_parse_or_say_why((img, body, accept) in json_body()) {
                match from_json(&body, MAX) {
                    Ok(up) => {
                        prop_assert!(accept != Some(false));
                        prop_assert!(up.bytes.len() <= MAX);
                        prop_assert!(sniff::image_mime(&up.bytes).is_some());
                        if let Some(m) = up.md5 {
                            prop_assert_eq!(m, Md5::of(&up.bytes));
                        }
                        if accept.is_some() {
                            prop_assert_eq!(&up.bytes[..], &img[..]);
                        }
                    }
                    Err(e) => {
                        prop_assert!(documented(&e), "{:?}", e);
                        prop_assert!(accept != Some(true), "{:?}", e);
                    }
                }
            }

            /// Arbitrary bytes as JSON.
            #[test]
            fn random_json_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
                if let Err(e) = from_json(&body, MAX) {
                    prop_assert!(documented(&e), "{:?}", e);
                }
            }

            /// A raw body with any Content-MD5: accepted exactly when it is a small
            /// enough image whose digest (if given) matches.
            #[test]
            fn raw_bodies_parse_or_say_why(
                img in image(),
                md5 in prop_oneof![
                    Just(None),
                    Just(Some(String::new())),
                    "[ -~]{0,40}".prop_map(Some),
                    Just(Some("right".to_owned())),
                ],
            ) {
                let md5 = md5.map(|m| if m == "right" { BASE64.encode(Md5::of(&img).0) } else { m });
                let streamed = Md5::of(&img);
                let result = from_raw(Bytes::from(img.clone()), md5.as_deref(), Some(streamed), MAX);
                let small_image = img.len() <= MAX && sniff::image_mime(&img).is_some();
                let digest_ok = md5.as_deref().is_none_or(|m| {
                    parse_content_md5(m.trim()) == Some(Md5::of(&img))
                });
                match result {
                    Ok(up) => {
                        prop_assert!(small_image && digest_ok);
                        prop_assert_eq!(&up.bytes[..], &img[..]);
                    }
                    Err(e) => {
                        prop_assert!(documented(&e), "{:?}", e);
                        prop_assert!(!(small_image && digest_ok), "{:?}", e);
                    }
                }
            }
        }
    }
}
