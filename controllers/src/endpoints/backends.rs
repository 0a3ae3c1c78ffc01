//! Which tasks take a service's traffic, as pure functions: those desired
//! running, ready (running, and healthy when probed) and on a node that is
//! up. A task told to stop leaves at once — the first step of the draining
//! handshake: its agent stops it only once every node has programmed the
//! Endpoints revision without it.

use std::collections::BTreeMap;

use shoal_crd::{Backend, Node, TaskObservation};

use crate::tasks::{observes, NodeCondition, TaskView};

/// One task with what decides whether it is a backend.
pub struct Candidate<'a> {
    pub view: &'a TaskView,
    /// Its agent's observation (of this very task), if any.
    pub observation: Option<&'a TaskObservation>,
    /// The node it is assigned to, if that node exists.
    pub node: Option<&'a Node>,
}

impl Candidate<'_> {
    /// The task as a backend, or why it is none.
    pub fn judge(&self) -> Result<Backend, String> {
        let view = self.view;
        if !view.wanted() {
            return Err("stopping".into());
        }
        if !view.ready {
            return Err(format!("not ready ({})", format!("{:?}", view.state).to_lowercase()));
        }
        let Some(node) = view.node() else { return Err("not placed".into()) };
        if NodeCondition::of(self.node) == NodeCondition::Down {
            return Err(format!("node {node} is down"));
        }
        let address = self.address().ok_or_else(|| format!("no address known (node {node} reports none)"))?;
        Ok(Backend { task: view.name().to_string(), node: node.to_string(), address, ports: self.ports() })
    }

    /// Its agent's observation, if it is about this very task.
    fn observed(&self) -> Option<&TaskObservation> {
        self.observation.filter(|o| observes(o, &self.view.task))
    }

    /// Its namespace's address without the prefix length, else (host
    /// network) its node's address: the advertise address, where other
    /// nodes reach it (a node's own data plane may prefer loopback).
    fn address(&self) -> Option<String> {
        match self.observed().and_then(|o| o.spec.addresses.first()) {
            Some(cidr) => Some(cidr.split('/').next().unwrap_or(cidr).to_string()),
            None => self.node.and_then(|n| n.status.as_ref()).map(|s| s.addr.clone()).filter(|a| !a.is_empty()),
        }
    }

    /// Target → host port, for a task its agent put on the host network.
    fn ports(&self) -> BTreeMap<u16, u16> {
        let observed = self.observed().filter(|o| o.spec.addresses.is_empty());
        observed.map(|o| o.spec.ports.iter().map(|p| (p.target, p.host)).collect()).unwrap_or_default()
    }
}

/// `address` or, with mapped ports, `address (80→41234)`.
fn at(backend: &Backend) -> String {
    if backend.ports.is_empty() {
        return backend.address.clone();
    }
    let ports: Vec<String> = backend.ports.iter().map(|(target, host)| format!("{target}→{host}")).collect();
    format!("{} ({})", backend.address, ports.join(", "))
}

/// The backends among `candidates`, sorted by task id.
pub fn select(candidates: &[Candidate]) -> Vec<Backend> {
    let mut backends: Vec<Backend> = candidates.iter().filter_map(|c| c.judge().ok()).collect();
    backends.sort_by(|a, b| a.task.cmp(&b.task));
    backends
}

