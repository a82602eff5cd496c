//! Each user's push rules: where they live, the cache in front of them, and the changes the
//! rules API makes to them.
//!
//! A user's rules are their `m.push_rules` global account data, `{"global": <ruleset>}`, the
//! form Synapse stores and clients read from `/sync`. A user who never changed a rule has no
//! row: their rules are ruma's server-default ruleset for their user ID. A stored ruleset is
//! merged with the current server defaults when it is read
//! (`Ruleset::update_with_server_default`), so a newer ruma's predefined rules reach users
//! who changed something, with their `enabled` and `actions` kept.
//!
//! Changes are read-modify-write of the whole ruleset; they are serialised by one lock (rule
//! changes are rare, evaluation never takes it), so two concurrent changes never lose one.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::{
    api::client::push::PushRule,
    push::{Action, InsertPushRuleError, NewPushRule, RemovePushRuleError, RuleKind, Ruleset},
    UserId,
};

use crate::{
    cache::ClearingCache,
    error::{Error, Result},
    AppState,
};

/// The account data type the rules are stored as.
pub const PUSH_RULES: &str = "m.push_rules";

/// Most user-defined rules (all kinds together) a user may have. Every rule is evaluated for
/// every event in every room the user is in, so the number is bounded.
pub const MAX_USER_RULES: usize = 300;

/// Largest one rule may be, serialised (rule ID, pattern, conditions, actions).
pub const MAX_RULE_BYTES: usize = 4096;

/// How much memory the cached rulesets may hold.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The rulesets of users, cached: evaluation reads them for every event.
pub struct PushRules {
    cache: ClearingCache<String, Cached>,
    /// Serialises changes (read, modify, store, cache). A tokio mutex: held across the
    /// storage write.
    write: tokio::sync::Mutex<()>,
}

impl Default for PushRules {
    fn default() -> Self {
        PushRules {
            cache: ClearingCache::new(CACHE_BYTES, weigh),
            write: tokio::sync::Mutex::new(()),
        }
    }
}

/// A user's rules as the cache holds them.
#[derive(Clone)]
struct Cached {
    rules: Arc<Ruleset>,
    /// Whether the rules are exactly the server defaults for the user (see
    /// [`PushRules::get_for_evaluation`]).
    server_default: bool,
}

impl Cached {
    fn new(user_id: &UserId, rules: Ruleset) -> Self {
        let server_default = is_server_default(user_id, &rules);
        Cached {
            rules: Arc::new(rules),
            server_default,
        }
    }
}

