//! The names the agent answers, as data: built from the Service and
//! Endpoints caches on every change, read by every query (pure; no I/O).
//!
//! | name | answer |
//! |---|---|
//! | `<service>` (vip mode) | the service's virtual IP |
//! | `<service>` (dnsrr mode) | the addresses of its ready tasks |
//! | `tasks.<service>` | the addresses of its ready tasks, in either mode |
//!
//! A stack's service is `<stack>_<name>` and also answers to `<name>`, the
//! name in its stack file, as on a Swarm stack's network:
//!
//! 1. for a task of stack S asking, `<name>` is `S_<name>` when that exists
//!    (its own stack first, as Docker's network-scoped alias);
//! 2. then a service named exactly `<name>`;
//! 3. then, whoever asks, the one stack service whose short name is
//!    `<name>` — Shoal has one flat network, so a short name every other
//!    stack leaves free is unambiguous; claimed by several stacks it is not
//!    answered here (it is forwarded like any unknown name).
//!
//! Names are compared case-insensitively, without a trailing dot. Anything
//! else is not ours: [`Directory::lookup`] says so and the server forwards it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use shoal_crd::{EndpointMode, Endpoints, Service, STACK_NAMESPACE_LABEL};

/// The prefix of the names answered with a service's task addresses.
pub const TASKS_PREFIX: &str = "tasks.";

/// One service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The service's (full) name: `shop_web` for `web` in stack `shop`.
    pub name: String,
    /// The stack it was deployed with (`com.docker.stack.namespace`).
    pub stack: Option<String>,
    pub mode: EndpointMode,
    /// The virtual IP (vip mode, once the endpoints loop allocated it).
    pub vip: Option<Ipv4Addr>,
    /// Addresses of the tasks that take traffic now (Endpoints backends).
    pub tasks: Vec<Ipv4Addr>,
}

impl ServiceRecord {
    /// The record of `service`, with its Endpoints when they exist yet.
    pub fn of(service: &Service, endpoints: Option<&Endpoints>) -> Self {
        let stack = service.metadata.labels.get(STACK_NAMESPACE_LABEL).filter(|s| !s.is_empty()).cloned();
        let (vip, tasks) = match endpoints {
            Some(e) => (
                e.spec.vip.as_deref().and_then(|v| v.parse().ok()),
                e.spec.backends.iter().filter_map(|b| b.address.split('/').next()?.parse().ok()).collect(),
            ),
            None => (None, Vec::new()),
        };
        Self { name: service.metadata.name.clone(), stack, mode: service.spec.endpoint_mode, vip, tasks }
    }

    /// The name in its stack file: `web` for `shop_web` of stack `shop`.
    fn short_name(&self) -> Option<&str> {
        self.name.strip_prefix(self.stack.as_deref()?)?.strip_prefix('_').filter(|s| !s.is_empty())
    }
}

/// What a name is, for this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// One of ours: these addresses (possibly none: a service whose VIP is
    /// not allocated yet, or without a ready task — an empty answer, not an
    /// error, so the client does not go on to search domains).
    Found(Vec<Ipv4Addr>),
    /// Not a service name: ask the upstream servers.
    NotOurs,
}

/// Every service's names, lower-cased.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    services: HashMap<String, ServiceRecord>,
    /// Short name → full names of the stack services that have it.
    short: HashMap<String, Vec<String>>,
    /// Task address → its service's stack: who is asking.
    stack_of: HashMap<Ipv4Addr, String>,
}

impl Directory {
    pub fn new(records: impl IntoIterator<Item = ServiceRecord>) -> Self {
        let mut directory = Self::default();
        for record in records {
            let key = record.name.to_ascii_lowercase();
            if let Some(short) = record.short_name() {
                directory.short.entry(short.to_ascii_lowercase()).or_default().push(key.clone());
            }
            if let Some(stack) = &record.stack {
                for task in &record.tasks {
                    directory.stack_of.insert(*task, stack.to_ascii_lowercase());
                }
            }
            directory.services.insert(key, record);
        }
        directory
    }

    /// From the caches: every Service, with its Endpoints by service name.
    pub fn from_objects(services: &[std::sync::Arc<Service>], endpoints: &[std::sync::Arc<Endpoints>]) -> Self {
        let by_service: BTreeMap<&str, &Endpoints> =
            endpoints.iter().map(|e| (e.spec.service.as_str(), &**e)).collect();
        Self::new(services.iter().map(|s| ServiceRecord::of(s, by_service.get(s.metadata.name.as_str()).copied())))
    }

