//! The [`backend_tests!`](crate::backend_tests) macro.

/// Instantiates scenario functions once per storage backend.
///
/// Each name must be an `async fn name(backend: Backend)` in scope. The macro
/// generates `sqlite::name` and `postgres::name` test functions, so a scenario
/// is written once and `cargo test a07` runs it on both backends, while
/// `cargo test sqlite::` runs one backend.
///
/// ```ignore
/// async fn a01_versions(backend: Backend) { /* ... */ }
/// complement_tests::backend_tests!(a01_versions);
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )+
        }
    };
}
