//! Reports users make to the server's admins, and OpenID tokens for third parties.

use sqlx::Row;

use crate::{Result, Storage};

/// A report to store: exactly one of an event (with its room), a room, or a user.
#[derive(Debug, Clone, Default)]
pub struct NewReport<'a> {
    pub reporter: &'a str,
    pub room_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub target_user_id: Option<&'a str>,
    pub reason: &'a str,
    pub score: Option<i64>,
}

/// A stored report.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub report_id: i64,
    pub received_ts: i64,
    pub reporter: String,
    pub room_id: Option<String>,
    pub event_id: Option<String>,
    pub target_user_id: Option<String>,
    pub reason: String,
    pub score: Option<i64>,
}

impl Storage {
    /// Stores a report; returns its ID once committed.
    pub async fn add_report(&self, report: &NewReport<'_>, now: i64) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO reports (received_ts, reporter, room_id, event_id, target_user_id, reason, score)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING report_id",
        )
        .bind(now)
        .bind(report.reporter)
        .bind(report.room_id)
        .bind(report.event_id)
        .bind(report.target_user_id)
        .bind(report.reason)
        .bind(report.score)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("report_id")?)
    }

    /// Reports, oldest first, after `after` (a report ID), at most `limit`.
    pub async fn reports(&self, after: i64, limit: i64) -> Result<Vec<ReportRow>> {
        let rows = sqlx::query(
            "SELECT report_id, received_ts, reporter, room_id, event_id, target_user_id, reason, score
             FROM reports WHERE report_id > $1 ORDER BY report_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportRow {
                    report_id: r.try_get("report_id")?,
                    received_ts: r.try_get("received_ts")?,
                    reporter: r.try_get("reporter")?,
                    room_id: r.try_get("room_id")?,
                    event_id: r.try_get("event_id")?,
                    target_user_id: r.try_get("target_user_id")?,
                    reason: r.try_get("reason")?,
                    score: r.try_get("score")?,
                })
            })
            .collect()
    }

    /// Stores an OpenID token (by its hash) for `user_id` until `expires_ts`, removing
    /// expired ones on the way.
    pub async fn add_openid_token(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_ts: i64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM openid_tokens WHERE expires_ts <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user an unexpired OpenID token (by its hash) was issued to.
    pub async fn openid_token_user(&self, token_hash: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(r.try_get("user_id")?)).transpose()
    }
}
