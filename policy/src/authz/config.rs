//! The policy file: authorization rules in the spirit of Istio's AuthorizationPolicy, and
//! Mixer-style quota rules. YAML; unknown keys are errors.
//!
//! ```yaml
//! rules:
//!   - name: no-admin-from-outside       # unique
//!     action: DENY                      # ALLOW, DENY or AUDIT
//!     destinations: [work]              # services it guards; absent: every service
//!     source: {services: [ingress], principals: [...], namespaces: [...], ip_blocks: [10.0.0.0/8]}
//!     operation: {hosts: [...], methods: [GET], paths: ["/admin*"]}
//!     headers: {x-user: [bob, "adm*"]}  # header name: any of these values
//!     add_headers: {x-policy: checked}  # ALLOW only: headers added to the request
//! quotas:
//!   - name: per-user
//!     destinations: [work]              # plus source, operation, headers as above
//!     key: [source.service, destination.service, "header:x-user"]
//!     requests_per_unit: 10
//!     unit: minute
//!     algorithm: gcra                   # or fixed_window (the default)
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub action: String,
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub operation: OperationConfig,
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub add_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationConfig {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub name: String,
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub operation: OperationConfig,
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    pub key: Vec<String>,
    pub requests_per_unit: u32,
    pub unit: String,
    #[serde(default)]
    pub algorithm: Option<String>,
}
