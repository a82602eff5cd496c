//! The server's ed25519 signing key.
//!
//! The key is generated once with ed25519-dalek and kept (as its 32-byte seed) in storage by the
//! homeserver; every later start loads the same seed, so the key ID and public key never change
//! across restarts. Signing goes through ruma's canonical-JSON signing so that what we sign is
//! byte-for-byte what every other homeserver verifies.

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ed25519_dalek::{pkcs8::EncodePrivateKey, SigningKey};
use rand::{distributions::Alphanumeric, rngs::OsRng, Rng};
use ruma::{
    serde::Base64,
    signatures::{sign_json, Ed25519KeyPair},
    CanonicalJsonObject, CanonicalJsonValue,
};

/// Why a stored key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key seed is not valid base64 of 32 bytes")]
    BadSeed,
    #[error("signing key id {0:?} is not of the form ed25519:<version>")]
    BadKeyId(String),
    #[error("could not build the key pair: {0}")]
    KeyPair(String),
    #[error("could not sign: {0}")]
    Sign(String),
}

/// The server's signing key: an ed25519 key pair plus its key ID (`ed25519:<version>`).
pub struct ServerSigningKey {
    key_id: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed.
        f.debug_struct("ServerSigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ServerSigningKey {
    /// Generates a new key with a random version, `ed25519:a_XXXX` as Synapse names them.
    pub fn generate() -> Self {
        let signing_key = SigningKey::generate(&mut OsRng);
        let version: String = OsRng
            .sample_iter(&Alphanumeric)
            .take(4)
            .map(char::from)
            .collect();
        Self::from_seed(format!("ed25519:a_{version}"), signing_key.to_bytes())
            .expect("a freshly generated key is valid")
    }

    /// Loads a key from its ID and the unpadded base64 of its seed, as stored.
    pub fn from_stored(key_id: &str, seed_base64: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD_NO_PAD
            .decode(seed_base64.trim_end_matches('='))
            .map_err(|_| KeyError::BadSeed)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadSeed)?;
        Self::from_seed(key_id.to_owned(), seed)
    }

    fn from_seed(key_id: String, seed: [u8; 32]) -> Result<Self, KeyError> {
        let version = key_id
            .strip_prefix("ed25519:")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KeyError::BadKeyId(key_id.clone()))?
            .to_owned();
        let der = SigningKey::from_bytes(&seed)
            .to_pkcs8_der()
            .map_err(|e| KeyError::KeyPair(e.to_string()))?;
        let pair = Ed25519KeyPair::from_der(der.as_bytes(), version)
            .map_err(|e| KeyError::KeyPair(e.to_string()))?;
        Ok(Self { key_id, seed, pair })
    }

    /// The key pair, for ruma's signing functions.
    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// The key ID, e.g. `ed25519:a_AbCd`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The seed as unpadded base64, the form it is stored in.
    pub fn seed_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.seed)
    }

    /// The public key as unpadded base64, the form the protocol publishes.
    pub fn public_key_base64(&self) -> String {
        Base64::<ruma::serde::base64::Standard, _>::new(self.pair.public_key().to_vec()).encode()
    }

    /// Adds this server's signature to `object` under `signatures.<server_name>.<key_id>`.
    pub fn sign_json(
        &self,
        server_name: &str,
        object: &mut CanonicalJsonObject,
    ) -> Result<(), KeyError> {
        sign_json(server_name, &self.pair, object).map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// The body of `GET /_matrix/key/v2/server`: this server's verify key, self-signed, valid
    /// until `valid_until_ts` (ms since the epoch).
    pub fn server_keys_document(
        &self,
        server_name: &str,
        valid_until_ts: u64,
    ) -> Result<CanonicalJsonObject, KeyError> {
        let mut verify_key = CanonicalJsonObject::new();
        verify_key.insert(
            "key".into(),
            CanonicalJsonValue::String(self.public_key_base64()),
        );
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(self.key_id.clone(), CanonicalJsonValue::Object(verify_key));
        let mut doc = CanonicalJsonObject::new();
        doc.insert(
            "server_name".into(),
            CanonicalJsonValue::String(server_name.to_owned()),
        );
        doc.insert(
            "verify_keys".into(),
            CanonicalJsonValue::Object(verify_keys),
        );
        doc.insert(
            "old_verify_keys".into(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
        let ts = ruma::UInt::new(valid_until_ts)
            .ok_or_else(|| KeyError::Sign("timestamp out of range".into()))?;
        doc.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(ts.into()),
        );
        self.sign_json(server_name, &mut doc)?;
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::signatures::{verify_json, PublicKeyMap, PublicKeySet};

    #[test]
    fn stored_key_round_trips() {
        let key = ServerSigningKey::generate();
        let loaded = ServerSigningKey::from_stored(key.key_id(), &key.seed_base64()).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
        assert_eq!(loaded.public_key_base64(), key.public_key_base64());
        assert!(key.key_id().starts_with("ed25519:a_"));
    }

    #[test]
    fn rejects_bad_stored_keys() {
        assert!(matches!(
            ServerSigningKey::from_stored("ed25519:x", "not base64!"),
            Err(KeyError::BadSeed)
        ));
        assert!(matches!(
            ServerSigningKey::from_stored("ed25519:x", "AAAA"),
            Err(KeyError::BadSeed)
        ));
        let key = ServerSigningKey::generate();
        assert!(matches!(
            ServerSigningKey::from_stored("rsa:x", &key.seed_base64()),
            Err(KeyError::BadKeyId(_))
        ));
    }

    #[test]
    fn server_keys_document_verifies_with_its_own_key() {
        let key = ServerSigningKey::generate();
        let doc = key
            .server_keys_document("example.org", 1_700_000_000_000)
            .unwrap();
        let mut keys = PublicKeySet::new();
        keys.insert(
            key.key_id().to_owned(),
            Base64::parse(key.public_key_base64()).unwrap(),
        );
        let mut map = PublicKeyMap::new();
        map.insert("example.org".into(), keys);
        verify_json(&map, &doc).expect("self-signature verifies");

        // A changed field breaks the signature.
        let mut tampered = doc.clone();
        tampered.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(1u32.into()),
        );
        assert!(verify_json(&map, &tampered).is_err());
    }
}
