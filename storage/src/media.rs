//! The media repository's rows: media (uploaded, pending, and later cached remote media) and
//! their thumbnails. The bytes live in files the homeserver names by SHA-256; this module only
//! records which media point at which file.

use sqlx::{AssertSqlSafe, Row};

use crate::{Result, Storage};

/// One `mxc://origin/media_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub origin: String,
    pub media_id: String,
    pub uploader: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// `None` while the ID is pending (created, not uploaded).
    pub size: Option<i64>,
    /// Hex SHA-256 naming the file; `None` while pending.
    pub sha256: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub created_ts: i64,
    /// Pending IDs: when the unused ID lapses.
    pub unused_expires_ts: Option<i64>,
}

/// A stored thumbnail of a media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailRow {
    pub width: i64,
    pub height: i64,
    /// `crop` or `scale`.
    pub method: String,
    pub content_type: String,
    pub sha256: String,
    pub size: i64,
}

/// What happened to an upload into a pending media ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingUpload {
    /// The content is now attached to the ID.
    Done,
    /// No such ID, or it lapsed.
    NotFound,
    /// The ID belongs to another user.
    NotOwner,
    /// Content was uploaded to the ID already.
    AlreadyUploaded,
}

const MEDIA_COLUMNS: &str = "origin, media_id, uploader, content_type, filename, size, sha256, \
                             width, height, created_ts, unused_expires_ts";

fn media_from_row(row: &sqlx::any::AnyRow) -> Result<MediaRow> {
    Ok(MediaRow {
        origin: row.try_get("origin")?,
        media_id: row.try_get("media_id")?,
        uploader: row.try_get("uploader")?,
        content_type: row.try_get("content_type")?,
        filename: row.try_get("filename")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        created_ts: row.try_get("created_ts")?,
        unused_expires_ts: row.try_get("unused_expires_ts")?,
    })
}

impl Storage {
    /// Records uploaded media (or, with `sha256` unset, a pending ID).
    pub async fn insert_media(&self, media: &MediaRow) -> Result<()> {
        self.insert_media_row(media, "").await
    }

    /// Records another server's media fetched into the store, unless a concurrent fetch
    /// recorded it first (the same bytes then; the store is content-addressed).
    pub async fn insert_remote_media(&self, media: &MediaRow) -> Result<()> {
        self.insert_media_row(media, "ON CONFLICT (origin, media_id) DO NOTHING")
            .await
    }

