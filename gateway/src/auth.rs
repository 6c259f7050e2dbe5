//! Local users with SCRAM-SHA-256 (pgwire does the exchange). The configuration stores, per
//! user, the salt, iteration count and SCRAM SaltedPassword — never the password itself.
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::gen_salted_password;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

use crate::config::Config;

/// The prefix of a stored secret. It is not PostgreSQL's `SCRAM-SHA-256$` verifier format
/// (StoredKey/ServerKey): pgwire's SCRAM needs the SaltedPassword.
pub const SECRET_PREFIX: &str = "SCRAM-SHA-256-SALTED$";
pub const ITERATIONS: usize = 4096;

/// Formats the secret `lakegate passwd` prints for a password.
pub fn make_secret(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let salted = gen_salted_password(password, &salt, ITERATIONS);
    format!(
        "{SECRET_PREFIX}{ITERATIONS}:{}${}",
        STANDARD.encode(salt),
        STANDARD.encode(salted)
    )
}

struct Secret {
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

fn parse_secret(secret: &str) -> Option<Secret> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let (params, salted) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    if iterations.parse::<usize>().ok()? != ITERATIONS {
        return None;
    }
    Some(Secret {
        salt: STANDARD.decode(salt).ok()?,
        salted_password: STANDARD.decode(salted).ok()?,
    })
}

/// Checks every user's secret at start-up so a typo fails loudly, not at login.
pub fn validate_users(config: &Config) -> Result<(), String> {
    for user in &config.users {
        if parse_secret(&user.scram).is_none() {
            return Err(format!(
                "user {}: scram is not a secret printed by `lakegate passwd` ({SECRET_PREFIX}{ITERATIONS}:...)",
                user.name
            ));
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct LocalUsers {
    config: Arc<Config>,
    /// A fixed random secret for unknown users, so the SCRAM exchange runs to its end and fails
    /// the same way as a wrong password (no user enumeration).
    decoy: (Vec<u8>, Vec<u8>),
}

impl LocalUsers {
    pub fn new(config: Arc<Config>) -> Self {
        let salt: [u8; 16] = rand::random();
        let salted: [u8; 32] = rand::random();
        LocalUsers {
            config,
            decoy: (salt.to_vec(), salted.to_vec()),
        }
    }
}

#[async_trait]
impl AuthSource for LocalUsers {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        if let Some(db) = login.database()
            && db != self.config.database
        {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "3D000".to_string(),
                format!("database \"{db}\" does not exist"),
            ))));
        }
        match self.config.user(user).and_then(|u| parse_secret(&u.scram)) {
            Some(secret) => Ok(Password::new(Some(secret.salt), secret.salted_password)),
            None => {
                tracing::info!(user = %user, "login attempt for an unknown user");
                Ok(Password::new(
                    Some(self.decoy.0.clone()),
                    self.decoy.1.clone(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_hides_the_password() {
        let secret = make_secret("alice");
        assert!(!secret.contains("alice"));
        let parsed = parse_secret(&secret).expect("parses");
        assert_eq!(
            parsed.salted_password,
            gen_salted_password("alice", &parsed.salt, ITERATIONS)
        );
        assert!(parse_secret("alice").is_none());
        assert!(parse_secret("SCRAM-SHA-256-SALTED$10:AAAA$AAAA").is_none());
    }
}
