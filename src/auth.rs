//! Bearer-token authentication: HS256 JWTs carrying the tenant (`tid`) and client (`oid`).
//!
//! The algorithm is pinned: a token whose header names any other algorithm (including
//! `none`) is refused before its signature is even looked at.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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

/// The claims we read. `tid` and `oid` are integers (docs/http-api.md): a string such as `"1"` is
/// refused. `aud` is a string or an array of strings (RFC 7519 §4.1.3); jsonwebtoken checks
/// it against the configured audience.
#[derive(Serialize, Deserialize)]
struct Claims {
    tid: i64,
    oid: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The one algorithm the ingress accepts and the key it checks signatures with.
#[derive(Clone, Debug)]
pub enum TokenKey {
    /// HS256 with a shared secret.
    Secret(Secret),
    /// RS256, ES256 or EdDSA with a public key (PEM): the ingress holds no signing secret.
    Public { algorithm: Algorithm, pem: Vec<u8> },
}

/// Why a token key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_ALGORITHM {0} is not one of HS256, RS256, ES256, EdDSA")]
    UnknownAlgorithm(String),
    #[error("JWT_ALGORITHM {0:?} takes a public key (JWT_PUBLIC_KEY_FILE), not a secret")]
    NeedsPublicKey(Algorithm),
    #[error("a public key (JWT_PUBLIC_KEY_FILE) needs JWT_ALGORITHM RS256, ES256 or EdDSA")]
    NeedsAsymmetric,
    #[error("the key is not a {0:?} key in PEM: {1}")]
    BadKey(Algorithm, jsonwebtoken::errors::Error),
}

/// Parses `JWT_ALGORITHM`: one of the algorithms the ingress supports.
pub fn parse_algorithm(s: &str) -> Result<Algorithm, KeyError> {
    match s.trim() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::UnknownAlgorithm(other.to_owned())),
    }
}

impl TokenKey {
    fn algorithm(&self) -> Algorithm {
        match self {
            TokenKey::Secret(_) => Algorithm::HS256,
            TokenKey::Public { algorithm, .. } => *algorithm,
        }
    }

    fn decoding_key(&self) -> Result<DecodingKey, KeyError> {
        match self {
            TokenKey::Secret(s) => Ok(DecodingKey::from_secret(s.expose().as_bytes())),
            TokenKey::Public { algorithm, pem } => {
                let key = match algorithm {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                    _ => return Err(KeyError::NeedsAsymmetric),
                };
                key.map_err(|e| KeyError::BadKey(*algorithm, e))
            }
        }
    }
}

impl Verifier {
    /// An HS256 verifier (see [`Verifier::with_key`]).
    pub fn new(secret: &Secret, audience: Option<&str>, require_exp: bool) -> Self {
        let key = DecodingKey::from_secret(secret.expose().as_bytes());
        Self::build(Algorithm::HS256, key, audience, require_exp)
    }

    /// Checks tokens signed with `key`'s one algorithm (a token naming any other,
    /// `none` or HS256 signed with a public key's bytes included, is refused before its
    /// signature is looked at). `audience`: when set, tokens must carry it (as a string or
    /// in an array). `require_exp`: tokens must carry `exp`.
    pub fn with_key(
        key: &TokenKey,
        audience: Option<&str>,
        require_exp: bool,
    ) -> Result<Self, KeyError> {
        Ok(Self::build(
            key.algorithm(),
            key.decoding_key()?,
            audience,
            require_exp,
        ))
    }

    fn build(
        algorithm: Algorithm,
        key: DecodingKey,
        audience: Option<&str>,
        require_exp: bool,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
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
        Verifier { key, validation }
    }

    /// Checks the request's `Authorization` header: exactly one, `Bearer <token>`. Two are
    /// a malformed request, whatever they hold (otherwise which one counts would depend on
    /// the code that reads them).
    pub fn verify_headers(&self, headers: &axum::http::HeaderMap) -> Result<Caller, AuthError> {
        let mut all = headers.get_all(axum::http::header::AUTHORIZATION).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(AuthError::MalformedHeader);
        }
        match first.map(|v| v.to_str()) {
            None => self.verify_header(None),
            Some(Ok(v)) => self.verify_header(Some(v)),
            Some(Err(_)) => Err(AuthError::MalformedHeader),
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

/// Mints a token signed with a private key (PEM) for `algorithm` (RS256, ES256, EdDSA).
pub fn mint_with_private_key(
    algorithm: Algorithm,
    pem: &[u8],
    caller: Caller,
    audience: Option<&str>,
    ttl: Option<Duration>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem)?,
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem)?,
        _ => return Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into()),
    };
    encode(
        &Header::new(algorithm),
        &claims(caller, audience, ttl),
        &key,
    )
}

fn claims(caller: Caller, audience: Option<&str>, ttl: Option<Duration>) -> Claims {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Claims {
        tid: caller.tenant_id.0,
        oid: caller.client_id.0,
        aud: audience.map(|a| Audience::One(a.to_owned())),
        exp: ttl.map(|t| now + t.as_secs()),
        iat: Some(now),
    }
}

