//! `portico user add|passwd|ls`: users managed directly in the store. Passwords are read from
//! the first line of standard input, so they never appear in the process list or history:
//! `printf '%s\n' "$PASSWORD" | portico user add alice`.

use std::io::BufRead;

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use portico_model::record;
use portico_model::user::{NewUser, Role, User, password_problem};
use portico_store::{Kind, StoreError};

use crate::config::Config;
use crate::hosts::refused;

/// User subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (role `user`, or `admin` with --admin); the password comes on stdin.
    Add {
        /// User name.
        name: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password (read from stdin) and end their sessions.
    Passwd {
        /// User name.
        name: String,
    },
    /// List users and their roles.
    Ls,
}

/// Runs one user subcommand against the configured store.
pub async fn run(command: UserCommand, config: &Config) -> anyhow::Result<()> {
    // Only `add` may start a new store: `ls` and `passwd` on a mistyped path are errors.
    let store = match command {
        UserCommand::Add { .. } => portico_store::open(&config.store_url).await,
        _ => portico_store::open_existing(&config.store_url).await,
    };
    let store = store.context("cannot open the store")?;
    match command {
        UserCommand::Add { name, admin } => {
            let role = if admin { Role::Admin } else { Role::User };
            let new = NewUser::new(name.clone(), read_password()?, role).map_err(refused)?;
            let hash = record::hash_password(&new.password).map_err(|e| anyhow!("cannot hash the password: {e}"))?;
            let user = User::new(new, hash, "cli", portico_store::now_ms() as i64);
            match store.create(Kind::User, &name, &user.to_fields()).await {
                Ok(()) => println!("added user {name} ({})", role.as_str()),
                Err(StoreError::Conflict { .. }) => bail!("user {name} already exists"),
                Err(e) => return Err(e).context("cannot add the user"),
            }
        }
        UserCommand::Passwd { name } => {
            let stored = store.record(Kind::User, &name).await?.ok_or_else(|| anyhow!("no user {name}"))?;
            let mut user = User::from_fields(&name, &stored);
            let password = read_password()?;
            if let Some(problem) = password_problem("password", &password) {
                bail!("{problem}");
            }
            let hash = record::hash_password(&password).map_err(|e| anyhow!("cannot hash the password: {e}"))?;
            user.set_password(hash, "cli", portico_store::now_ms() as i64);
            store.put(Kind::User, &name, &user.to_fields()).await.context("cannot update the user")?;
            // Every token made under the old password goes, as in the API.
            let mut ended = 0;
            for (key, token) in store.records(Kind::AuthToken).await? {
                if record::token_of(&token, &name) && store.delete(Kind::AuthToken, &key).await? {
                    ended += 1;
                }
            }
            println!("password of {name} changed; {ended} token(s) revoked");
        }
        UserCommand::Ls => {
            println!("{:<32} ROLE", "USER");
            for (name, fields) in store.records(Kind::User).await? {
                println!("{name:<32} {}", Role::of(&fields).as_str());
            }
        }
    }
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