    /// How many services it knows.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// What `name` is when `client` (a task's address, if known) asks.
    pub fn lookup(&self, name: &str, client: Option<Ipv4Addr>) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let (name, tasks) = match name.strip_prefix(TASKS_PREFIX) {
            Some(service) => (service, true),
            None => (name.as_str(), false),
        };
        let Some(service) = self.service(name, client) else { return Lookup::NotOurs };
        let addresses = match (tasks, service.mode, service.vip) {
            (false, EndpointMode::Vip, vip) => vip.into_iter().collect(),
            _ => service.tasks.clone(),
        };
        Lookup::Found(addresses)
    }

    /// The service `name` means to `client` (rules in the module docs).
    fn service(&self, name: &str, client: Option<Ipv4Addr>) -> Option<&ServiceRecord> {
        if name.is_empty() {
            return None;
        }
        let own_stack = client.and_then(|c| self.stack_of.get(&c));
        if let Some(stack) = own_stack {
            if let Some(service) = self.services.get(&format!("{stack}_{name}")) {
                return Some(service);
            }
        }
        if let Some(service) = self.services.get(name) {
            return Some(service);
        }
        match self.short.get(name).map(Vec::as_slice) {
            Some([only]) => self.services.get(only),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, last)
    }

    fn record(name: &str, stack: Option<&str>, mode: EndpointMode, vip: Option<u8>, tasks: &[u8]) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            stack: stack.map(str::to_string),
            mode,
            vip: vip.map(|v| Ipv4Addr::new(10, 96, 0, v)),
            tasks: tasks.iter().map(|t| ip(*t)).collect(),
        }
    }

    fn directory() -> Directory {
        Directory::new([
            record("shop_web", Some("shop"), EndpointMode::Vip, Some(1), &[2, 3, 4]),
            record("shop_api", Some("shop"), EndpointMode::Vip, Some(2), &[5, 6]),
            record("shop_db", Some("shop"), EndpointMode::Dnsrr, None, &[7, 8]),
            record("blog_web", Some("blog"), EndpointMode::Vip, Some(3), &[9]),
            record("solo", None, EndpointMode::Vip, Some(4), &[10]),
            record("fresh", None, EndpointMode::Vip, None, &[]),
        ])
    }

    fn found(addresses: &[Ipv4Addr]) -> Lookup {
        Lookup::Found(addresses.to_vec())
    }

    const VIP_WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
    const VIP_API: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);

    #[test]
    fn a_vip_service_answers_with_its_vip_and_tasks_dot_with_its_tasks() {
        let d = directory();
        assert_eq!(d.lookup("shop_api", None), found(&[VIP_API]));
        assert_eq!(d.lookup("tasks.shop_api", None), found(&[ip(5), ip(6)]));
        assert_eq!(d.lookup("solo", None), found(&[Ipv4Addr::new(10, 96, 0, 4)]));
    }

    #[test]
    fn a_dnsrr_service_answers_with_its_tasks_under_both_names() {
        let d = directory();
        assert_eq!(d.lookup("shop_db", None), found(&[ip(7), ip(8)]));
        assert_eq!(d.lookup("tasks.shop_db", None), found(&[ip(7), ip(8)]));
    }

    #[test]
    fn names_are_case_insensitive_and_may_end_in_a_dot() {
        let d = directory();
        for name in ["SHOP_API", "Shop_Api.", "shop_api."] {
            assert_eq!(d.lookup(name, None), found(&[VIP_API]), "{name}");
        }
        assert_eq!(d.lookup("TASKS.shop_db.", None), found(&[ip(7), ip(8)]));
    }

    #[test]
    fn a_short_name_means_the_askers_own_stack_first() {
        let d = directory();
        // `web` is in two stacks: each stack's task gets its own.
        assert_eq!(d.lookup("web", Some(ip(5))), found(&[VIP_WEB]), "asked from shop_api's task");
        assert_eq!(d.lookup("web", Some(ip(9))), found(&[Ipv4Addr::new(10, 96, 0, 3)]), "from blog_web's task");
        assert_eq!(d.lookup("tasks.web", Some(ip(2))), found(&[ip(2), ip(3), ip(4)]));
        // Anyone else: ambiguous, so not ours.
        assert_eq!(d.lookup("web", Some(ip(10))), Lookup::NotOurs, "from a task of no stack");
        assert_eq!(d.lookup("web", None), Lookup::NotOurs);
    }

    #[test]
    fn a_short_name_only_one_stack_has_is_answered_for_everyone() {
        let d = directory();
        assert_eq!(d.lookup("api", Some(ip(10))), found(&[VIP_API]));
        assert_eq!(d.lookup("db", None), found(&[ip(7), ip(8)]));
    }

    #[test]
    fn an_exact_service_name_beats_another_stacks_short_name() {
        let d = Directory::new([
            record("api", None, EndpointMode::Vip, Some(9), &[20]),
            record("shop_api", Some("shop"), EndpointMode::Vip, Some(2), &[5]),
            record("blog_x", Some("blog"), EndpointMode::Vip, Some(3), &[9]),
        ]);
        assert_eq!(d.lookup("api", None), found(&[Ipv4Addr::new(10, 96, 0, 9)]));
        assert_eq!(d.lookup("api", Some(ip(9))), found(&[Ipv4Addr::new(10, 96, 0, 9)]), "from another stack");
        assert_eq!(d.lookup("api", Some(ip(5))), found(&[VIP_API]), "from its own stack");
    }

    #[test]
    fn a_known_service_without_an_address_yet_is_an_empty_answer() {
        let d = directory();
        assert_eq!(d.lookup("fresh", None), found(&[]));
        assert_eq!(d.lookup("tasks.fresh", None), found(&[]));
    }

    #[test]
    fn anything_else_is_not_ours() {
        let d = directory();
        for name in ["example.com", "shop", "tasks.", "tasks.nothing", "web.shop", "shop_api.example.com", "", "."] {
            assert_eq!(d.lookup(name, None), Lookup::NotOurs, "{name:?}");
        }
    }
}
