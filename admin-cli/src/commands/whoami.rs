//! `whoami`: reports which user `--access-token` belongs to, so an operator
//! can check a token before using it for admin-API commands.

use crate::cli::GlobalOpts;
use crate::client::AdminClient;
use crate::error::Error;

pub async fn run(global: &GlobalOpts) -> Result<(), Error> {
    let token = global.access_token.as_deref().ok_or_else(|| {
        Error::Usage("no access token: pass --access-token or set MYELIN_ADMIN_TOKEN".to_owned())
    })?;
    let who = AdminClient::new(&global.url)?.whoami(token).await?;
    match who.device_id {
        Some(device) => println!("{} (device {device})", who.user_id),
        None => println!("{}", who.user_id),
    }
    Ok(())
}
