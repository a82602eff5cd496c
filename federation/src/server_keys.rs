//! Checking a peer's published signing keys (`GET /_matrix/key/v2/server`, or the same
//! document relayed by a notary) before trusting them to verify its events and requests.
//!
//! <https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys>

use std::collections::BTreeMap;

use ruma::{
    serde::Base64,
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
    CanonicalJsonObject, CanonicalJsonValue, ServerName, SigningKeyAlgorithm,
};

/// The longest a fetched key may be trusted without asking again, whatever the document
/// says (the spec's "lesser of valid_until_ts and 7 days into the future").
pub const MAX_KEY_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// A peer's keys, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub server_name: String,
    /// Key ID (`ed25519:…`) → public key (unpadded base64): its current keys.
    pub verify_keys: BTreeMap<String, String>,
    /// Key ID → (public key, when it stopped being used): keys it signed with before.
    pub old_verify_keys: BTreeMap<String, (String, u64)>,
    /// Until when the current keys may be used without fetching them again (already capped
    /// at [`MAX_KEY_VALIDITY_MS`] from `now`).
    pub valid_until_ts: u64,
}

/// Why a key document is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyDocumentError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("missing or invalid field {0}")]
    Field(&'static str),
    #[error("the keys are of {found}, not of {expected}")]
    WrongServer { expected: String, found: String },
    #[error("no current ed25519 key")]
    NoKeys,
    #[error("not signed by any of its own current keys")]
    NotSelfSigned,
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
}

/// Checks `body`, the key document of `server` fetched at `now_ms`: it names `server`, has
/// at least one ed25519 key, and is signed by its own current keys (each of their signatures
/// must verify, and there must be one). Keys of other algorithms are ignored.
pub fn check_server_keys(
    body: &[u8],
    server: &ServerName,
    now_ms: u64,
) -> Result<ServerKeys, KeyDocumentError> {
    let object: CanonicalJsonObject =
        serde_json::from_slice(body).map_err(|e| KeyDocumentError::NotJson(e.to_string()))?;
    let server_name = match object.get("server_name") {
        Some(CanonicalJsonValue::String(name)) => name.clone(),
        _ => return Err(KeyDocumentError::Field("server_name")),
    };
    if server_name != server.as_str() {
        return Err(KeyDocumentError::WrongServer {
            expected: server.to_string(),
            found: server_name,
        });
    }
    let valid_until_ts = match object.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => {
            u64::try_from(i64::from(*ts)).map_err(|_| KeyDocumentError::Field("valid_until_ts"))?
        }
        _ => return Err(KeyDocumentError::Field("valid_until_ts")),
    };
    let mut verify_keys = BTreeMap::new();
    for (key_id, key) in object_field(&object, "verify_keys")?.ok_or(KeyDocumentError::NoKeys)? {
        if !key_id.starts_with("ed25519:") {
            continue;
        }
        verify_keys.insert(key_id.clone(), key_of(key, "verify_keys")?);
    }
    if verify_keys.is_empty() {
        return Err(KeyDocumentError::NoKeys);
    }
    let mut old_verify_keys = BTreeMap::new();
    if let Some(old) = object_field(&object, "old_verify_keys")? {
        for (key_id, key) in old {
            if !key_id.starts_with("ed25519:") {
                continue;
            }
            let expired = match key {
                CanonicalJsonValue::Object(o) => match o.get("expired_ts") {
                    Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).ok(),
                    _ => None,
                },
                _ => None,
            }
            .ok_or(KeyDocumentError::Field("old_verify_keys"))?;
            old_verify_keys.insert(key_id.clone(), (key_of(key, "old_verify_keys")?, expired));
        }
    }

    let signatures = match object_field(&object, "signatures")? {
        Some(signatures) => match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(own)) => own.clone(),
            _ => return Err(KeyDocumentError::NotSelfSigned),
        },
        None => return Err(KeyDocumentError::NotSelfSigned),
    };
    let canonical = to_canonical_json_string_for_signing(&object)
        .map_err(|e| KeyDocumentError::NotJson(e.to_string()))?;
    let mut verified = 0;
    for (key_id, key) in &verify_keys {
        let Some(signature) = signatures.get(key_id) else {
            continue;
        };
        let bad = || KeyDocumentError::BadSignature(key_id.clone());
        let CanonicalJsonValue::String(signature) = signature else {
            return Err(bad());
        };
        let signature = Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(signature)
            .map_err(|_| bad())?;
        let public =
            Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(key).map_err(|_| bad())?;
        verify_canonical_json_bytes(
            &SigningKeyAlgorithm::Ed25519,
            public.as_bytes(),
            signature.as_bytes(),
            canonical.as_bytes(),
        )
        .map_err(|_| bad())?;
        verified += 1;
    }
    if verified == 0 {
        return Err(KeyDocumentError::NotSelfSigned);
    }
    Ok(ServerKeys {
        server_name,
        verify_keys,
        old_verify_keys,
        valid_until_ts: valid_until_ts.min(now_ms.saturating_add(MAX_KEY_VALIDITY_MS)),
    })
}

