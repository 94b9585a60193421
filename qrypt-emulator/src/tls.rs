//! A throwaway CA and a server certificate it signs for `localhost`, 127.0.0.1 and ::1.
//!
//! A CA plus a leaf rather than one self-signed leaf: webpki (rustls) refuses a CA certificate
//! as the server's own, and some clients refuse a trust anchor that is not a CA.
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptor, and the CA certificate (PEM) a client must trust.
pub(super) fn generate() -> Result<(TlsAcceptor, String), String> {
    let err = |x: &dyn std::fmt::Display| format!("cannot make a TLS certificate: {x}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|x| err(&x))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "qrypt-emulator throwaway test CA (not for production)",
    );
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|x| err(&x))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|x| err(&x))?;

    let leaf_key = KeyPair::generate().map_err(|x| err(&x))?;
    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(|x| err(&x))?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(|x| err(&x))?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| err(&x))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .map_err(|x| err(&x))?;
    // HTTP/1.1 only: the server speaks nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), ca.pem()))
}
