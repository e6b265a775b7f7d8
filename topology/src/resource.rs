//! The resource a span comes from, and the service identity read from it.

use crate::attr::Attributes;

/// Who emitted a batch of spans: the resource attributes and the service identity derived from them.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub attributes: Attributes,
    pub service: ServiceIdentity,
}

/// The service identity meshlens groups by. Kubernetes attributes fill gaps the OTel ones leave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServiceIdentity {
    pub name: String,
    pub namespace: Option<String>,
    pub version: Option<String>,
    pub instance_id: Option<String>,
}

/// The name OTel SDKs use when a service did not say its name.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

impl Resource {
    pub fn new(attributes: Attributes) -> Self {
        let service = ServiceIdentity::from_attributes(&attributes);
        Resource {
            attributes,
            service,
        }
    }

    /// A resource with only a service name, as Zipkin's local endpoint gives it.
    pub fn for_service(name: &str) -> Self {
        let mut attributes = Attributes::new();
        attributes.push("service.name", name);
        Self::new(attributes)
    }
}

impl ServiceIdentity {
    pub fn from_attributes(a: &Attributes) -> Self {
        let text = |keys: &[&str]| {
            a.get_any(keys)
                .and_then(|v| v.to_text())
                .filter(|s| !s.is_empty())
        };
        ServiceIdentity {
            name: text(&["service.name"]).unwrap_or_else(|| UNKNOWN_SERVICE.to_string()),
            namespace: text(&["service.namespace", "k8s.namespace.name"]),
            version: text(&["service.version"]),
            instance_id: text(&["service.instance.id", "k8s.pod.name", "host.name"]),
        }
    }
}

/// The instrumentation scope that produced a span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scope {
    pub name: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_otel_and_k8s_attributes() {
        let mut a = Attributes::new();
        a.push("service.name", "work");
        a.push("k8s.namespace.name", "shop");
        a.push("service.version", "v2");
        a.push("k8s.pod.name", "work-v2-abc");
        let id = ServiceIdentity::from_attributes(&a);
        assert_eq!(id.name, "work");
        assert_eq!(id.namespace.as_deref(), Some("shop"));
        assert_eq!(id.version.as_deref(), Some("v2"));
        assert_eq!(id.instance_id.as_deref(), Some("work-v2-abc"));
    }

    #[test]
    fn missing_name_is_unknown_service() {
        let id = ServiceIdentity::from_attributes(&Attributes::new());
        assert_eq!(id.name, UNKNOWN_SERVICE);
        assert_eq!(id.namespace, None);
    }
}