/// Whether `rules` are the server-default rules of `user_id`, rule for rule, in order, with
/// the same `enabled` flags and actions.
pub fn is_server_default(user_id: &UserId, rules: &Ruleset) -> bool {
    match (
        serde_json::to_value(rules),
        serde_json::to_value(Ruleset::server_default(user_id)),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// An estimate of a ruleset's heap: a rule with its conditions is a few hundred bytes.
#[allow(clippy::ptr_arg)] // a weigher is a `fn(&K, &V)` with `K = String`
fn weigh(user: &String, cached: &Cached) -> usize {
    user.len() + cached.rules.iter().count() * 400
}

/// The stored form, `{"global": ruleset}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    global: Ruleset,
}

/// Parses stored rules and merges them with the current server defaults; the defaults
/// alone if there is nothing stored (or, logged, if it cannot be read).
pub fn effective(user_id: &UserId, stored: Option<&str>) -> Ruleset {
    let default = Ruleset::server_default(user_id);
    let Some(text) = stored else {
        return default;
    };
    match serde_json::from_str::<Stored>(text) {
        Ok(Stored { mut global }) => {
            global.update_with_server_default(default);
            global
        }
        Err(e) => {
            tracing::warn!(user = %user_id, error = %e, "stored push rules unreadable; using the defaults");
            default
        }
    }
}

/// The content of `m.push_rules` account data for `rules`.
pub fn account_data_content(rules: &Ruleset) -> Result<String> {
    serde_json::to_string(&serde_json::json!({ "global": rules })).map_err(Error::internal)
}

impl PushRules {
    /// The user's current rules.
    pub async fn get(&self, state: &AppState, user_id: &UserId) -> Result<Arc<Ruleset>> {
        Ok(self.cached(state, user_id).await?.rules)
    }

    /// The user's current rules, and whether they are exactly the server defaults for the
    /// user (then the user's outcome for an event can be shared with other such users, see
    /// `push::eval`).
    pub async fn get_for_evaluation(
        &self,
        state: &AppState,
        user_id: &UserId,
    ) -> Result<(Arc<Ruleset>, bool)> {
        let cached = self.cached(state, user_id).await?;
        Ok((cached.rules, cached.server_default))
    }

    async fn cached(&self, state: &AppState, user_id: &UserId) -> Result<Cached> {
        if let Some(cached) = self.cache.get(&user_id.as_str().to_owned()) {
            return Ok(cached);
        }
        // Read the generation before storage: a change committed meanwhile bumps it, and the
        // value read here is then not kept.
        let generation = self.cache.generation();
        let stored = state
            .storage
            .get_account_data(user_id.as_str(), None, PUSH_RULES)
            .await?;
        let cached = Cached::new(user_id, effective(user_id, stored.as_deref()));
        self.cache
            .insert_if_current(generation, user_id.as_str().to_owned(), cached.clone());
        Ok(cached)
    }

    /// Applies `change` to the user's rules and stores the result as their `m.push_rules`
    /// account data (which wakes their syncs); the cache holds the new rules from then on.
    pub async fn update(
        &self,
        state: &AppState,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.write.lock().await;
        let mut rules = (*self.get(state, user_id).await?).clone();
        change(&mut rules)?;
        let content = account_data_content(&rules)?;
        crate::api::client::write_account_data(state, user_id, None, PUSH_RULES, &content).await?;
        self.cache
            .replace(user_id.as_str().to_owned(), Cached::new(user_id, rules));
        Ok(())
    }
}

/// `kind` as one the rules API serves: the five of the spec (`postcontent` is unstable).
pub fn check_kind(kind: &RuleKind) -> Result<()> {
    match kind {
        RuleKind::Override
        | RuleKind::Underride
        | RuleKind::Sender
        | RuleKind::Room
        | RuleKind::Content => Ok(()),
        other => Err(Error::invalid_param(format!(
            "Unknown push rule kind: {other}"
        ))),
    }
}

fn unknown_rule() -> Error {
    Error::not_found("Unknown push rule")
}

/// One rule, as the API shows it.
pub fn find(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<PushRule> {
    check_kind(kind)?;
    rules
        .get(kind.clone(), rule_id)
        .map(|r| PushRule::from(r.to_owned()))
        .ok_or_else(unknown_rule)
}

/// Adds or replaces a user-defined rule (`PUT /pushrules/global/{kind}/{ruleId}`), checking
/// its size and the user's rule count.
pub fn insert(
    rules: &mut Ruleset,
    rule: NewPushRule,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<()> {
    if let NewPushRule::Content(r) = &rule {
        if r.pattern.is_empty() {
            return Err(Error::invalid_param(
                "A content rule needs a non-empty pattern",
            ));
        }
    }
    let kind = rule.kind();
    let rule_id = rule.rule_id().to_owned();
    if rule_id.is_empty() {
        return Err(Error::invalid_param("The rule ID must not be empty"));
    }
    let is_new = rules.get(kind.clone(), &rule_id).is_none();
    if is_new && user_rule_count(rules) >= MAX_USER_RULES {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            format!("A user may have at most {MAX_USER_RULES} push rules"),
        ));
    }
    // ruma moves an existing rule in place and panics when `after` names the last rule of
    // its kind; take the rule out first (keeping whether it was enabled), so it is placed
    // like a new one. On an error the caller drops the whole changed ruleset.
    let was_enabled = match rules.get(kind.clone(), &rule_id) {
        Some(old) if !old.is_server_default() && (before.is_some() || after.is_some()) => {
            let enabled = old.enabled();
            let _ = rules.remove(kind.clone(), &rule_id);
            Some(enabled)
        }
        _ => None,
    };
    let inserted = rules.insert(rule, after, before);
    if let (Ok(()), Some(enabled)) = (&inserted, was_enabled) {
        let _ = rules.set_enabled(kind.clone(), &rule_id, enabled);
    }
    inserted.map_err(|e| match e {
        InsertPushRuleError::ServerDefaultRuleId => {
            Error::invalid_param("Rule IDs starting with '.' are reserved for server-default rules")
        }
        InsertPushRuleError::InvalidRuleId => {
            Error::invalid_param("Rule IDs may not contain '/' or '\\'")
        }
        InsertPushRuleError::RelativeToServerDefaultRule => {
            Error::invalid_param("A rule cannot be placed relative to a server-default rule")
        }
        InsertPushRuleError::UnknownRuleId => Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "before/after rule not found",
        ),
        InsertPushRuleError::BeforeHigherThanAfter => {
            Error::invalid_param("'before' has a higher priority than 'after'")
        }
        other => Error::invalid_param(other.to_string()),
    })?;
    let size = rules
        .get(kind, &rule_id)
        .map(|r| serde_json::to_vec(&PushRule::from(r.to_owned())).map_or(0, |v| v.len()))
        .unwrap_or(0);
    if size > MAX_RULE_BYTES {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            format!("A push rule may be at most {MAX_RULE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The number of rules the user made (not server-default).
fn user_rule_count(rules: &Ruleset) -> usize {
    rules.iter().filter(|r| !r.is_server_default()).count()
}

/// Deletes a user-defined rule; server-default rules cannot be deleted.
pub fn remove(rules: &mut Ruleset, kind: &RuleKind, rule_id: &str) -> Result<()> {
    check_kind(kind)?;
    rules.remove(kind.clone(), rule_id).map_err(|e| match e {
        RemovePushRuleError::ServerDefault => {
            Error::invalid_param("Server-default rules cannot be deleted")
        }
        _ => unknown_rule(),
    })
}

pub fn set_enabled(
    rules: &mut Ruleset,
    kind: &RuleKind,
    rule_id: &str,
    enabled: bool,
) -> Result<()> {
    check_kind(kind)?;
    rules
        .set_enabled(kind.clone(), rule_id, enabled)
        .map_err(|_| unknown_rule())
}

pub fn set_actions(
    rules: &mut Ruleset,
    kind: &RuleKind,
    rule_id: &str,
    actions: Vec<Action>,
) -> Result<()> {
    check_kind(kind)?;
    if serde_json::to_vec(&actions).map_or(0, |v| v.len()) > MAX_RULE_BYTES {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            format!("A push rule may be at most {MAX_RULE_BYTES} bytes"),
        ));
    }
    rules
        .set_actions(kind.clone(), rule_id, actions)
        .map_err(|_| unknown_rule())
}

#[cfg(test)]
mod tests {
    use ruma::{
        push::{NewConditionalPushRule, NewPatternedPushRule, NewSimplePushRule},
        user_id,
    };

    use super::*;

    fn keyword(id: &str) -> NewPushRule {
        NewPushRule::Content(NewPatternedPushRule::new(
            id.to_owned(),
            "cake".to_owned(),
            vec![Action::Notify],
        ))
    }

    fn ids(rules: &Ruleset) -> Vec<String> {
        rules.content.iter().map(|r| r.rule_id.clone()).collect()
    }

    #[test]
    fn nothing_stored_is_the_server_default() {
        let user = user_id!("@alice:example.org");
        let rules = effective(user, None);
        assert_eq!(
            rules.override_.first().map(|r| r.rule_id.as_str()),
            Some(".m.rule.master")
        );
        assert!(rules.iter().all(|r| r.is_server_default()));
    }

    #[test]
    fn stored_rules_keep_their_changes_and_gain_new_defaults() {
        let user = user_id!("@alice:example.org");
        let mut rules = Ruleset::server_default(user);
        rules
            .set_enabled(RuleKind::Override, ".m.rule.master", true)
            .unwrap();
        insert(&mut rules, keyword("mine"), None, None).unwrap();
        // Drop a default, as if it were new in a later ruma.
        rules.underride.shift_remove(".m.rule.message");
        let content = account_data_content(&rules).unwrap();
        let read = effective(user, Some(&content));
        assert!(read
            .get(RuleKind::Override, ".m.rule.master")
            .unwrap()
            .enabled());
        assert!(read.get(RuleKind::Content, "mine").is_some());
        assert!(read.get(RuleKind::Underride, ".m.rule.message").is_some());
        // Unreadable content falls back to the defaults.
        assert!(effective(user, Some("{\"global\": 5}"))
            .get(RuleKind::Content, "mine")
            .is_none());
    }

    #[test]
    fn before_and_after_place_rules_and_name_existing_ones() {
        let mut rules = Ruleset::server_default(user_id!("@a:x"));
        insert(&mut rules, keyword("a"), None, None).unwrap();
        insert(&mut rules, keyword("b"), None, None).unwrap();
        assert_eq!(ids(&rules), ["b", "a"]);
        insert(&mut rules, keyword("c"), None, Some("a")).unwrap();
        assert_eq!(ids(&rules), ["b", "a", "c"]);
        insert(&mut rules, keyword("d"), Some("b"), None).unwrap();
        assert_eq!(ids(&rules), ["d", "b", "a", "c"]);
        // Moving an existing rule after the last one (ruma alone panics here).
        set_enabled(&mut rules, &RuleKind::Content, "d", false).unwrap();
        insert(&mut rules, keyword("d"), None, Some("c")).unwrap();
        assert_eq!(ids(&rules), ["b", "a", "c", "d"]);
        assert!(!find(&rules, &RuleKind::Content, "d").unwrap().enabled);
        let e = insert(&mut rules, keyword("e"), Some("nope"), None).unwrap_err();
        assert!(format!("{e:?}").contains("M_UNKNOWN"));
        let e = insert(&mut rules, keyword(".m.rule.x"), None, None).unwrap_err();
        assert!(format!("{e:?}").contains("M_INVALID_PARAM"));
    }

    #[test]
    fn defaults_cannot_be_deleted_but_can_be_changed() {
        let mut rules = Ruleset::server_default(user_id!("@a:x"));
        let e = remove(&mut rules, &RuleKind::Override, ".m.rule.master").unwrap_err();
        assert!(format!("{e:?}").contains("M_INVALID_PARAM"));
        let e = remove(&mut rules, &RuleKind::Override, "nope").unwrap_err();
        assert!(format!("{e:?}").contains("M_NOT_FOUND"));
        set_enabled(&mut rules, &RuleKind::Underride, ".m.rule.message", false).unwrap();
        set_actions(&mut rules, &RuleKind::Underride, ".m.rule.message", vec![]).unwrap();
        let r = find(&rules, &RuleKind::Underride, ".m.rule.message").unwrap();
        assert!(!r.enabled && r.actions.is_empty() && r.default);
    }

    #[test]
    fn the_rule_count_and_size_are_capped() {
        let mut rules = Ruleset::server_default(user_id!("@a:x"));
        for i in 0..MAX_USER_RULES {
            let rule = NewPushRule::Room(NewSimplePushRule::new(
                format!("!r{i}:x").try_into().unwrap(),
                vec![],
            ));
            insert(&mut rules, rule, None, None).unwrap();
        }
        assert!(insert(&mut rules, keyword("one-more"), None, None).is_err());
        // Replacing an existing rule is still allowed.
        let rule = NewPushRule::Room(NewSimplePushRule::new("!r0:x".try_into().unwrap(), vec![]));
        insert(&mut rules, rule, None, None).unwrap();

        let mut rules = Ruleset::server_default(user_id!("@a:x"));
        let huge = NewPushRule::Override(NewConditionalPushRule::new(
            "huge".to_owned(),
            vec![],
            vec![Action::Notify; 2000],
        ));
        let e = insert(&mut rules, huge, None, None).unwrap_err();
        assert!(format!("{e:?}").contains("M_TOO_LARGE"));
    }
}
