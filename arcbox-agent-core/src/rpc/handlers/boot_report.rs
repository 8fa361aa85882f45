//! BootReport (extension): the init steps and boot milestones, and the
//! network's state now.

use super::{NetworkWatch, network_message};
use crate::boot::BootRecorder;
use crate::protocol::proto::agent::{BootReport, BootReportRequest};
use crate::rpc::{RequestContext, RpcError, UnaryHandler};

/// Serves BootReportRequest.
pub struct BootReportHandler {
    recorder: BootRecorder,
    network: NetworkWatch,
}

impl BootReportHandler {
    /// A handler reading `recorder` and `network`.
    pub fn new(recorder: BootRecorder, network: NetworkWatch) -> Self {
        Self { recorder, network }
    }
}

impl UnaryHandler for BootReportHandler {
    type Request = BootReportRequest;
    type Response = BootReport;

    async fn handle(
        &self,
        _ctx: RequestContext<'_>,
        _request: BootReportRequest,
    ) -> Result<BootReport, RpcError> {
        let mut report = self.recorder.snapshot();
        report.network = Some(network_message(&self.network.borrow()));
        Ok(report)
    }
}
