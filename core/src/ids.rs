//! The identifiers every process shares, parsed once at the edge ("parse, don't
//! validate"): a job's id, its tenant and client, and the MD5 of its image.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5 as Md5Hasher};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's id: a UUID, carried as the message's `message_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::new_v4())
    }

    /// The id of a job submitted with an `Idempotency-Key`: derived from tenant and key, so
    /// every ingress replica (and a restarted one) maps the same key to the same job.
    pub fn for_idempotency_key(tenant: TenantId, key: &str) -> Self {
        const NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_1e7c_0d4f_4b8e_9a51_3c2e_77f0_1d2a);
        JobId(Uuid::new_v5(
            &NAMESPACE,
            format!("{}:{}", tenant.0, key).as_bytes(),
        ))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// The tenant a job belongs to (the token's `tid`, or the `tenant_id` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub i64);

/// The client within a tenant that submitted a job (the token's `oid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub i64);

/// An MD5 digest, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Md5(pub [u8; 16]);

impl Md5 {
    pub fn of(bytes: &[u8]) -> Self {
        Md5(Md5Hasher::digest(bytes).into())
    }

    /// Parses 32 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<Self> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let s = s.trim().as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Md5(out))
    }
}

/// An MD5 computed piece by piece, as a body arrives: the digest is ready when the last
/// piece is, with no second pass over the bytes.
#[derive(Clone, Default)]
pub struct Md5Stream(Md5Hasher);

impl Md5Stream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    pub fn finish(self) -> Md5 {
        Md5(self.0.finalize().into())
    }
}

impl fmt::Display for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5({self})")
    }
}

impl Serialize for Md5 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Md5 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Md5::from_hex(&s).ok_or_else(|| serde::de::Error::custom("md5 must be 32 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_in_pieces_equals_md5_at_once() {
        let mut m = Md5Stream::new();
        m.update(b"hel");
        m.update(b"");
        m.update(b"lo");
        assert_eq!(m.finish(), Md5::of(b"hello"));
    }

    #[test]
    fn md5_hex() {
        let m = Md5::of(b"hello");
        assert_eq!(m.to_string(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(Md5::from_hex("5D41402ABC4B2A76B9719D911017C592"), Some(m));
        assert_eq!(Md5::from_hex("5d41"), None);
        assert_eq!(Md5::from_hex("zz41402abc4b2a76b9719d911017c592"), None);
        assert_eq!(Md5::from_hex("é41402abc4b2a76b9719d911017c59"), None);
    }

    #[test]
    fn idempotency_ids_are_per_tenant_and_stable() {
        let a = JobId::for_idempotency_key(TenantId(1), "k");
        assert_eq!(a, JobId::for_idempotency_key(TenantId(1), "k"));
        assert_ne!(a, JobId::for_idempotency_key(TenantId(2), "k"));
    }
}
