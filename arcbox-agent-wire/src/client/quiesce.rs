//! Typed calls for freezing and thawing the guest's filesystems.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{AgentClient, ClientError};
use crate::protocol::MessageType;
use crate::protocol::proto::agent::{
    FsFreezeRequest, FsFreezeResponse, FsFreezeStatusRequest, FsFreezeStatusResponse, FsThawRequest,
    FsThawResponse,
};

/// The least deadline of a freeze call: FIFREEZE first writes out every
/// dirty page, which can take many seconds.
pub const FREEZE_CALL_TIMEOUT: Duration = Duration::from_secs(120);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentClient<S> {
    /// Freezes the guest's writable disk filesystems (extension); the
    /// answer's `token` thaws them. The guest thaws by itself after
    /// `timeout_secs` (0: 10 s); `pause_runtime` pauses Docker and
    /// containerd around the freeze.
    pub async fn fs_freeze(
        &mut self,
        timeout_secs: u32,
        pause_runtime: bool,
    ) -> Result<FsFreezeResponse, ClientError> {
        let deadline = self.options.call_timeout.max(FREEZE_CALL_TIMEOUT);
        let request = FsFreezeRequest { timeout_secs, pause_runtime };
        self.call_with_deadline(MessageType::FsFreezeRequest, &request, deadline).await
    }

    /// Thaws the freeze that answered `token` (any freeze with `force`).
    pub async fn fs_thaw(
        &mut self,
        token: impl Into<String>,
        force: bool,
    ) -> Result<FsThawResponse, ClientError> {
        self.call(MessageType::FsThawRequest, &FsThawRequest { token: token.into(), force }).await
    }

    /// The freeze state: frozen or not, the watchdog's deadline, the last thaw.
    pub async fn fs_freeze_status(&mut self) -> Result<FsFreezeStatusResponse, ClientError> {
        self.call(MessageType::FsFreezeStatusRequest, &FsFreezeStatusRequest {}).await
    }
}