/// One line saying how the backends changed and why, e.g. `backends 3 → 2`
/// and `task web.3 (1f0c…) stopping`; `None` when they did not.
pub fn change(old: &[Backend], new: &[Backend], candidates: &[Candidate]) -> Option<(String, String)> {
    if old == new {
        return None;
    }
    let named = |task: &str| {
        let candidate = candidates.iter().find(|c| c.view.name() == task);
        let display =
            candidate.map_or_else(|| task.to_string(), |c| format!("{} ({task})", c.view.task.display_name()));
        (display, candidate)
    };
    let mut reasons = Vec::new();
    for gone in old.iter().filter(|b| !new.iter().any(|n| n.task == b.task)) {
        let (display, candidate) = named(&gone.task);
        let why =
            candidate.map_or_else(|| "deleted".to_string(), |c| c.judge().err().unwrap_or_else(|| "moved".into()));
        reasons.push(format!("task {display} {why}"));
    }
    for came in new.iter().filter(|b| !old.iter().any(|o| o.task == b.task)) {
        reasons.push(format!("task {} ready at {}", named(&came.task).0, at(came)));
    }
    for moved in new.iter().filter(|b| old.iter().any(|o| o.task == b.task && o != *b)) {
        reasons.push(format!("task {} now at {}", named(&moved.task).0, at(moved)));
    }
    Some((format!("backends {} → {}", old.len(), new.len()), reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;
    use shoal_crd::{
        HealthStatus, NodeSpec, NodeState, NodeStatus, PortMapping, Service, ServiceSpec, Task, TaskHealth,
        TaskObservationSpec, TaskState, TaskStatus,
    };

    use super::*;
    use crate::tasks::new_task;

    fn task(slot: u64) -> Arc<Task> {
        let service = Service::new("web", ServiceSpec::from_image("demo"));
        let mut task = new_task(&service, Some(slot), Some("n1"), Utc::now());
        task.metadata.name = format!("t{slot}");
        task.metadata.uid = format!("u{slot}");
        Arc::new(task)
    }

    fn observed(task: &Task, state: TaskState, addresses: &[&str]) -> TaskObservation {
        let spec = TaskObservationSpec {
            node_id: "n1".into(),
            task_uid: task.metadata.uid.clone(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let mut o = TaskObservation::new(task.metadata.name.clone(), spec);
        o.status = Some(TaskStatus { state, ..Default::default() });
        o
    }

    fn node(state: NodeState) -> Node {
        let mut node = Node::new("n1", NodeSpec::default());
        node.status = Some(NodeStatus { state, addr: "192.0.2.10".into(), ..Default::default() });
        node
    }

    /// Judges `task` as observed by `observation` on `node`.
    fn judge(task: Arc<Task>, observation: &TaskObservation, node: &Node) -> Result<Backend, String> {
        let view = TaskView::new(task, Some(observation));
        Candidate { view: &view, observation: Some(observation), node: Some(node) }.judge()
    }

    #[test]
    fn a_ready_task_is_a_backend_at_its_namespace_address_or_its_nodes() {
        let up = node(NodeState::Ready);
        let t = task(1);
        let backend = judge(t.clone(), &observed(&t, TaskState::Running, &["10.200.3.5/24"]), &up).unwrap();
        let expected =
            Backend { task: "t1".into(), node: "n1".into(), address: "10.200.3.5".into(), ports: BTreeMap::new() };
        assert_eq!(backend, expected);
        let host = judge(t.clone(), &observed(&t, TaskState::Running, &[]), &up).unwrap();
        assert_eq!(host.address, "192.0.2.10", "host network: the node's address");
    }

    #[test]
    fn a_host_network_task_is_reached_at_its_nodes_address_on_the_ports_its_agent_mapped() {
        let up = node(NodeState::Ready);
        let t = task(1);
        let mut o = observed(&t, TaskState::Running, &[]);
        o.spec.ports = vec![PortMapping { target: 80, host: 41234 }, PortMapping { target: 53, host: 41235 }];
        let backend = judge(t.clone(), &o, &up).unwrap();
        assert_eq!((backend.address.as_str(), backend.port(80), backend.port(53)), ("192.0.2.10", 41234, 41235));
        assert_eq!(backend.port(8080), 8080, "a port not mapped is reached as itself");
        assert_eq!(at(&backend), "192.0.2.10 (53→41235, 80→41234)");
        // A mapping from an observation of an earlier task does not count.
        o.spec.task_uid = "earlier".into();
        let view = TaskView::new(t.clone(), Some(&observed(&t, TaskState::Running, &[])));
        let stale = Candidate { view: &view, observation: Some(&o), node: Some(&up) }.judge().unwrap();
        assert!(stale.ports.is_empty());
    }

    #[test]
    fn tasks_not_running_unhealthy_stopping_or_on_a_down_node_are_not_backends() {
        let up = node(NodeState::Ready);
        let t = task(1);
        assert_eq!(judge(t.clone(), &observed(&t, TaskState::Starting, &[]), &up).unwrap_err(), "not ready (starting)");
        let mut probed = observed(&t, TaskState::Running, &[]);
        probed.status.as_mut().unwrap().health =
            Some(TaskHealth { status: HealthStatus::Starting, ..Default::default() });
        assert!(judge(t.clone(), &probed, &up).is_err(), "a probed task waits for healthy");
        probed.status.as_mut().unwrap().health.as_mut().unwrap().status = HealthStatus::Healthy;
        assert!(judge(t.clone(), &probed, &up).is_ok());

        let mut stopping = (*t).clone();
        stopping.spec.desired_state = TaskState::Shutdown;
        let still_running = observed(&t, TaskState::Running, &["10.200.3.5/24"]);
        assert_eq!(judge(Arc::new(stopping), &still_running, &up).unwrap_err(), "stopping", "leaves before it stops");
        assert_eq!(judge(t.clone(), &still_running, &node(NodeState::Down)).unwrap_err(), "node n1 is down");
    }

    #[test]
    fn an_observation_of_an_earlier_task_gives_no_address() {
        let t = task(1);
        let mut stale = observed(&t, TaskState::Running, &["10.200.3.9/24"]);
        stale.spec.task_uid = "earlier".into();
        let view = TaskView::new(t.clone(), Some(&observed(&t, TaskState::Running, &[])));
        let up = node(NodeState::Ready);
        let backend = Candidate { view: &view, observation: Some(&stale), node: Some(&up) }.judge().unwrap();
        assert_eq!(backend.address, "192.0.2.10");
    }

    #[test]
    fn changes_are_explained_in_one_line() {
        let up = node(NodeState::Ready);
        let (t1, t2) = (task(1), task(2));
        let (o1, o2) = (
            observed(&t1, TaskState::Running, &["10.200.3.5/24"]),
            observed(&t2, TaskState::Running, &["10.200.3.6/24"]),
        );
        let mut stopping = (*t2).clone();
        stopping.spec.desired_state = TaskState::Shutdown;
        let before = [TaskView::new(t1.clone(), Some(&o1)), TaskView::new(t2.clone(), Some(&o2))];
        let after = [TaskView::new(t1.clone(), Some(&o1)), TaskView::new(Arc::new(stopping), Some(&o2))];
        fn on<'a>(
            views: &'a [TaskView; 2],
            observations: [&'a TaskObservation; 2],
            node: &'a Node,
        ) -> Vec<Candidate<'a>> {
            views
                .iter()
                .zip(observations)
                .map(|(view, o)| Candidate { view, observation: Some(o), node: Some(node) })
                .collect()
        }
        let candidates = |views| on(views, [&o1, &o2], &up);
        let (old, new) = (select(&candidates(&before)), select(&candidates(&after)));
        assert_eq!(old.len(), 2);
        let (action, reason) = change(&old, &new, &candidates(&after)).unwrap();
        assert_eq!(action, "backends 2 → 1");
        assert_eq!(reason, "task web.2 (t2) stopping");
        let (_, reason) = change(&new, &old, &candidates(&before)).unwrap();
        assert_eq!(reason, "task web.2 (t2) ready at 10.200.3.6");
        assert_eq!(change(&old, &old, &candidates(&before)), None);
        assert_eq!(change(&old, &new, &[]).unwrap().1, "task t2 deleted");
    }
}
