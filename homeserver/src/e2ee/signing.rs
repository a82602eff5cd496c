//! Checks of the signatures on keys that clients upload. Pure functions over canonical JSON.
//!
//! <https://spec.matrix.org/latest/appendices/#signing-json>
//!
//! Checking a signature of a key object by `signer` with the ed25519 key `ed25519:<name>`:
//! 1. take the object without `signatures` and `unsigned`, as canonical JSON;
//! 2. find `signatures[signer]["ed25519:<name>"]` (unpadded base64);
//! 3. verify it with the signer's public key (unpadded base64) over the bytes of step 1.
//!
//! Used for device keys (each device signs its own keys with its ed25519 identity key),
//! cross-signing keys (the self-signing and user-signing keys are signed by the master key)
//! and `/keys/signatures/upload` (devices signed by the self-signing key, master keys signed
//! by a device or by another user's user-signing key).

use ruma::{
    serde::{base64::Standard, Base64},
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
    CanonicalJsonObject, CanonicalJsonValue, SigningKeyAlgorithm,
};

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the object carries no signature by {0}")]
    Missing(String),
    #[error("the signature by {0} is invalid")]
    Invalid(String),
    #[error("{0} is not an ed25519 public key")]
    BadKey(String),
}

/// Parses JSON text into a canonical JSON object (no floats, integers within ±(2^53−1)).
pub fn canonical_object(json: &str) -> Result<CanonicalJsonObject, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match CanonicalJsonValue::try_from(value).map_err(|e| e.to_string())? {
        CanonicalJsonValue::Object(object) => Ok(object),
        _ => Err("not a JSON object".to_owned()),
    }
}

/// The canonical JSON text of an object (sorted keys, no insignificant whitespace): what is
/// stored, so that equal keys compare equal as strings.
pub fn canonical_string(object: &CanonicalJsonObject) -> String {
    CanonicalJsonValue::Object(object.clone()).to_string()
}

/// The signature `signatures[signer][key_id]`, if present.
pub fn signature_of<'a>(
    object: &'a CanonicalJsonObject,
    signer: &str,
    key_id: &str,
) -> Option<&'a str> {
    match object.get("signatures")? {
        CanonicalJsonValue::Object(by_signer) => match by_signer.get(signer)? {
            CanonicalJsonValue::Object(by_key) => match by_key.get(key_id)? {
                CanonicalJsonValue::String(signature) => Some(signature),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Checks that `object` is signed by `signer` with the ed25519 key `key_id`
/// (`ed25519:<name>`) whose public key is `public_key` (unpadded base64).
pub fn verify(
    object: &CanonicalJsonObject,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), SignatureError> {
    let missing = || SignatureError::Missing(format!("{signer} ({key_id})"));
    let invalid = || SignatureError::Invalid(format!("{signer} ({key_id})"));
    let signature = signature_of(object, signer, key_id).ok_or_else(missing)?;
    let public_key = Base64::<Standard>::parse(public_key)
        .ok()
        .filter(|k| k.as_bytes().len() == 32)
        .ok_or_else(|| SignatureError::BadKey(key_id.to_owned()))?;
    let signature = Base64::<Standard>::parse(signature).map_err(|_| invalid())?;
    let signed = to_canonical_json_string_for_signing(object).map_err(|_| invalid())?;
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        signed.as_bytes(),
    )
    .map_err(|_| invalid())
}

/// The string at `object[field]`.
pub fn str_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field)? {
        CanonicalJsonValue::String(s) => Some(s),
        _ => None,
    }
}

