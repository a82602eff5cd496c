//! The key backup replacement rule.
//!
//! <https://spec.matrix.org/latest/client-server-api/#backup-algorithm-mmegolm_backupv1curve25519-aes-sha2>
//! ("When a client uploads a key for a session that the server already has a key for…")
//!
//! The server keeps the stored key, rather than the uploaded one, when:
//! 1. their `is_verified` differ: keep the one that is verified;
//! 2. otherwise, when their `first_message_index` differ: keep the lower one (it decrypts more
//!    of the session);
//! 3. otherwise keep the one with the lower `forwarded_count` (fewer hops, more trusted);
//!    on a tie the upload replaces the stored key.

/// The fields of a backed-up key that decide which copy the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyQuality {
    pub is_verified: bool,
    pub first_message_index: u64,
    pub forwarded_count: u64,
}

/// Whether the stored key stays when `uploaded` arrives for the same session.
pub fn keep_stored(stored: KeyQuality, uploaded: KeyQuality) -> bool {
    // 1. A verified key beats an unverified one.
    if stored.is_verified != uploaded.is_verified {
        return stored.is_verified;
    }
    // 2. A lower first message index decrypts more.
    if stored.first_message_index != uploaded.first_message_index {
        return stored.first_message_index < uploaded.first_message_index;
    }
    // 3. Fewer forwards; a tie lets the upload replace the stored key.
    stored.forwarded_count < uploaded.forwarded_count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(is_verified: bool, first_message_index: u64, forwarded_count: u64) -> KeyQuality {
        KeyQuality {
            is_verified,
            first_message_index,
            forwarded_count,
        }
    }

    #[test]
    fn replacement_follows_the_spec_order() {
        // (stored, uploaded, stored is kept)
        let cases = [
            // 1. verification decides first, whatever the other fields say
            (q(true, 10, 5), q(false, 0, 0), true),
            (q(false, 0, 0), q(true, 10, 5), false),
            // 2. then the first message index
            (q(true, 1, 5), q(true, 2, 0), true),
            (q(false, 3, 0), q(false, 2, 5), false),
            // 3. then the forwarded count
            (q(false, 2, 1), q(false, 2, 2), true),
            (q(true, 2, 3), q(true, 2, 2), false),
            // a tie: the upload replaces
            (q(true, 2, 2), q(true, 2, 2), false),
        ];
        for (stored, uploaded, kept) in cases {
            assert_eq!(
                keep_stored(stored, uploaded),
                kept,
                "stored {stored:?}, uploaded {uploaded:?}"
            );
        }
    }
}
