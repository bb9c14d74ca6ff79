//! Certificates made at run time for the tests: a CA of the test's own and a certificate
//! it signs for `localhost` and `127.0.0.1`, written as PEM files for the processes that
//! read them (TLS_CERT_FILE, SERVICE_CA_FILE ...).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// PEM files of a test CA and of a server certificate it signed, in a directory of their
/// own (removed on drop).
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn new(label: &str) -> TestCerts {
        let dir = std::env::temp_dir().join(format!(
            "imagejobs-tls-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imagejobs test CA");
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("the CA certificate");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let key = KeyPair::generate().expect("a server key");
        let cert = params.signed_by(&key, &ca).expect("the server certificate");
        let write = |name: &str, text: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("a certificate file");
            path
        };
        TestCerts {
            ca: write("ca.pem", &ca.pem()),
            cert: write("server.pem", &cert.pem()),
            key: write("server.key", &key.serialize_pem()),
            dir,
        }
    }

    /// An HTTP client that trusts this CA.
    pub fn client(&self) -> reqwest::Client {
        imagejobs_core::tls::install_crypto();
        let pem = std::fs::read(&self.ca).expect("the CA file");
        let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("the CA parses");
        reqwest::Client::builder()
            .tls_certs_only(certs)
            .build()
            .expect("an HTTPS client")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