/// The `keys` map of a key object: key ID → public key.
pub fn keys_of(object: &CanonicalJsonObject) -> Vec<(&str, &str)> {
    match object.get("keys") {
        Some(CanonicalJsonValue::Object(keys)) => keys
            .iter()
            .filter_map(|(id, key)| match key {
                CanonicalJsonValue::String(key) => Some((id.as_str(), key.as_str())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The one ed25519 key of a cross-signing key object: `(key ID, public key)`. A
/// cross-signing key has exactly one key, `ed25519:<unpadded base64 public key>`.
pub fn cross_signing_public_key(object: &CanonicalJsonObject) -> Option<(&str, &str)> {
    match keys_of(object).as_slice() {
        [(id, key)] if id.starts_with("ed25519:") => Some((id, key)),
        _ => None,
    }
}

/// Whether two key objects are the same key: equal apart from `signatures` and `unsigned`.
pub fn same_key(a: &CanonicalJsonObject, b: &CanonicalJsonObject) -> bool {
    let strip = |o: &CanonicalJsonObject| {
        let mut o = o.clone();
        o.remove("signatures");
        o.remove("unsigned");
        o
    };
    strip(a) == strip(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ruma::signatures::{sign_json, Ed25519KeyPair};
    use serde_json::json;

    /// A fresh ed25519 key pair named `name` (the part after `ed25519:`).
    pub(crate) fn key_pair(name: &str) -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&der, name.to_owned()).expect("own DER parses")
    }

    pub(crate) fn public_b64(pair: &Ed25519KeyPair) -> String {
        Base64::<Standard, _>::new(pair.public_key().to_vec()).encode()
    }

    pub(crate) fn object(value: serde_json::Value) -> CanonicalJsonObject {
        canonical_object(&value.to_string()).unwrap()
    }

    fn signed_device_keys(pair: &Ed25519KeyPair) -> CanonicalJsonObject {
        let mut keys = object(json!({
            "user_id": "@alice:x",
            "device_id": "DEV",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { "ed25519:DEV": public_b64(pair), "curve25519:DEV": "Y3VydmU" },
        }));
        sign_json("@alice:x", pair, &mut keys).unwrap();
        keys
    }

    #[test]
    fn a_self_signed_device_key_verifies() {
        let pair = key_pair("DEV");
        let keys = signed_device_keys(&pair);
        assert_eq!(
            verify(&keys, "@alice:x", "ed25519:DEV", &public_b64(&pair)),
            Ok(())
        );
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let pair = key_pair("DEV");
        let mut keys = signed_device_keys(&pair);
        keys.insert(
            "device_id".into(),
            CanonicalJsonValue::String("OTHER".into()),
        );
        assert!(matches!(
            verify(&keys, "@alice:x", "ed25519:DEV", &public_b64(&pair)),
            Err(SignatureError::Invalid(_))
        ));
    }

    #[test]
    fn unsigned_and_other_signatures_are_not_signed() {
        let pair = key_pair("DEV");
        let mut keys = signed_device_keys(&pair);
        keys.insert("unsigned".into(), object(json!({"a": 1})).into());
        let other = key_pair("OTHER");
        sign_json("@bob:x", &other, &mut keys).unwrap();
        assert_eq!(
            verify(&keys, "@alice:x", "ed25519:DEV", &public_b64(&pair)),
            Ok(())
        );
        assert_eq!(
            verify(&keys, "@bob:x", "ed25519:OTHER", &public_b64(&other)),
            Ok(())
        );
    }

    #[test]
    fn another_key_or_signer_or_a_missing_signature_fails() {
        let pair = key_pair("DEV");
        let keys = signed_device_keys(&pair);
        let impostor = key_pair("DEV");
        assert!(matches!(
            verify(&keys, "@alice:x", "ed25519:DEV", &public_b64(&impostor)),
            Err(SignatureError::Invalid(_))
        ));
        assert!(matches!(
            verify(&keys, "@bob:x", "ed25519:DEV", &public_b64(&pair)),
            Err(SignatureError::Missing(_))
        ));
        assert!(matches!(
            verify(&keys, "@alice:x", "ed25519:DEV", "not base64!"),
            Err(SignatureError::BadKey(_))
        ));
        let mut garbled = keys.clone();
        garbled.insert(
            "signatures".into(),
            object(json!({"@alice:x": {"ed25519:DEV": "AAAA"}})).into(),
        );
        assert!(matches!(
            verify(&garbled, "@alice:x", "ed25519:DEV", &public_b64(&pair)),
            Err(SignatureError::Invalid(_))
        ));
    }

    #[test]
    fn cross_signing_keys_have_exactly_one_ed25519_key() {
        assert_eq!(
            cross_signing_public_key(&object(json!({"keys": {"ed25519:abc": "abc"}}))),
            Some(("ed25519:abc", "abc"))
        );
        assert_eq!(cross_signing_public_key(&object(json!({"keys": {}}))), None);
        assert_eq!(
            cross_signing_public_key(&object(
                json!({"keys": {"ed25519:a": "a", "ed25519:b": "b"}})
            )),
            None
        );
        assert_eq!(
            cross_signing_public_key(&object(json!({"keys": {"curve25519:a": "a"}}))),
            None
        );
    }

    #[test]
    fn same_key_ignores_signatures_and_unsigned() {
        let a = object(json!({"keys": {"ed25519:a": "a"}, "signatures": {"x": {}}}));
        let b = object(json!({"keys": {"ed25519:a": "a"}, "unsigned": {"y": 1}}));
        let c = object(json!({"keys": {"ed25519:b": "b"}}));
        assert!(same_key(&a, &b));
        assert!(!same_key(&a, &c));
    }

    #[test]
    fn floats_are_not_canonical() {
        assert!(canonical_object(r#"{"a": 1.5}"#).is_err());
        assert!(canonical_object("[1]").is_err());
        assert_eq!(
            canonical_string(&canonical_object(r#"{ "b": 1, "a": "é" }"#).unwrap()),
            r#"{"a":"é","b":1}"#
        );
    }
}