/// An optional object field; present but not an object is an error.
fn object_field<'a>(
    object: &'a CanonicalJsonObject,
    field: &'static str,
) -> Result<Option<&'a CanonicalJsonObject>, KeyDocumentError> {
    match object.get(field) {
        None => Ok(None),
        Some(CanonicalJsonValue::Object(o)) => Ok(Some(o)),
        Some(_) => Err(KeyDocumentError::Field(field)),
    }
}

/// `{"key": "<base64>"}` → the base64, checked to be 32 bytes.
fn key_of(value: &CanonicalJsonValue, field: &'static str) -> Result<String, KeyDocumentError> {
    let CanonicalJsonValue::Object(o) = value else {
        return Err(KeyDocumentError::Field(field));
    };
    let Some(CanonicalJsonValue::String(key)) = o.get("key") else {
        return Err(KeyDocumentError::Field(field));
    };
    match Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(key) {
        Ok(bytes) if bytes.as_bytes().len() == 32 => Ok(key.clone()),
        _ => Err(KeyDocumentError::Field(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ServerSigningKey;
    use ruma::server_name;

    const NOW: u64 = 1_700_000_000_000;

    fn document(key: &ServerSigningKey, name: &str, valid_until: u64) -> CanonicalJsonObject {
        key.server_keys_document(name, valid_until).unwrap()
    }

    fn bytes(doc: &CanonicalJsonObject) -> Vec<u8> {
        serde_json::to_vec(doc).unwrap()
    }

    /// Re-signs `doc` (after a change) with `key` as `name`.
    fn resign(key: &ServerSigningKey, name: &str, doc: &mut CanonicalJsonObject) {
        doc.remove("signatures");
        key.sign_json(name, doc).unwrap();
    }

    #[test]
    fn a_self_signed_document_is_accepted_and_capped() {
        let key = ServerSigningKey::generate();
        let doc = document(&key, "peer.example", NOW + 3_600_000);
        let keys = check_server_keys(&bytes(&doc), server_name!("peer.example"), NOW).unwrap();
        assert_eq!(keys.server_name, "peer.example");
        assert_eq!(
            keys.verify_keys.get(key.key_id()),
            Some(&key.public_key_base64())
        );
        assert_eq!(keys.valid_until_ts, NOW + 3_600_000);
        // A far-away validity is capped at seven days.
        let doc = document(&key, "peer.example", NOW + 365 * MAX_KEY_VALIDITY_MS);
        let keys = check_server_keys(&bytes(&doc), server_name!("peer.example"), NOW).unwrap();
        assert_eq!(keys.valid_until_ts, NOW + MAX_KEY_VALIDITY_MS);
    }

    #[test]
    fn old_keys_are_read() {
        let key = ServerSigningKey::generate();
        let old = ServerSigningKey::generate();
        let mut doc = document(&key, "peer.example", NOW);
        let mut entry = CanonicalJsonObject::new();
        entry.insert("key".into(), old.public_key_base64().into());
        entry.insert(
            "expired_ts".into(),
            CanonicalJsonValue::Integer(5u32.into()),
        );
        let mut olds = CanonicalJsonObject::new();
        olds.insert("ed25519:old".into(), CanonicalJsonValue::Object(entry));
        doc.insert("old_verify_keys".into(), CanonicalJsonValue::Object(olds));
        resign(&key, "peer.example", &mut doc);
        let keys = check_server_keys(&bytes(&doc), server_name!("peer.example"), NOW).unwrap();
        assert_eq!(
            keys.old_verify_keys.get("ed25519:old"),
            Some(&(old.public_key_base64(), 5))
        );
    }

    #[test]
    fn forged_and_broken_documents_are_refused() {
        let key = ServerSigningKey::generate();
        let peer = server_name!("peer.example");
        let doc = document(&key, "peer.example", NOW);

        // Another server's document.
        assert!(matches!(
            check_server_keys(&bytes(&doc), server_name!("other.example"), NOW),
            Err(KeyDocumentError::WrongServer { .. })
        ));
        // A changed field after signing.
        let mut tampered = doc.clone();
        tampered.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(1u32.into()),
        );
        assert!(matches!(
            check_server_keys(&bytes(&tampered), peer, NOW),
            Err(KeyDocumentError::BadSignature(_))
        ));
        // A key swapped in under the signed key ID, keeping the old signature. (A document
        // someone re-signs with their own swapped-in key passes this check: that the keys
        // are the server's is what TLS to the server, or a notary's signature, vouches for.)
        let attacker = ServerSigningKey::generate();
        let mut swapped = doc.clone();
        let mut verify_keys = CanonicalJsonObject::new();
        let mut entry = CanonicalJsonObject::new();
        entry.insert("key".into(), attacker.public_key_base64().into());
        verify_keys.insert(key.key_id().into(), CanonicalJsonValue::Object(entry));
        swapped.insert(
            "verify_keys".into(),
            CanonicalJsonValue::Object(verify_keys),
        );
        assert!(matches!(
            check_server_keys(&bytes(&swapped), peer, NOW),
            Err(KeyDocumentError::BadSignature(_))
        ));
        // Unsigned, or signed only by a key it does not list.
        let mut unsigned = doc.clone();
        unsigned.remove("signatures");
        assert_eq!(
            check_server_keys(&bytes(&unsigned), peer, NOW),
            Err(KeyDocumentError::NotSelfSigned)
        );
        let mut foreign = doc.clone();
        resign(&attacker, "peer.example", &mut foreign);
        assert_eq!(
            check_server_keys(&bytes(&foreign), peer, NOW),
            Err(KeyDocumentError::NotSelfSigned)
        );
        // No keys; garbage; wrong types.
        let mut keyless = doc.clone();
        keyless.insert(
            "verify_keys".into(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
        assert_eq!(
            check_server_keys(&bytes(&keyless), peer, NOW),
            Err(KeyDocumentError::NoKeys)
        );
        assert!(matches!(
            check_server_keys(b"[1,2]", peer, NOW),
            Err(KeyDocumentError::NotJson(_))
        ));
        assert!(matches!(
            check_server_keys(b"{\"server_name\":\"peer.example\"}", peer, NOW),
            Err(KeyDocumentError::Field("valid_until_ts"))
        ));
        let mut short_key = doc.clone();
        let mut entry = CanonicalJsonObject::new();
        entry.insert("key".into(), "AAAA".into());
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(key.key_id().into(), CanonicalJsonValue::Object(entry));
        short_key.insert(
            "verify_keys".into(),
            CanonicalJsonValue::Object(verify_keys),
        );
        assert_eq!(
            check_server_keys(&bytes(&short_key), peer, NOW),
            Err(KeyDocumentError::Field("verify_keys"))
        );
    }
}
