//! Kind names as users type them (`service`, `services`, `Service`) and a
//! macro to run generic code for the matching Rust type.

use anyhow::bail;

/// A kind Shoal stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    Task,
    TaskObservation,
    ServiceRevision,
    Endpoints,
    Node,
    Config,
    Secret,
    SealedSecret,
    Event,
}

impl Kind {
    /// Parses `service`, `services`, `Service`, `svc` … (names resolved by crd's kind table).
    pub fn parse(input: &str) -> anyhow::Result<Kind> {
        let name = if input.eq_ignore_ascii_case("svc") { Some("Service") } else { shoal_crd::canonical_kind(input) };
        let kind = match name {
            Some("Service") => Kind::Service,
            Some("Task") => Kind::Task,
            Some("TaskObservation") => Kind::TaskObservation,
            Some("ServiceRevision") => Kind::ServiceRevision,
            Some("Endpoints") => Kind::Endpoints,
            Some("Node") => Kind::Node,
            Some("Config") => Kind::Config,
            Some("Secret") => Kind::Secret,
            Some("SealedSecret") => Kind::SealedSecret,
            Some("Event") => Kind::Event,
            _ => bail!("unknown kind {input:?}: expected one of {}", shoal_crd::kind_names().join(", ")),
        };
        Ok(kind)
    }

    /// True for kinds only Shoal's own components write.
    pub fn is_system_owned(self) -> bool {
        matches!(
            self,
            Kind::Task
                | Kind::TaskObservation
                | Kind::ServiceRevision
                | Kind::Endpoints
                | Kind::SealedSecret
                | Kind::Node
                | Kind::Event
        )
    }
}

/// Runs `$body` with `$R` bound to the Rust type of `$kind`.
macro_rules! with_kind {
    ($kind:expr, $R:ident => $body:expr) => {
        match $kind {
            $crate::kinds::Kind::Service => {
                type $R = shoal_crd::Service;
                $body
            }
            $crate::kinds::Kind::Task => {
                type $R = shoal_crd::Task;
                $body
            }
            $crate::kinds::Kind::TaskObservation => {
                type $R = shoal_crd::TaskObservation;
                $body
            }
            $crate::kinds::Kind::ServiceRevision => {
                type $R = shoal_crd::ServiceRevision;
                $body
            }
            $crate::kinds::Kind::Endpoints => {
                type $R = shoal_crd::Endpoints;
                $body
            }
            $crate::kinds::Kind::Node => {
                type $R = shoal_crd::Node;
                $body
            }
            $crate::kinds::Kind::Config => {
                type $R = shoal_crd::Config;
                $body
            }
            $crate::kinds::Kind::Secret => {
                type $R = shoal_crd::Secret;
                $body
            }
            $crate::kinds::Kind::SealedSecret => {
                type $R = shoal_crd::SealedSecret;
                $body
            }
            $crate::kinds::Kind::Event => {
                type $R = shoal_crd::Event;
                $body
            }
        }
    };
}
pub(crate) use with_kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_in_singular_plural_and_capitalized_forms() {
        assert_eq!(Kind::parse("Service").unwrap(), Kind::Service);
        assert_eq!(Kind::parse("configs").unwrap(), Kind::Config);
        assert!(Kind::parse("pods").unwrap_err().to_string().contains("expected one of"));
    }
}
