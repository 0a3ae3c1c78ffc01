//! A data plane that programs nothing and records every call, for tests
//! of the sync logic; [`RecordingDataPlane::fail_next`] makes the next
//! apply fail once.

use std::sync::{Arc, Mutex};

use shoal_crd::Endpoints;

use super::{Cluster, DataPlane, DataPlaneError};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `apply`: each service with its backends' addresses, and the local subnet.
    Apply {
        services: Vec<(String, Vec<String>)>,
        subnet: Option<String>,
    },
    Cleanup,
}

/// Records calls into a shared log the test keeps a handle to.
#[derive(Debug, Clone, Default)]
pub struct RecordingDataPlane {
    pub calls: Arc<Mutex<Vec<Call>>>,
    fail: Arc<Mutex<bool>>,
}

impl RecordingDataPlane {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("fake lock").clone()
    }

    /// The next `apply` fails (and is recorded).
    pub fn fail_next(&self) {
        *self.fail.lock().expect("fake lock") = true;
    }
}

impl DataPlane for RecordingDataPlane {
    fn apply(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), DataPlaneError> {
        let services = endpoints
            .iter()
            .map(|e| (e.spec.service.clone(), e.spec.backends.iter().map(|b| b.address.clone()).collect()))
            .collect();
        self.calls
            .lock()
            .expect("fake lock")
            .push(Call::Apply { services, subnet: cluster.local.subnet.map(|s| s.to_string()) });
        if std::mem::take(&mut *self.fail.lock().expect("fake lock")) {
            return Err(DataPlaneError::Sysctl(std::io::Error::other("injected failure")));
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        self.calls.lock().expect("fake lock").push(Call::Cleanup);
        Ok(())
    }
}
