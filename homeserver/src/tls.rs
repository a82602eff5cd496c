//! The federation listener's TLS: the operator's certificate and key
//! (`federation_tls_cert`, `federation_tls_key`), or else a self-signed pair made once in the
//! data directory and reused on every later start, so a fresh server federates over TLS with
//! no set-up (peers that check certificates need a real one; tests turn the check off).

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Why the listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// The acceptor for the federation listener, and the certificate's path when it is the
/// self-signed one made in the data directory (the start-up message says so).
pub fn federation_acceptor(config: &Config) -> Result<(TlsAcceptor, Option<PathBuf>), TlsError> {
    let (cert_path, key_path, self_signed) =
        match (&config.federation_tls_cert, &config.federation_tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
            _ => {
                let cert = config.data_dir.join("federation_tls.crt");
                let key = config.data_dir.join("federation_tls.key");
                if !cert.exists() || !key.exists() {
                    make_self_signed(&config.server_name, &cert, &key)?;
                }
                (cert, key, true)
            }
        };
    let acceptor = acceptor(&cert_path, &key_path)?;
    Ok((acceptor, self_signed.then_some(cert_path)))
}

fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let read_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| read_error(cert_path, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_error(cert_path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| read_error(key_path, &e))?;
    // ring, explicitly: rustls is also built with aws-lc-rs by a dependency, and with two
    // providers compiled in there is no process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // HTTP/1.1 only, like the client listener.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A self-signed certificate for the server name's host, its key readable by the owner only.
fn make_self_signed(server_name: &str, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let host = host_of(server_name);
    let generated = rcgen::generate_simple_self_signed(vec![host.to_owned()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_file(
        key_path,
        generated.key_pair.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(cert_path, generated.cert.pem().as_bytes(), false)?;
    Ok(())
}

/// The host part of a server name (`example.org:8448` → `example.org`, `[::1]:8448` →
/// `::1`).
fn host_of(server_name: &str) -> &str {
    if let Some(rest) = server_name.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server_name.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => server_name,
    }
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_server_names() {
        assert_eq!(host_of("example.org"), "example.org");
        assert_eq!(host_of("example.org:8448"), "example.org");
        assert_eq!(host_of("127.0.0.1:8448"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8448"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
    }

    #[test]
    fn self_signed_pair_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        make_self_signed("example.org:8448", &cert, &key).unwrap();
        acceptor(&cert, &key).expect("a usable TLS configuration");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        }
        // Garbage is an error, not a panic.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(
            acceptor(&cert, &key),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
