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
    /// Add a user (role `user`, or `admin` with --admin). The password is asked at a
    /// terminal (without echo), else read from standard input.
    Add {
        /// User name.
        name: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password (asked at a terminal, else read from standard input) and end
    /// their sessions.
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
    let store = crate::store_cmd::open(config, matches!(command, UserCommand::Add { .. })).await?;
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

/// The password: asked twice without echo at a terminal, else the first line of standard
/// input (for scripts: `echo "$PASSWORD" | portico user add …`).
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("cannot read the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = prompt("Password: ")?;
    let again = prompt("The same password again: ")?;
    anyhow::ensure!(first == again, "the two passwords differ: nothing was changed");
    Ok(first)
}

/// Asks for a line on the terminal with its echo off (and back on, whatever happens).
fn prompt(question: &str) -> anyhow::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let before = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = before.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    // Echo off before the question: what is typed as soon as it shows is not echoed.
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("cannot turn the terminal's echo off")?;
    eprint!("{question}");
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let restored = tcsetattr(&stdin, OptionalActions::Now, &before);
    eprintln!();
    read.context("cannot read the password")?;
    restored.context("cannot turn the terminal's echo back on")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
