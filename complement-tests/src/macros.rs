//! The [`backend_tests!`](crate::backend_tests) macro.

/// Instantiates scenario functions once per storage backend.
///
/// Each name must be an `async fn name(backend: Backend)` in scope. The macro
/// generates `sqlite::name` and `postgres::name` test functions, so a scenario
/// is written once and `cargo test a07` runs it on both backends, while
/// `cargo test sqlite::` runs one backend.
///
/// Attributes before a name (such as `#[ignore = "server bug: …"]`) are put
/// on both generated tests.
///
/// ```ignore
/// async fn a01_versions(backend: Backend) { /* ... */ }
/// async fn a02_something(backend: Backend) { /* ... */ }
/// complement_tests::backend_tests!(
///     a01_versions,
///     #[ignore = "server bug: …"]
///     a02_something,
/// );
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$meta:meta])* $name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                $(#[$meta])*
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                $(#[$meta])*
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )+
        }
    };
}
