//! Rate limits for login, registration, the shared-secret registration nonce and to-device
//! sends: token buckets keyed by client IP or account, answered with `429 M_LIMIT_EXCEEDED`
//! and `retry_after_ms`.
//!
//! The buckets live in process memory (governor's keyed limiter). With several server
//! processes each enforces its own share, which is the usual trade-off: limits are a defence
//! against floods, not an exact accounting.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultKeyedRateLimiter, Quota, RateLimiter,
};

use crate::{config::RateLimits, error::Error};

/// The limiters; each `check_*` consumes one unit for its key.
pub struct RateLimiters {
    enabled: bool,
    login_ip: DefaultKeyedRateLimiter<String>,
    login_account: DefaultKeyedRateLimiter<String>,
    failed_login: DefaultKeyedRateLimiter<String>,
    registration_ip: DefaultKeyedRateLimiter<String>,
    /// `GET /_synapse/admin/v1/register` needs no authentication and writes a row.
    registration_nonce_ip: DefaultKeyedRateLimiter<String>,
    /// `PUT /sendToDevice`, per sending user: each request may queue megabytes in other
    /// users' inboxes.
    to_device_user: DefaultKeyedRateLimiter<String>,
}

fn quota(per_second: f64, burst: u32) -> Quota {
    // Config validation guarantees per_second > 0 and burst >= 1.
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("period is non-zero")
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

fn check(
    enabled: bool,
    limiter: &DefaultKeyedRateLimiter<String>,
    key: String,
) -> Result<(), Error> {
    if !enabled {
        return Ok(());
    }
    limiter.check_key(&key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Error::limit_exceeded(wait.as_millis().max(1) as u64)
    })
}

impl RateLimiters {
    pub fn new(config: &RateLimits) -> Self {
        RateLimiters {
            enabled: config.enabled,
            login_ip: RateLimiter::keyed(quota(config.login_per_second, config.login_burst)),
            login_account: RateLimiter::keyed(quota(config.login_per_second, config.login_burst)),
            failed_login: RateLimiter::keyed(quota(
                config.failed_login_per_second,
                config.failed_login_burst,
            )),
            registration_ip: RateLimiter::keyed(quota(
                config.registration_per_second,
                config.registration_burst,
            )),
            registration_nonce_ip: RateLimiter::keyed(quota(
                config.registration_nonce_per_second,
                config.registration_nonce_burst,
            )),
            to_device_user: RateLimiter::keyed(quota(
                config.to_device_per_second,
                config.to_device_burst,
            )),
        }
    }

    /// Every login attempt, per client address.
    pub fn check_login_ip(&self, ip: std::net::IpAddr) -> Result<(), Error> {
        check(self.enabled, &self.login_ip, ip.to_string())
    }

    /// Every login attempt, per account being logged into.
    pub fn check_login_account(&self, user_id: &str) -> Result<(), Error> {
        check(self.enabled, &self.login_account, user_id.to_owned())
    }

    /// A failed login (wrong password) for an account.
    pub fn check_failed_login(&self, user_id: &str) -> Result<(), Error> {
        check(self.enabled, &self.failed_login, user_id.to_owned())
    }

    /// Every registration request, per client address.
    pub fn check_registration_ip(&self, ip: std::net::IpAddr) -> Result<(), Error> {
        check(self.enabled, &self.registration_ip, ip.to_string())
    }

    /// Every request for a shared-secret registration nonce, per client address.
    pub fn check_registration_nonce_ip(&self, ip: std::net::IpAddr) -> Result<(), Error> {
        check(self.enabled, &self.registration_nonce_ip, ip.to_string())
    }

    /// Every to-device send, per sending user.
    pub fn check_to_device(&self, user_id: &str) -> Result<(), Error> {
        check(self.enabled, &self.to_device_user, user_id.to_owned())
    }

    /// Drops buckets that are full again, so memory does not grow with every address seen.
    pub fn forget_idle(&self) {
        for limiter in [
            &self.login_ip,
            &self.login_account,
            &self.failed_login,
            &self.registration_ip,
            &self.registration_nonce_ip,
            &self.to_device_user,
        ] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(enabled: bool) -> RateLimits {
        RateLimits {
            enabled,
            login_per_second: 0.1,
            login_burst: 2,
            failed_login_per_second: 0.1,
            failed_login_burst: 1,
            registration_per_second: 0.1,
            registration_burst: 3,
            registration_nonce_per_second: 0.1,
            registration_nonce_burst: 1,
            to_device_per_second: 0.1,
            to_device_burst: 1,
        }
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let l = RateLimiters::new(&limits(true));
        let ip = "127.0.0.1".parse().unwrap();
        assert!(l.check_login_ip(ip).is_ok());
        assert!(l.check_login_ip(ip).is_ok());
        match l.check_login_ip(ip) {
            Err(Error::Matrix(m)) => {
                assert_eq!(m.status, 429);
                assert_eq!(m.body["errcode"], "M_LIMIT_EXCEEDED");
                let retry = m.body["retry_after_ms"].as_u64().unwrap();
                assert!(retry > 0 && retry <= 10_000, "{retry}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Another address has its own bucket.
        assert!(l.check_login_ip("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn disabled_never_limits() {
        let l = RateLimiters::new(&limits(false));
        for _ in 0..100 {
            assert!(l.check_failed_login("@a:b").is_ok());
        }
    }
}
