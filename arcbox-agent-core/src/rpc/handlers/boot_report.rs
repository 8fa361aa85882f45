//! BootReport (extension): the init steps and boot milestones.

use crate::boot::BootRecorder;
use crate::protocol::proto::agent::{BootReport, BootReportRequest};
use crate::rpc::{RequestContext, RpcError, UnaryHandler};

/// Serves BootReportRequest.
pub struct BootReportHandler {
    recorder: BootRecorder,
}

impl BootReportHandler {
    /// A handler reading `recorder`.
    pub fn new(recorder: BootRecorder) -> Self {
        Self { recorder }
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
        Ok(self.recorder.snapshot())
    }
}
