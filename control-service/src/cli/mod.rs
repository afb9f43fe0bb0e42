//! The operator CLI: `wipgate-control policy get|put|edit-tenant|delete-tenant` and
//! `wipgate-control status`, each one call (or two) on the REST API of a running service,
//! with the admin token read as the service reads it (`--admin-token-file`, else
//! `WIPGATE_ADMIN_TOKEN`). Policies go in and out as JSON, so `policy get > p.json`, an
//! edit, and `policy put p.json` round-trip.

pub mod api;
pub mod status_table;
pub mod table;

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};

use self::api::{Api, Reply};
use crate::settings::read_admin_token;
use crate::status::FleetStatus;

/// Where the service is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ApiOptions {
    /// The control service's URL (`http://` only).
    #[arg(
        long,
        env = "WIPGATE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// File holding the admin token (else `WIPGATE_ADMIN_TOKEN`); needed to change things.
    #[arg(long, env = "WIPGATE_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
}

/// An operator command.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Read or change the fleet policy.
    Policy {
        #[command(flatten)]
        api: ApiOptions,
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The live fleet as tables: instances, tenants, probes (`GET /v1/status`).
    Status {
        #[command(flatten)]
        api: ApiOptions,
        /// Print the status JSON as the API returns it instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// What to do with the policy.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyAction {
    /// Print the policy as JSON (its version goes to standard error).
    Get,
    /// Replace the whole policy with the JSON in FILE (`-`: standard input); the service
    /// validates it as a whole.
    Put {
        /// The policy file, or `-`.
        file: PathBuf,
    },
    /// Set a tenant's fleet-wide `reserved` and/or `max`; what is not given keeps its
    /// current value (a new entry starts at reserved 0, no max). `*`: tenants not listed.
    EditTenant {
        /// The tenant.
        name: String,
        /// Fleet-wide in-flight capacity held for this tenant.
        #[arg(long)]
        reserved: Option<u32>,
        /// Fleet-wide in-flight cap of this tenant.
        #[arg(long)]
        max: Option<u32>,
    },
    /// Remove a tenant's entry (an error when there is none).
    DeleteTenant {
        /// The tenant.
        name: String,
    },
}

/// Runs `command`, printing its result on standard output.
pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Status { api, json } => {
            let reply = connect(&api)?.get("/v1/status").await?;
            if json {
                println!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let status: FleetStatus = serde_json::from_slice(&reply.body)
                    .context("GET /v1/status: not a fleet status")?;
                print!("{}", status_table::render_status(&status));
            }
        }
        Command::Policy { api, action } => {
            let api = connect(&api)?;
            let reply = match action {
                PolicyAction::Get => api.get("/v1/policy").await?,
                PolicyAction::Put { file } => {
                    api.admin(Method::PUT, "/v1/policy", Some(read_input(&file)?))
                        .await?
                }
                PolicyAction::EditTenant {
                    name,
                    reserved,
                    max,
                } => edit_tenant(&api, &name, reserved, max).await?,
                PolicyAction::DeleteTenant { name } => {
                    api.admin(Method::DELETE, &format!("/v1/tenants/{name}"), None)
                        .await?
                }
            };
            print_policy(&reply)?;
        }
    }
    Ok(())
}

/// Reads the tenant's entry, changes the given fields and puts it back with `If-Match`, so a
/// concurrent change of the policy is never overwritten: on 412 it reads again (5 tries).
async fn edit_tenant(
    api: &Api,
    name: &str,
    reserved: Option<u32>,
    max: Option<u32>,
) -> Result<Reply> {
    let path = format!("/v1/tenants/{name}");
    for _ in 0..5 {
        let read = api.get("/v1/policy").await?;
        let current = policy_json(&read)?;
        let body = merged_tenant(&current, name, reserved, max).to_string();
        let put = match &read.version {
            Some(v) => {
                api.admin_if_match(Method::PUT, &path, Some(body.into_bytes()), v)
                    .await
            }
            None => api.admin(Method::PUT, &path, Some(body.into_bytes())).await,
        };
        match put {
            Err(e) if e.downcast_ref::<api::StalePolicy>().is_some() => continue,
            other => return other,
        }
    }
    anyhow::bail!("PUT {path}: the policy kept changing; retry")
}

fn connect(options: &ApiOptions) -> Result<Api> {
    Api::new(
        &options.url,
        read_admin_token(options.admin_token_file.as_deref())?,
    )
}

fn read_input(file: &PathBuf) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn policy_json(reply: &Reply) -> Result<Value> {
    serde_json::from_slice(&reply.body).context("the service answered a policy that is not JSON")
}

/// The tenant entry to put: the current one (if any) with the given fields replaced.
fn merged_tenant(policy: &Value, name: &str, reserved: Option<u32>, max: Option<u32>) -> Value {
    let current = &policy["tenants"][name];
    let mut entry = json!({"reserved": current["reserved"].as_u64().unwrap_or(0)});
    if let Some(m) = current["max"].as_u64() {
        entry["max"] = json!(m);
    }
    if let Some(r) = reserved {
        entry["reserved"] = json!(r);
    }
    if let Some(m) = max {
        entry["max"] = json!(m);
    }
    entry
}

/// The policy on standard output (pretty JSON), its version on standard error.
fn print_policy(reply: &Reply) -> Result<()> {
    let policy = policy_json(reply)?;
    println!("{}", serde_json::to_string_pretty(&policy)?);
    if let Some(version) = &reply.version {
        eprintln!("policy version {version}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_keeps_what_is_not_given() {
        let policy = json!({"tenants": {"acme": {"reserved": 5, "max": 50}}});
        assert_eq!(
            merged_tenant(&policy, "acme", None, Some(80)),
            json!({"reserved": 5, "max": 80})
        );
        assert_eq!(
            merged_tenant(&policy, "acme", Some(0), None),
            json!({"reserved": 0, "max": 50})
        );
        assert_eq!(
            merged_tenant(&policy, "new", None, Some(3)),
            json!({"reserved": 0, "max": 3})
        );
        assert_eq!(
            merged_tenant(&json!({}), "x", None, None),
            json!({"reserved": 0})
        );
    }
}
