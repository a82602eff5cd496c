//! `user` commands: account management. `user create` registers a local user
//! through the shared-secret registration endpoint.

use crate::cli::{CreateUser, GlobalOpts};
use crate::client::AdminClient;
use crate::error::Error;

pub async fn create(global: &GlobalOpts, args: CreateUser) -> Result<(), Error> {
    // Validate everything that doesn't need the server before prompting.
    let shared_secret = global.shared_secret.as_deref().ok_or_else(|| {
        Error::Usage(
            "no registration shared secret: pass --shared-secret or set \
             MYELIN_REGISTRATION_SHARED_SECRET"
                .to_owned(),
        )
    })?;
    let client = AdminClient::new(&global.url)?;
    let password = match args.password {
        Some(p) => non_empty(p)?,
        None => prompt_new_password()?,
    };

    // The nonce is fetched only after prompting, so a slow typist cannot
    // make it expire.
    let registered = client
        .register(shared_secret, &args.username, &password, args.admin)
        .await?;
    println!(
        "Created user {} ({})",
        registered.user_id,
        if args.admin { "admin" } else { "not admin" }
    );
    Ok(())
}

fn prompt_new_password() -> Result<String, Error> {
    let prompt = |text: &str| {
        rpassword::prompt_password(text).map_err(|e| {
            Error::Input(format!(
                "cannot prompt for a password ({e}); pass --password when not running \
                 on a terminal"
            ))
        })
    };
    let first = non_empty(prompt("Password: ")?)?;
    let second = prompt("Confirm password: ")?;
    confirmed(first, second)
}

fn non_empty(password: String) -> Result<String, Error> {
    if password.is_empty() {
        Err(Error::Input("password must not be empty".to_owned()))
    } else {
        Ok(password)
    }
}

fn confirmed(first: String, second: String) -> Result<String, Error> {
    if first != second {
        return Err(Error::Input("passwords do not match".to_owned()));
    }
    non_empty(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_confirmation() {
        assert_eq!(confirmed("pw".into(), "pw".into()).unwrap(), "pw");
        let err = confirmed("pw".into(), "pW".into()).unwrap_err();
        assert_eq!(err.to_string(), "passwords do not match");
        let err = confirmed(String::new(), String::new()).unwrap_err();
        assert_eq!(err.to_string(), "password must not be empty");
    }

    #[tokio::test]
    async fn missing_shared_secret_is_a_usage_error() {
        let global = GlobalOpts {
            url: "http://127.0.0.1:1".into(),
            shared_secret: None,
            access_token: None,
        };
        let args = CreateUser {
            username: "alice".into(),
            admin: false,
            password: Some("pw".into()),
        };
        let err = create(&global, args).await.unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
    }

    #[tokio::test]
    async fn empty_password_flag_is_refused() {
        let global = GlobalOpts {
            url: "http://127.0.0.1:1".into(),
            shared_secret: Some("s".into()),
            access_token: None,
        };
        let args = CreateUser {
            username: "alice".into(),
            admin: false,
            password: Some(String::new()),
        };
        let err = create(&global, args).await.unwrap_err();
        assert!(matches!(err, Error::Input(_)), "{err:?}");
    }
}
