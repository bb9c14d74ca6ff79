//! Token signing keys made at run time: a private key (PEM, PKCS#8) to mint with and its
//! public key (PEM, SubjectPublicKeyInfo) for the ingress's JWT_PUBLIC_KEY_FILE.

use std::path::PathBuf;

use rcgen::KeyPair;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// The asymmetric algorithms the ingress takes (JWT_ALGORITHM).
pub const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// A key pair of one algorithm, its two PEM files in a directory removed on drop.
pub struct TokenKeys {
    pub algorithm: &'static str,
    pub dir: PathBuf,
    pub private_pem: Vec<u8>,
    pub public_pem: Vec<u8>,
    pub private_file: PathBuf,
    pub public_file: PathBuf,
}

impl TokenKeys {
    /// Generates a key pair for `algorithm` (one of [`ALGORITHMS`]).
    pub fn new(algorithm: &'static str) -> TokenKeys {
        let (private_pem, public_pem) = match algorithm {
            "RS256" => {
                let key =
                    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("an RSA key");
                let private = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM");
                let public = key
                    .to_public_key()
                    .to_public_key_pem(LineEnding::LF)
                    .expect("SPKI PEM");
                (private.as_bytes().to_vec(), public.into_bytes())
            }
            "ES256" | "EdDSA" => {
                let alg = if algorithm == "ES256" {
                    &rcgen::PKCS_ECDSA_P256_SHA256
                } else {
                    &rcgen::PKCS_ED25519
                };
                let key = KeyPair::generate_for(alg).expect("a key pair");
                (
                    key.serialize_pem().into_bytes(),
                    key.public_key_pem().into_bytes(),
                )
            }
            other => panic!("no test keys for {other}"),
        };
        let dir = std::env::temp_dir().join(format!(
            "imagejobs-keys-{algorithm}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the keys");
        let private_file = dir.join("private.pem");
        let public_file = dir.join("public.pem");
        std::fs::write(&private_file, &private_pem).expect("the private key file");
        std::fs::write(&public_file, &public_pem).expect("the public key file");
        TokenKeys {
            algorithm,
            dir,
            private_pem,
            public_pem,
            private_file,
            public_file,
        }
    }
}

impl Drop for TokenKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
