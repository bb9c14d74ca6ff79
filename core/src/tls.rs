//! TLS set-up shared by every process: rustls with the `ring` provider, which builds
//! quickly here (no cmake, unlike aws-lc-rs) and is what reqwest's and lapin's rustls use.

/// Makes `ring` the process's rustls provider (idempotent). Every HTTPS client of the
/// process (reqwest without a provider of its own) needs it before it is built.
pub fn install_crypto() {
    // An error means a provider is installed already: the one we want, or the caller's.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file, for a private CA (`SERVICE_CA_FILE`, `AMQP_CA_FILE`).
pub fn read_pem(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----"),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(pem)
}
