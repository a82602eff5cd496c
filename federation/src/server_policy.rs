//! Which servers this one federates with: the operator's allow and deny lists
//! (`federation_allowed_servers`, `federation_denied_servers`). A name matches an entry
//! exactly or by glob (`*` any run of characters, `?` one character), case-insensitively,
//! as server ACLs match; the same matcher will serve `m.room.server_acl`.

/// The operator's federation policy.
#[derive(Debug, Clone, Default)]
pub struct ServerPolicy {
    /// Empty: every server not denied may federate.
    allowed: Vec<String>,
    denied: Vec<String>,
}

impl ServerPolicy {
    pub fn new(allowed: &[String], denied: &[String]) -> ServerPolicy {
        let fold = |list: &[String]| list.iter().map(|s| s.to_ascii_lowercase()).collect();
        ServerPolicy {
            allowed: fold(allowed),
            denied: fold(denied),
        }
    }

    /// Whether `server` (a server name, with its port if it has one) may federate with us.
    /// The deny list wins over the allow list.
    pub fn allows(&self, server: &str) -> bool {
        let server = server.to_ascii_lowercase();
        if self.denied.iter().any(|p| glob_matches(p, &server)) {
            return false;
        }
        self.allowed.is_empty() || self.allowed.iter().any(|p| glob_matches(p, &server))
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?` for
/// exactly one. Iterative with one backtracking point, so no pattern costs more than
/// O(pattern × name).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (pattern, name, expected) in [
            ("example.org", "example.org", true),
            ("example.org", "example.org:8448", false),
            ("*.example.org", "matrix.example.org", true),
            ("*.example.org", "example.org", false),
            ("*", "anything:1", true),
            ("1?7.0.0.1:*", "127.0.0.1:8448", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "", true),
            ("", "x", false),
            ("**", "", true),
        ] {
            assert_eq!(glob_matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn deny_wins_and_empty_allow_means_everyone() {
        let open = ServerPolicy::new(&[], &["Evil.example".to_owned()]);
        assert!(open.allows("good.example"));
        assert!(!open.allows("evil.EXAMPLE"));
        let closed = ServerPolicy::new(
            &["*.corp.example".to_owned()],
            &["bad.corp.example".to_owned()],
        );
        assert!(closed.allows("hq.corp.example"));
        assert!(!closed.allows("bad.corp.example"));
        assert!(!closed.allows("other.example"));
    }
}
