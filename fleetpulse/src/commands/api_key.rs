//! `fleetpulse api-key`: makes, lists and revokes the API keys `fleetpulse ingest` takes, in the
//! file `ingest.keys_file` names. A running server reads the file again within a second.

use clap::Subcommand;
use ingest::KeyFile;

use crate::config::Config;

/// What to do with the keys.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key for a tenant (any of its devices) or for one device; prints it, once.
    Create {
        /// The tenant every reading sent with it belongs to.
        #[arg(long)]
        tenant: String,
        /// The one device it may send for (a device's own key).
        #[arg(long)]
        device: Option<String>,
        /// What it is for, to recognise it in `list`.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print every key as a JSON line (never its secret, which is not kept).
    List,
    /// Revoke a key by its id: requests with it are refused from then on.
    Revoke {
        /// The key's id (the 8 hex digits after `fpk_`).
        id: String,
    },
}

pub(crate) fn run(config: &Config, command: ApiKeyCommand) -> anyhow::Result<()> {
    let path = super::ingest::keys_file(config)?;
    let mut file = KeyFile::load(path)?;
    match command {
        ApiKeyCommand::Create {
            tenant,
            device,
            name,
        } => {
            let key = file.create(&tenant, device.as_deref(), name.as_deref(), super::now_ms())?;
            file.save(path)?;
            let id = file.keys.last().map(|k| k.id.clone()).unwrap_or_default();
            println!("{}", serde_json::json!({ "id": id, "key": key }));
            eprintln!("fleetpulse api-key: the key is shown this once; only its hash is kept");
        }
        ApiKeyCommand::List => {
            for k in &file.keys {
                let line = serde_json::json!({
                    "id": k.id,
                    "tenant": k.tenant,
                    "device": k.device,
                    "name": k.name,
                    "created_ms": k.created_ms,
                    "revoked_ms": k.revoked_ms,
                });
                println!("{line}");
            }
        }
        ApiKeyCommand::Revoke { id } => {
            file.revoke(&id, super::now_ms())?;
            file.save(path)?;
            println!("{}", serde_json::json!({ "revoked": id }));
        }
    }
    Ok(())
}
