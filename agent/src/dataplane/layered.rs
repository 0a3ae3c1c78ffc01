//! Two data planes as one: the IPVS plane serves VIPs and published ports
//! on the node's addresses, but IPVS cannot serve `127.0.0.1:<published>`
//! (kube-proxy's IPVS mode has the same gap), which is the first thing a
//! user of `shoal up` curls. [`Layered`] puts the userspace proxy, listening
//! on loopback only, beside it, so the published ports answer there too.
//!
//! Every call goes to every plane in order; the first error is returned
//! after all have been called, so one plane's failure never leaves the
//! other stale.

use std::sync::Arc;

use shoal_crd::Endpoints;

use super::{Cluster, DataPlane, DataPlaneError};

/// Data planes applied one after the other.
pub struct Layered {
    planes: Vec<Box<dyn DataPlane>>,
}

impl Layered {
    pub fn new(planes: Vec<Box<dyn DataPlane>>) -> Self {
        Self { planes }
    }

    /// Runs `call` on every plane; the first error, if any.
    fn each(
        &mut self,
        mut call: impl FnMut(&mut dyn DataPlane) -> Result<(), DataPlaneError>,
    ) -> Result<(), DataPlaneError> {
        let mut first = Ok(());
        for plane in &mut self.planes {
            if let Err(err) = call(plane.as_mut()) {
                tracing::warn!(error = %err, "one of the layered data planes failed");
                first = first.and(Err(err));
            }
        }
        first
    }
}

impl DataPlane for Layered {
    fn apply(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), DataPlaneError> {
        self.each(|plane| plane.apply(endpoints, cluster))
    }

    fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        self.each(|plane| plane.cleanup())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::{Call, RecordingDataPlane};

    #[test]
    fn every_plane_is_called_even_after_one_fails() {
        let (a, b) = (RecordingDataPlane::default(), RecordingDataPlane::default());
        a.fail_next();
        let mut layered = Layered::new(vec![Box::new(a.clone()), Box::new(b.clone())]);
        assert!(layered.apply(&[], &Cluster::default()).is_err(), "the first plane's failure is reported");
        layered.cleanup().unwrap();
        for plane in [a, b] {
            let calls = plane.calls();
            assert_eq!(calls.len(), 2, "{calls:?}");
            assert_eq!(calls[1], Call::Cleanup);
        }
    }
}
