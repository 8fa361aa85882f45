//! The exec calls of the Engine API (`docker exec`): create, start with
//! the connection hijacked (`Connection: Upgrade`, `Upgrade: tcp`: after
//! the 101 answer the socket carries the process's stdin one way and its
//! output the other, multiplexed without a TTY, see [`super::multiplex`]),
//! inspect (pid, running, exit code) and resize.

use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::DockerApiError;
use super::client::{Call, DockerClient, decode};

/// The connection of a started exec, handed over by hyper after the 101.
pub type HijackedStream = TokioIo<hyper::upgrade::Upgraded>;

/// The body of `POST /containers/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecConfig {
    /// Program and arguments.
    #[serde(rename = "Cmd")]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` over the container's environment.
    #[serde(rename = "Env", default)]
    pub env: Vec<String>,
    /// Working directory; empty: the container's.
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `user[:group]`; empty: the container's user.
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// A terminal (one raw output stream) instead of multiplexed pipes.
    #[serde(rename = "Tty", default)]
    pub tty: bool,
    /// The terminal's initial `[rows, columns]` (API 1.42+; older daemons
    /// ignore it, so the size is also set by a resize after the start).
    #[serde(rename = "ConsoleSize", default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<[u16; 2]>,
    /// Whether the connection's input goes to the process.
    #[serde(rename = "AttachStdin", default)]
    pub attach_stdin: bool,
    /// Whether stdout comes back.
    #[serde(rename = "AttachStdout", default)]
    pub attach_stdout: bool,
    /// Whether stderr comes back.
    #[serde(rename = "AttachStderr", default)]
    pub attach_stderr: bool,
}

/// `GET /exec/{id}/json` (only the fields used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInspect {
    /// The exec's id.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Whether its process runs.
    #[serde(rename = "Running", default)]
    pub running: bool,
    /// Its exit code once it has exited (`null` before).
    #[serde(rename = "ExitCode", default)]
    pub exit_code: Option<i64>,
    /// Its pid in the daemon's (the guest's) pid namespace; 0 before it runs.
    #[serde(rename = "Pid", default)]
    pub pid: u32,
    /// The container it runs in.
    #[serde(rename = "ContainerID", default)]
    pub container_id: String,
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Serialize)]
struct StartConfig {
    #[serde(rename = "Detach")]
    detach: bool,
    #[serde(rename = "Tty")]
    tty: bool,
}

fn json_body<T: Serialize>(value: &T) -> Option<Bytes> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).ok().map(Bytes::from)
}

impl DockerClient {
    /// `POST /containers/{container}/exec`: the new exec's id. A missing
    /// container is [`DockerApiError::Status`] 404, a stopped one 409.
    pub async fn create_exec(&self, container: &str, config: &ExecConfig) -> Result<String, DockerApiError> {
        let call = Call::post(&format!("/containers/{container}/exec"), json_body(config));
        let body = self.call(&call, StatusCode::CREATED).await?;
        decode::<Created>(&call, &body).map(|c| c.id)
    }

    /// `POST /exec/{id}/start`, attached: the hijacked connection. The
    /// connection and the 101 are bounded by the deadline, the stream is not.
    pub async fn start_exec(&self, id: &str, tty: bool) -> Result<HijackedStream, DockerApiError> {
        let mut call =
            Call::post(&format!("/exec/{id}/start"), json_body(&StartConfig { detach: false, tty }));
        call.upgrade = true;
        self.within(&call, async {
            let (response, _connection) = self.send(&call, StatusCode::SWITCHING_PROTOCOLS).await?;
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|source| DockerApiError::Upgrade { call: call.to_string(), source })?;
            Ok(TokioIo::new(upgraded))
        })
        .await
    }

    /// `GET /exec/{id}/json`.
    pub async fn inspect_exec(&self, id: &str) -> Result<ExecInspect, DockerApiError> {
        let call = Call::get(&format!("/exec/{id}/json"));
        let body = self.call(&call, StatusCode::OK).await?;
        decode(&call, &body)
    }

    /// `POST /exec/{id}/resize?h=ROWS&w=COLS`: the exec's terminal size.
    pub async fn resize_exec(&self, id: &str, rows: u16, cols: u16) -> Result<(), DockerApiError> {
        let call = Call::post(&format!("/exec/{id}/resize?h={rows}&w={cols}"), None);
        self.call(&call, StatusCode::OK).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_config_is_the_json_dockerd_takes() {
        let config = ExecConfig {
            cmd: vec!["sh".into(), "-c".into(), "id".into()],
            env: vec!["A=1".into()],
            user: "nobody:nogroup".into(),
            attach_stdout: true,
            attach_stderr: true,
            ..ExecConfig::default()
        };
        let json: serde_json::Value = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "Cmd": ["sh", "-c", "id"], "Env": ["A=1"], "User": "nobody:nogroup", "Tty": false,
                "AttachStdin": false, "AttachStdout": true, "AttachStderr": true,
            })
        );
    }

    #[test]
    fn an_exec_inspect_reads_a_running_and_a_finished_exec() {
        let running: ExecInspect = serde_json::from_str(
            r#"{"ID":"e1","Running":true,"ExitCode":null,"Pid":4242,"ProcessConfig":{}}"#,
        )
        .unwrap();
        assert_eq!((running.running, running.exit_code, running.pid), (true, None, 4242));
        let done: ExecInspect =
            serde_json::from_str(r#"{"ID":"e1","Running":false,"ExitCode":137}"#).unwrap();
        assert_eq!((done.running, done.exit_code), (false, Some(137)));
    }
}