/// Mints a token for development and tests (`imagejobs token`, `make run`).
pub fn mint(
    secret: &Secret,
    caller: Caller,
    audience: Option<&str>,
    ttl: Option<Duration>,
) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        &claims(caller, audience, ttl),
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// A token of the seed's documented example shape (docs/http-api.md): HS256 signed with
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

    fn signed(claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"your-256-bit-secret"),
        )
        .unwrap()
    }

    #[test]
    fn audience_may_be_an_array() {
        let t = signed(
            &serde_json::json!({"tid": 1, "oid": 2, "aud": ["other", "com.company.jobservice"]}),
        );
        let v = Verifier::new(&secret(), Some("com.company.jobservice"), false);
        assert!(v.verify(&t).is_ok());
        assert!(Verifier::new(&secret(), None, false).verify(&t).is_ok());
        assert!(Verifier::new(&secret(), Some("nope"), false)
            .verify(&t)
            .is_err());
    }

    #[test]
    fn ids_must_be_integers() {
        for claims in [
            serde_json::json!({"tid": "1", "oid": 1}),
            serde_json::json!({"tid": 1, "oid": "1"}),
            serde_json::json!({"tid": 1.5, "oid": 1}),
            serde_json::json!({"oid": 1}),
        ] {
            let v = Verifier::new(&secret(), None, false);
            assert!(v.verify(&signed(&claims)).is_err(), "{claims}");
        }
    }

    #[test]
    fn two_authorization_headers_are_malformed() {
        let v = Verifier::new(&secret(), None, false);
        let mut h = axum::http::HeaderMap::new();
        h.append(
            "authorization",
            format!("Bearer {SEED_TOKEN}").parse().unwrap(),
        );
        assert!(v.verify_headers(&h).is_ok());
        h.append("authorization", "Bearer forged".parse().unwrap());
        assert_eq!(v.verify_headers(&h), Err(AuthError::MalformedHeader));
        assert_eq!(
            v.verify_headers(&axum::http::HeaderMap::new()),
            Err(AuthError::Missing)
        );
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

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn verifier() -> Verifier {
            Verifier::new(&secret(), None, false)
        }

        /// A claim value of any JSON kind.
        fn claim() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::json;
            prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                any::<u64>().prop_map(|n| json!(n)),
                any::<i64>().prop_map(|n| json!(n.to_string())),
                any::<f64>().prop_map(|f| json!(f)),
                any::<bool>().prop_map(|b| json!(b)),
                Just(serde_json::Value::Null),
                Just(json!([1])),
            ]
        }

        proptest! {
            /// Any header value: an error of the documented kinds (all 401), never a
            /// caller.
            #[test]
            fn random_headers_are_refused(header in "[ -~]{0,300}") {
                let v = verifier();
                match v.verify_header(Some(&header)) {
                    Ok(c) => prop_assert!(false, "{header:?} gave {c:?}"),
                    Err(AuthError::MalformedHeader) => {
                        let t = header.trim();
                        let bearer = t.len() > 7 && t[..7].eq_ignore_ascii_case("bearer ");
                        prop_assert!(!bearer || t[7..].trim().is_empty());
                    }
                    Err(AuthError::Invalid(why)) => prop_assert!(!why.is_empty()),
                    Err(AuthError::Missing) => prop_assert!(false, "a header was given"),
                }
            }

            /// A valid token with one character changed is refused.
            #[test]
            fn mutated_tokens_are_refused(
                at in any::<prop::sample::Index>(),
                with in prop_oneof![
                    prop::char::range('A', 'Z'),
                    prop::char::range('a', 'z'),
                    prop::char::range('0', '9'),
                    Just('-'), Just('_'), Just('.'), Just('='), Just(' '),
                ],
            ) {
                let caller = Caller { tenant_id: TenantId(4), client_id: ClientId(2) };
                let token = mint(&secret(), caller, None, None).unwrap();
                let i = at.index(token.len());
                let mut mutated = token.clone();
                mutated.replace_range(i..=i, &with.to_string());
                prop_assume!(mutated != token);
                prop_assert!(verifier().verify(&mutated).is_err(), "{mutated}");
            }

            /// Correctly signed claims: accepted exactly when `tid` and `oid` are
            /// integers.
            #[test]
            fn only_integer_ids_are_accepted(tid in claim(), oid in claim()) {
                let claims = serde_json::json!({"tid": tid, "oid": oid});
                let key = EncodingKey::from_secret(secret().expose().as_bytes());
                let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
                let ints = tid.as_i64().zip(oid.as_i64());
                match verifier().verify(&token) {
                    Ok(c) => prop_assert_eq!(Some((c.tenant_id.0, c.client_id.0)), ints),
                    Err(e) => {
                        prop_assert!(matches!(e, AuthError::Invalid(_)));
                        prop_assert!(ints.is_none(), "{claims} refused: {e}");
                    }
                }
            }
        }
    }
}
