//! The client side: fleetpulse's schemas registered with a Confluent-compatible registry, and
//! writer schemas of unknown ids fetched from it, through `schema_registry_converter`.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use schemas::{Codec, RecordKind, SchemaStore};

use crate::config::ClientConfig;
use crate::error::RegistryError;

/// A Confluent-compatible schema registry.
pub struct RegistryClient {
    settings: SrSettings,
    url: String,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish()
    }
}

impl RegistryClient {
    /// A client for the configured registry. Nothing is sent yet.
    pub fn new(config: &ClientConfig) -> Result<RegistryClient, RegistryError> {
        let mut builder =
            SrSettings::new_builder(config.url.as_str().trim_end_matches('/').to_string());
        // The URL as logs and errors show it: a password in it (basic authentication) is not.
        let mut shown = config.url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("<redacted>"));
        }
        let url = shown.as_str().trim_end_matches('/').to_string();
        builder.set_timeout(Duration::from_millis(config.timeout_ms));
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_deref());
        }
        if let Some(token) = &config.token {
            builder.set_token_authorization(token);
        }
        let unusable = |detail: String| RegistryError::Unavailable {
            url: url.clone(),
            detail,
        };
        let mut http = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| unusable(format!("the CA file {}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| unusable(format!("the CA file {}: {e}", path.display())))?;
            http = http.add_root_certificate(ca);
        }
        let settings = builder
            .build_with(http)
            .map_err(|e| unusable(e.to_string()))?;
        Ok(RegistryClient { settings, url })
    }

    fn error(&self, e: SRCError) -> RegistryError {
        // reqwest calls a failed TLS handshake a failed request, which the converter marks
        // retriable; a certificate that does not verify stays so.
        let mut causes = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            causes.push_str(&s.to_string());
            source = s.source();
        }
        if causes.contains("certificate verify failed") {
            return RegistryError::Untrusted {
                url: self.url.clone(),
                detail: "the server's certificate does not verify (set schema_registry.ca_file to its CA)".into(),
            };
        }
        if e.retriable {
            RegistryError::Unavailable {
                url: self.url.clone(),
                detail: e.to_string(),
            }
        } else {
            RegistryError::Refused(e.to_string())
        }
    }

    /// Registers the current schema of each kind under its subject, and returns a codec that
    /// writes with the ids the registry gave them and reads the built-in ids too.
    pub async fn codec(&self, subjects: &[(RecordKind, String)]) -> Result<Codec, RegistryError> {
        let mut store = SchemaStore::builtin();
        for (kind, subject) in subjects {
            let id = self.register(*kind, subject).await?;
            store.use_for_writing(*kind, id)?;
            tracing::info!(%kind, subject, id, registry = %self.url, "schema registered");
        }
        Ok(Codec::new(store))
    }

    /// Registers the current schema of `kind` under `subject`; returns its id.
    pub async fn register(&self, kind: RecordKind, subject: &str) -> Result<u32, RegistryError> {
        let schema = SuppliedSchema::new(
            Some(kind.full_name().to_string()),
            SchemaType::Avro,
            SchemaStore::current_schema_json(kind).to_string(),
        );
        post_schema(&self.settings, subject.to_string(), schema)
            .await
            .map(|registered| registered.id)
            .map_err(|e| self.error(e))
    }

    /// Fetches the writer schema of `id` and teaches it to the codec, so records written with it
    /// decode. Returns the record kind the schema describes.
    pub async fn fetch_into(
        &self,
        codec: &mut Codec,
        id: u32,
    ) -> Result<RecordKind, RegistryError> {
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| self.error(e))?;
        Ok(codec.store_mut().insert(id, &registered.schema)?)
    }
}
