//! The guest's well-known vsock ports, as the reference numbers them.
//! Hosts dial them; the guest's configuration uses them as defaults.

/// The agent's RPC listener.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The Docker API proxy (to the guest's `/var/run/docker.sock`).
pub const DOCKER_API_VSOCK_PORT: u32 = 2375;
/// The Kubernetes API proxy (to k3s on the guest's 127.0.0.1:6443).
pub const KUBERNETES_API_VSOCK_PORT: u32 = 16443;
