//! Bearer-token authentication: HS256 JWTs carrying the tenant (`tid`) and client (`oid`).
//!
//! The algorithm is pinned: a token whose header names any other algorithm (including
//! `none`) is refused before its signature is even looked at.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use imagejobs_core::config::Secret;
use imagejobs_core::ids::{ClientId, TenantId};

/// Who is calling: the tenant a job will belong to and the client within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub client_id: ClientId,
}

/// How tokens are checked.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Why a request is not authenticated. The text is safe to show the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header; expected 'Bearer <token>'")]
    MalformedHeader,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(deserialize_with = "int_or_string")]
    tid: i64,
    #[serde(deserialize_with = "int_or_string")]
    oid: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Some issuers write numeric ids as strings; take both.
fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Str(String),
    }
    match IntOrString::deserialize(d)? {
        IntOrString::Int(i) => Ok(i),
        IntOrString::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom("must be an integer")),
    }
}

impl Verifier {
    /// `audience`: when set, tokens must carry it. `require_exp`: tokens must carry `exp`.
    pub fn new(secret: &Secret, audience: Option<&str>, require_exp: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_nbf = true;
        validation.leeway = 30;
        let mut required: HashSet<String> = HashSet::new();
        if require_exp {
            required.insert("exp".into());
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.insert("aud".into());
            }
            // Tokens such as the seed's carry an `aud`; without a configured audience it
            // is not checked rather than refused.
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required;
        Verifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// Checks an `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let mut parts = header.trim().splitn(2, ' ');
        let scheme = parts.next().unwrap_or_default();
        let token = parts.next().map(str::trim).unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::MalformedHeader);
        }
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Caller {
            tenant_id: TenantId(data.claims.tid),
            client_id: ClientId(data.claims.oid),
        })
    }
}

/// Mints a token for development and tests (`imagejobs token`, `make run`).
pub fn mint(
    secret: &Secret,
    caller: Caller,
    audience: Option<&str>,
    ttl: Option<Duration>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        tid: caller.tenant_id.0,
        oid: caller.client_id.0,
        aud: audience.map(str::to_owned),
        exp: ttl.map(|t| now + t.as_secs()),
        iat: Some(now),
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// A token of the seed's documented example shape (DESIGN §3): HS256 signed with
/// `your-256-bit-secret`, claims `{"tid":1,"oid":1,"aud":"com.company.jobservice"}`, no exp.
pub const SEED_EXAMPLE_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0aWQiOjEsIm9pZCI6MSwiYXVkIjoiY29tLmNvbXBhbnkuam9ic2VydmljZSJ9.buXbaC5GY3S9woDgn4p6e_KjtuA568MGzBP5jBl0DAQ";

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SEED_TOKEN: &str = super::SEED_EXAMPLE_TOKEN;

    fn secret() -> Secret {
        Secret::new("your-256-bit-secret")
    }

    #[test]
    fn seed_token_is_accepted_with_and_without_audience() {
        let expect = Caller {
            tenant_id: TenantId(1),
            client_id: ClientId(1),
        };
        assert_eq!(
            Verifier::new(&secret(), None, false).verify(SEED_TOKEN),
            Ok(expect)
        );
        let v = Verifier::new(&secret(), Some("com.company.jobservice"), false);
        assert_eq!(v.verify(SEED_TOKEN), Ok(expect));
        let v = Verifier::new(&secret(), Some("other"), false);
        assert!(v.verify(SEED_TOKEN).is_err());
        // No exp in it: refused when exp is required.
        assert!(Verifier::new(&secret(), None, true)
            .verify(SEED_TOKEN)
            .is_err());
    }

    #[test]
    fn wrong_secret_and_alg_none_are_refused() {
        assert!(Verifier::new(&Secret::new("other"), None, false)
            .verify(SEED_TOKEN)
            .is_err());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(br#"{"tid":1,"oid":1}"#);
        let v = Verifier::new(&secret(), None, false);
        assert!(v.verify(&format!("{header}.{body}.")).is_err());
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                tid: 1,
                oid: 1,
                aud: None,
                exp: None,
                iat: None,
            },
            &EncodingKey::from_secret(b"your-256-bit-secret"),
        )
        .unwrap();
        assert!(v.verify(&hs512).is_err());
    }

    #[test]
    fn expiry_and_headers() {
        let v = Verifier::new(&secret(), None, true);
        let caller = Caller {
            tenant_id: TenantId(4),
            client_id: ClientId(2),
        };
        let ok = mint(&secret(), caller, None, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(v.verify_header(Some(&format!("Bearer {ok}"))), Ok(caller));
        assert_eq!(v.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            v.verify_header(Some("Basic abc")),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            v.verify_header(Some("Bearer")),
            Err(AuthError::MalformedHeader)
        );
        assert!(v.verify("not.a.jwt").is_err());
    }
}
