//! Logging in and out, who one is, API keys, users and organizations.

use std::io::{BufRead as _, IsTerminal as _};

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::api::Api;
use super::config::{self, Credentials};
use super::output::{Column, ago, text};
use super::{Context, Failure, Outcome};

#[derive(clap::Args)]
pub struct Login {
    /// The api's URL (default: QM_API_URL, the last login's, or http://127.0.0.1:8003).
    pub url: Option<String>,
    /// Username or email.
    #[arg(long, short, default_value = "admin")]
    pub user: String,
    /// Read the password from the first line of standard input (for scripts).
    #[arg(long, conflicts_with = "api_key")]
    pub password_stdin: bool,
    /// Store this API key instead of logging in with a password.
    #[arg(long)]
    pub api_key: Option<String>,
}

fn password(login: &Login) -> Outcome<String> {
    if login.password_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|error| Failure::Request(format!("cannot read the password: {error}")))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    rpassword::prompt_password(format!("password for {}: ", login.user))
        .map_err(|error| Failure::Request(format!("cannot read the password: {error}")))
}

pub async fn login(base: &str, verbose: bool, login: &Login) -> Outcome {
    let anonymous = Api::new(base, None, verbose)?;
    let (token, who) = match &login.api_key {
        Some(key) => (key.trim().to_owned(), "api key".to_owned()),
        None => {
            let password = password(login)?;
            let body = json!({ "login": login.user, "password": password });
            let answer = anonymous.send(Method::POST, "/auth/login", &body).await?;
            let token = answer["token"].as_str().ok_or_else(|| Failure::Request("the API sent no token".into()))?;
            (token.to_owned(), text(&answer["user"]["username"]))
        }
    };
    // Checked before it is stored: a wrong key fails here, not at the next command.
    let me = Api::new(base, Some(token.clone()), verbose)?.get("/auth/me").await;
    let who = match (&login.api_key, me) {
        (_, Ok(me)) => text(&me["username"]),
        (Some(_), Err(_)) => {
            Api::new(base, Some(token.clone()), verbose)?.get("/instances?limit=1").await?;
            who
        }
        (None, Err(error)) => return Err(error),
    };
    let path =
        config::save(&Credentials { api_url: base.trim_end_matches('/').to_owned(), token, login: who.clone() })?;
    println!("logged in to {base} as {who} (credentials in {}, readable by you alone)", path.display());
    Ok(())
}

pub async fn logout(context: Option<&Context>) -> Outcome {
    if let Some(context) = context
        && context.api.has_token()
    {
        // The session ends on the server too; an API key stays valid until revoked.
        let _ = context.api.call(context.api.request(Method::POST, "/auth/logout")).await;
    }
    if config::remove()? {
        println!("logged out");
    } else {
        println!("not logged in");
    }
    Ok(())
}

pub async fn whoami(context: &Context) -> Outcome {
    let me = context.api.get("/auth/me").await?;
    let fields = [
        ("user", text(&me["username"])),
        ("email", text(&me["email"])),
        ("role", text(&me["role"])),
        ("organization", text(&me["organization_id"])),
        ("platform admin", text(&me["is_platform_admin"])),
        ("api", context.api.base.clone()),
    ];
    context.output.record(&me, &fields);
    Ok(())
}

#[derive(Subcommand)]
pub enum Keys {
    /// A new key (its secret is shown once).
    Create {
        name: String,
    },
    Ls,
    Revoke {
        id: String,
    },
}

const KEY_COLUMNS: &[Column] = &[
    Column { header: "ID", cell: |key| text(&key["id"]) },
    Column { header: "NAME", cell: |key| text(&key["name"]) },
    Column { header: "PREFIX", cell: |key| text(&key["prefix"]) },
    Column { header: "CREATED", cell: |key| ago(&key["created_at"]) },
    Column { header: "LAST USED", cell: |key| ago(&key["last_used_at"]) },
    Column { header: "REVOKED", cell: |key| ago(&key["revoked_at"]) },
];

pub async fn keys(context: &Context, command: &Keys) -> Outcome {
    let api = &context.api;
    match command {
        Keys::Create { name } => {
            let key = api.send(Method::POST, "/api_keys", &json!({ "name": name })).await?;
            if !context.output.structured(&key) {
                println!("key {} created; its secret, shown this once:", text(&key["id"]));
                println!("{}", text(&key["secret"]));
            }
        }
        Keys::Ls => context.output.list(&api.all("/api_keys", 500).await?, KEY_COLUMNS),
        Keys::Revoke { id } => {
            api.call(api.request(Method::DELETE, &format!("/api_keys/{}", super::segment(id)?))).await?;
            println!("key {id} revoked");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum Users {
    Ls,
    /// A user of your organization (the password is read from standard input).
    Create {
        username: String,
        #[arg(long)]
        email: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    Rm {
        id: String,
    },
}

const USER_COLUMNS: &[Column] = &[
    Column { header: "ID", cell: |user| text(&user["id"]) },
    Column { header: "USERNAME", cell: |user| text(&user["username"]) },
    Column { header: "EMAIL", cell: |user| text(&user["email"]) },
    Column { header: "ROLE", cell: |user| text(&user["role"]) },
    Column { header: "CREATED", cell: |user| ago(&user["created_at"]) },
];

pub async fn users(context: &Context, command: &Users) -> Outcome {
    let api = &context.api;
    match command {
        Users::Ls => context.output.list(&api.all("/users", 1000).await?, USER_COLUMNS),
        Users::Create { username, email, role } => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|error| Failure::Request(format!("cannot read the password: {error}")))?;
            let body = json!({ "username": username, "email": email, "role": role, "password": line.trim_end_matches(['\n', '\r']) });
            let user = api.send(Method::POST, "/users", &body).await?;
            if !context.output.structured(&user) {
                println!("user {} created: {}", text(&user["username"]), text(&user["id"]));
            }
        }
        Users::Rm { id } => {
            api.call(api.request(Method::DELETE, &format!("/users/{}", super::segment(id)?))).await?;
            println!("user {id} removed");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum Orgs {
    Ls,
    /// A new organization (platform admins).
    Create {
        name: String,
        #[arg(long)]
        slug: String,
    },
}

const ORG_COLUMNS: &[Column] = &[
    Column { header: "ID", cell: |org| text(&org["id"]) },
    Column { header: "NAME", cell: |org| text(&org["name"]) },
    Column { header: "SLUG", cell: |org| text(&org["slug"]) },
    Column { header: "CREATED", cell: |org| ago(&org["created_at"]) },
];

pub async fn orgs(context: &Context, command: &Orgs) -> Outcome {
    let api = &context.api;
    match command {
        Orgs::Ls => context.output.list(&api.all("/organizations", 1000).await?, ORG_COLUMNS),
        Orgs::Create { name, slug } => {
            let org: Value = api.send(Method::POST, "/organizations", &json!({ "name": name, "slug": slug })).await?;
            if !context.output.structured(&org) {
                println!("organization {} created: {}", text(&org["slug"]), text(&org["id"]));
            }
        }
    }
    Ok(())
}