    async fn insert_media_row(&self, media: &MediaRow, on_conflict: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO media (origin, media_id, uploader, content_type, filename, size, sha256,
                                width, height, created_ts, unused_expires_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) {on_conflict}"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&media.origin)
            .bind(&media.media_id)
            .bind(&media.uploader)
            .bind(&media.content_type)
            .bind(&media.filename)
            .bind(media.size)
            .bind(&media.sha256)
            .bind(media.width)
            .bind(media.height)
            .bind(media.created_ts)
            .bind(media.unused_expires_ts)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates a pending media ID for `uploader` unless they already have `max_pending` pending
    /// IDs that have not lapsed at `now`; returns whether it was created. The count and the
    /// insert are one transaction, so parallel requests cannot exceed the limit.
    pub async fn create_pending_media(
        &self,
        media: &MediaRow,
        now: i64,
        max_pending: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM media
             WHERE uploader = $1 AND sha256 IS NULL AND unused_expires_ts >= $2",
        )
        .bind(&media.uploader)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if pending >= max_pending {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO media (origin, media_id, uploader, created_ts, unused_expires_ts)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&media.origin)
        .bind(&media.media_id)
        .bind(&media.uploader)
        .bind(media.created_ts)
        .bind(media.unused_expires_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn get_media(&self, origin: &str, media_id: &str) -> Result<Option<MediaRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MEDIA_COLUMNS} FROM media WHERE origin = $1 AND media_id = $2"
        )))
        .bind(origin)
        .bind(media_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(media_from_row).transpose()
    }

    /// Attaches uploaded content to a pending ID, if `uploader` created it, it has no content
    /// yet and it has not lapsed at `now`. The check and the update are one statement, so of two
    /// racing uploads exactly one wins.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_pending_media(
        &self,
        origin: &str,
        media_id: &str,
        uploader: &str,
        content_type: &str,
        filename: Option<&str>,
        size: i64,
        sha256: &str,
        now: i64,
    ) -> Result<PendingUpload> {
        let done = sqlx::query(
            "UPDATE media SET content_type = $4, filename = $5, size = $6, sha256 = $7,
                              unused_expires_ts = NULL
             WHERE origin = $1 AND media_id = $2 AND uploader = $3 AND sha256 IS NULL
               AND unused_expires_ts >= $8",
        )
        .bind(origin)
        .bind(media_id)
        .bind(uploader)
        .bind(content_type)
        .bind(filename)
        .bind(size)
        .bind(sha256)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(PendingUpload::Done);
        }
        Ok(match self.get_media(origin, media_id).await? {
            None => PendingUpload::NotFound,
            Some(row) if row.sha256.is_some() => PendingUpload::AlreadyUploaded,
            Some(row) if row.uploader.as_deref() != Some(uploader) => PendingUpload::NotOwner,
            Some(_) => PendingUpload::NotFound,
        })
    }

    /// Forgets pending IDs that lapsed before `now`.
    pub async fn expire_pending_media(&self, now: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Records the decoded dimensions of an image.
    pub async fn set_media_dimensions(
        &self,
        origin: &str,
        media_id: &str,
        width: i64,
        height: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE media SET width = $3, height = $4 WHERE origin = $1 AND media_id = $2")
            .bind(origin)
            .bind(media_id)
            .bind(width)
            .bind(height)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every stored thumbnail of a media.
    pub async fn media_thumbnails(
        &self,
        origin: &str,
        media_id: &str,
    ) -> Result<Vec<ThumbnailRow>> {
        let rows = sqlx::query(
            "SELECT width, height, method, content_type, sha256, size FROM media_thumbnails
             WHERE origin = $1 AND media_id = $2",
        )
        .bind(origin)
        .bind(media_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ThumbnailRow {
                    width: row.try_get("width")?,
                    height: row.try_get("height")?,
                    method: row.try_get("method")?,
                    content_type: row.try_get("content_type")?,
                    sha256: row.try_get("sha256")?,
                    size: row.try_get("size")?,
                })
            })
            .collect()
    }

    /// Records a thumbnail; one made concurrently with the same key wins and this is a no-op.
    pub async fn insert_media_thumbnail(
        &self,
        origin: &str,
        media_id: &str,
        thumbnail: &ThumbnailRow,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO media_thumbnails (origin, media_id, width, height, method, content_type,
                                           sha256, size, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING",
        )
        .bind(origin)
        .bind(media_id)
        .bind(thumbnail.width)
        .bind(thumbnail.height)
        .bind(&thumbnail.method)
        .bind(&thumbnail.content_type)
        .bind(&thumbnail.sha256)
        .bind(thumbnail.size)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_storage() -> (std::path::PathBuf, Storage) {
        let dir = std::env::temp_dir().join(format!(
            "myelin-media-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let storage = Storage::connect(&Storage::sqlite_url_in(&dir))
            .await
            .unwrap();
        (dir, storage)
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn pending(id: &str, user: &str, expires: i64) -> MediaRow {
        MediaRow {
            origin: "x".into(),
            media_id: id.into(),
            uploader: Some(user.into()),
            content_type: None,
            filename: None,
            size: None,
            sha256: None,
            width: None,
            height: None,
            created_ts: 0,
            unused_expires_ts: Some(expires),
        }
    }

    #[tokio::test]
    async fn pending_uploads_are_limited_owned_and_written_once() {
        let (dir, s) = temp_storage().await;
        assert!(s
            .create_pending_media(&pending("a", "@u:x", 100), 0, 2)
            .await
            .unwrap());
        assert!(s
            .create_pending_media(&pending("b", "@u:x", 100), 0, 2)
            .await
            .unwrap());
        assert!(!s
            .create_pending_media(&pending("c", "@u:x", 100), 0, 2)
            .await
            .unwrap());
        // Lapsed IDs do not count.
        assert!(s
            .create_pending_media(&pending("c", "@u:x", 200), 101, 2)
            .await
            .unwrap());

        let complete = |id: &'static str, user: &'static str, now: i64| {
            let s = s.clone();
            async move {
                s.complete_pending_media("x", id, user, "text/plain", None, 3, "ab", now)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(complete("a", "@v:x", 1).await, PendingUpload::NotOwner);
        assert_eq!(complete("a", "@u:x", 1).await, PendingUpload::Done);
        assert_eq!(
            complete("a", "@u:x", 1).await,
            PendingUpload::AlreadyUploaded
        );
        assert_eq!(complete("b", "@u:x", 101).await, PendingUpload::NotFound);
        assert_eq!(complete("zz", "@u:x", 1).await, PendingUpload::NotFound);
        assert_eq!(s.expire_pending_media(101).await.unwrap(), 1);
        let a = s.get_media("x", "a").await.unwrap().unwrap();
        assert_eq!(a.sha256.as_deref(), Some("ab"));
        assert_eq!(a.unused_expires_ts, None);

        let thumb = ThumbnailRow {
            width: 32,
            height: 32,
            method: "crop".into(),
            content_type: "image/png".into(),
            sha256: "cd".into(),
            size: 10,
        };
        s.insert_media_thumbnail("x", "a", &thumb, 1).await.unwrap();
        s.insert_media_thumbnail("x", "a", &thumb, 2).await.unwrap();
        assert_eq!(s.media_thumbnails("x", "a").await.unwrap(), vec![thumb]);
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
