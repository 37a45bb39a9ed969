//! The agents over in-memory duplex pipes with tiny fake stores: refusals
//! change nothing, and one file created on the compute side reaches the
//! project with both sides committing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as Frame;
use unionsync::compute_agent::{run_compute_agent, AgentCommand, ComputeAgentConfig, Connector};
use unionsync::project_server::{serve_connection, ServeError};
use unionsync::store::{Applied, ComputeStore, ProjectStore, Snapshot, StoreError, StoreResult};
use unionsync::transport;
use unionsync::transport::TransportError;
use unionsync_core::wire::MAX_MESSAGE_LEN;
use unionsync_core::{
    BaseEntry, Change, ComputeConfig, ComputeEvent, ComputeOp, ComputeSession, ContentHash,
    ErrorCode, Message, Meta, ProjectConfig, ProjectEvent, ProjectOp, RelPath, Reported,
    SyncReport, Timing, PROTOCOL_VERSION,
};

const TOKEN: &[u8] = b"right";

fn path(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn not_in_this_test<T>(what: &str) -> StoreResult<T> {
    Err(StoreError(format!("{what}: not expected in this test")))
}

/// A compute upper whose journal holds its files; records the epoch.
#[derive(Clone, Default)]
struct FakeCompute(Rc<RefCell<ComputeDisk>>);

#[derive(Default)]
struct ComputeDisk {
    files: BTreeMap<RelPath, (Meta, Vec<u8>)>,
    epoch: u64,
}

impl ComputeStore for FakeCompute {
    type Reader = Snapshot;
    async fn load_epoch(&mut self) -> StoreResult<u64> {
        Ok(self.0.borrow().epoch)
    }
    async fn collect_changes(&mut self, _full: bool) -> StoreResult<(u64, Vec<Change>)> {
        let disk = self.0.borrow();
        let changes = disk.files.iter().map(|(path, (meta, _))| Change {
            path: path.clone(),
            state: Reported::Present(meta.clone()),
            seen: None,
            seen_via_mount: false,
        });
        Ok((0, changes.collect()))
    }
    async fn hashes(&mut self, _: &[RelPath]) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>> {
        not_in_this_test("hashes")
    }
    async fn open_file(&mut self, path: &RelPath, expect: &Meta) -> StoreResult<Option<Snapshot>> {
        let disk = self.0.borrow();
        let file = disk
            .files
            .get(path)
            .filter(|(meta, _)| meta.matches(expect));
        Ok(file.map(|(_, data)| Snapshot::new(data.clone())))
    }
    async fn stage(&mut self, _: &RelPath, _: &[u8], _: bool) -> StoreResult<()> {
        not_in_this_test("stage")
    }
    async fn apply(&mut self, ops: &[ComputeOp]) -> StoreResult<Applied> {
        if !ops.is_empty() {
            return not_in_this_test("compute steps");
        }
        Ok(Applied::default())
    }
    async fn commit(&mut self, epoch: u64, _mark: u64, _paths: &[RelPath]) -> StoreResult<()> {
        self.0.borrow_mut().epoch = epoch;
        Ok(())
    }
}

/// An initially empty project home that logs every storage call.
#[derive(Clone, Default)]
struct FakeProject(Rc<RefCell<ProjectDisk>>);

#[derive(Default)]
struct ProjectDisk {
    files: BTreeMap<RelPath, Vec<u8>>,
    staged: BTreeMap<RelPath, Vec<u8>>,
    calls: Vec<&'static str>,
    committed_epoch: u64,
}

impl ProjectStore for FakeProject {
    type Reader = Snapshot;
    async fn load_base(&mut self, _: u64) -> StoreResult<(u64, BTreeMap<RelPath, BaseEntry>)> {
        self.0.borrow_mut().calls.push("load_base");
        Ok((0, BTreeMap::new()))
    }
    async fn stat(&mut self, paths: &[RelPath]) -> StoreResult<Vec<(RelPath, Option<Meta>)>> {
        let mut disk = self.0.borrow_mut();
        disk.calls.push("stat");
        let stat = |p: &RelPath| (disk.files.get(p)).map(|d| Meta::file(0o644, d.len() as u64, 1));
        Ok(paths.iter().map(|p| (p.clone(), stat(p))).collect())
    }
    async fn list_subtrees(&mut self, _: &[RelPath]) -> StoreResult<Vec<(RelPath, Meta)>> {
        not_in_this_test("list_subtrees")
    }
    async fn hashes(&mut self, _: &[RelPath]) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>> {
        not_in_this_test("hashes")
    }
    async fn open_file(&mut self, _: &RelPath, _: &Meta) -> StoreResult<Option<Snapshot>> {
        not_in_this_test("open_file")
    }
    async fn stage(&mut self, _: u64, path: &RelPath, data: &[u8], _: bool) -> StoreResult<()> {
        let mut disk = self.0.borrow_mut();
        disk.calls.push("stage");
        disk.staged.entry(path.clone()).or_default().extend(data);
        Ok(())
    }
    async fn apply(
        &mut self,
        _: u64,
        _: u64,
        ops: &[ProjectOp],
        _: &[RelPath],
    ) -> StoreResult<Applied> {
        let mut disk = self.0.borrow_mut();
        disk.calls.push("apply");
        let mut applied = Applied::default();
        for op in ops {
            let ProjectOp::Create { path, meta } = op else {
                return not_in_this_test("project steps other than Create");
            };
            let data = disk.staged.remove(path).unwrap_or_default();
            let after = Meta::file(meta.mode, data.len() as u64, 1);
            disk.files.insert(path.clone(), data);
            applied.after.push((path.clone(), Some(after)));
        }
        Ok(applied)
    }
    async fn commit_base(
        &mut self,
        _: u64,
        epoch: u64,
        _: bool,
        _: &[(RelPath, Option<BaseEntry>)],
    ) -> StoreResult<()> {
        let mut disk = self.0.borrow_mut();
        disk.calls.push("commit_base");
        disk.committed_epoch = epoch;
        Ok(())
    }
}

/// Hands out one stream, then never connects again.
struct OneStream(Option<DuplexStream>);

impl Connector for OneStream {
    type Stream = DuplexStream;
    async fn connect(&mut self) -> std::io::Result<DuplexStream> {
        match self.0.take() {
            Some(stream) => Ok(stream),
            None => std::future::pending().await,
        }
    }
}

/// A first connection attempt that is never answered (a lost SYN), then
/// [`OneStream`].
struct HangsFirst(bool, OneStream);

impl Connector for HangsFirst {
    type Stream = DuplexStream;
    async fn connect(&mut self) -> std::io::Result<DuplexStream> {
        if !std::mem::replace(&mut self.0, true) {
            std::future::pending::<()>().await;
        }
        self.1.connect().await
    }
}

/// Starts a compute agent for `compute` over `connector`; its commands and
/// events.
fn spawn_agent<C: Connector + 'static>(
    connector: C,
    compute: &FakeCompute,
    step_timeout: Duration,
) -> (
    tokio::task::JoinHandle<StoreResult<()>>,
    mpsc::UnboundedSender<AgentCommand>,
    mpsc::UnboundedReceiver<ComputeEvent>,
) {
    let session = ComputeConfig {
        compute_id: 7,
        token: TOKEN.to_vec(),
        timing: Timing::default(),
        step_timeout,
    };
    let now = tokio::time::Instant::now().into_std();
    let (status, _status_rx) =
        watch::channel(ComputeSession::new(session.clone(), 0, now).status(now));
    let config = ComputeAgentConfig {
        session,
        url: "ws://project/".into(),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
    };
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::unbounded_channel();
    let agent = tokio::task::spawn_local(run_compute_agent(
        config,
        connector,
        compute.clone(),
        command_rx,
        status,
        Some(events),
    ));
    (agent, commands, events_rx)
}

/// The report of the first sync, which must succeed.
async fn first_sync(events: &mut mpsc::UnboundedReceiver<ComputeEvent>) -> SyncReport {
    loop {
        match events.recv().await.unwrap() {
            ComputeEvent::SyncStarted { .. } => {}
            ComputeEvent::SyncDone(report) => return report,
            other => panic!("sync did not succeed: {other:?}"),
        }
    }
}

fn project_config() -> ProjectConfig {
    ProjectConfig {
        token: TOKEN.to_vec(),
        step_timeout: Duration::from_secs(10),
        lower_index: false,
    }
}

fn hello(version: u16, token: &[u8]) -> Message {
    Message::Hello {
        version,
        compute_id: 7,
        token: token.to_vec(),
        epoch: 0,
    }
}

/// Runs `test` on this current-thread runtime inside a LocalSet, as the
/// daemons run, with a deadline against hangs.
async fn local<F: Future>(test: F) -> F::Output {
    let set = tokio::task::LocalSet::new();
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, set.run_until(test))
        .await
        .expect("test timed out")
}

type Server = tokio::task::JoinHandle<Result<(), ServeError>>;

/// A project server for `project` on its end of a pipe.
fn spawn_server(
    stream: DuplexStream,
    project: &FakeProject,
    config: ProjectConfig,
    events: Option<mpsc::UnboundedSender<ProjectEvent>>,
) -> Server {
    tokio::task::spawn_local(serve_connection(
        stream,
        project.clone(),
        config,
        events,
        None,
    ))
}

/// Connects a raw websocket client to a project server over a pipe; the
/// server's result comes out of the handle.
async fn raw_client(project: &FakeProject) -> (transport::Ws<DuplexStream>, Server) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let server = spawn_server(server, project, project_config(), None);
    let ws = transport::connect("ws://project/", client).await.unwrap();
    (ws, server)
}

/// Asserts the server refuses with `code`, closes, and touched no storage.
async fn assert_refused(
    mut ws: transport::Ws<DuplexStream>,
    server: Server,
    project: &FakeProject,
    code: ErrorCode,
) {
    match transport::recv(&mut ws).await.unwrap() {
        Some(Message::Error { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
    assert_eq!(transport::recv(&mut ws).await.unwrap(), None, "closed");
    assert!(server.await.unwrap().is_err());
    assert_eq!(project.0.borrow().calls, Vec::<&str>::new());
}

#[tokio::test]
async fn wrong_token_is_refused_with_bad_token_and_touches_no_storage() {
    local(async {
        let project = FakeProject::default();
        let (mut ws, server) = raw_client(&project).await;
        transport::send(&mut ws, &hello(PROTOCOL_VERSION, b"wrong"))
            .await
            .unwrap();
        assert_refused(ws, server, &project, ErrorCode::BadToken).await;
    })
    .await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_with_bad_version() {
    local(async {
        let project = FakeProject::default();
        let (mut ws, server) = raw_client(&project).await;
        transport::send(&mut ws, &hello(999, TOKEN)).await.unwrap();
        assert_refused(ws, server, &project, ErrorCode::BadVersion).await;
    })
    .await;
}

#[tokio::test]
async fn garbage_frame_is_refused_with_malformed() {
    local(async {
        let project = FakeProject::default();
        let (mut ws, server) = raw_client(&project).await;
        ws.send(Frame::binary(vec![0xff, 0xff, 0xff]))
            .await
            .unwrap();
        assert_refused(ws, server, &project, ErrorCode::Malformed).await;
    })
    .await;
}

#[tokio::test]
async fn oversized_frame_is_refused_with_malformed_before_it_is_read() {
    local(async {
        let project = FakeProject::default();
        let (ws, server) = raw_client(&project).await;
        // The server stops reading after the frame header, so the send
        // never completes: send and receive on separate halves.
        let (mut sink, mut stream) = ws.split();
        tokio::task::spawn_local(async move {
            let _ = sink
                .send(Frame::binary(vec![0u8; MAX_MESSAGE_LEN + 1]))
                .await;
        });
        match stream.next().await {
            Some(Ok(Frame::Binary(bytes))) => assert!(matches!(
                Message::decode(&bytes),
                Ok(Message::Error {
                    code: ErrorCode::Malformed,
                    ..
                })
            )),
            other => panic!("expected an Error frame, got {other:?}"),
        }
        assert!(server.await.unwrap().is_err());
        assert_eq!(project.0.borrow().calls, Vec::<&str>::new());
    })
    .await;
}

#[tokio::test]
async fn one_compute_file_reaches_the_project_and_both_commit_epoch_1() {
    local(async {
        let compute = FakeCompute::default();
        let meta = Meta::file(0o644, 5, 1_000).with_ctime(1_000);
        (compute.0.borrow_mut().files).insert(path("notes.txt"), (meta, b"hello".to_vec()));
        let project = FakeProject::default();

        let (client, server) = tokio::io::duplex(1 << 16);
        let (project_events, mut project_rx) = mpsc::unbounded_channel();
        let server = spawn_server(server, &project, project_config(), Some(project_events));

        let connector = OneStream(Some(client));
        let (agent, commands, mut events_rx) =
            spawn_agent(connector, &compute, Duration::from_secs(10));
        let report = first_sync(&mut events_rx).await;
        commands.send(AgentCommand::Shutdown).unwrap();
        agent.await.unwrap().unwrap();
        server.await.unwrap().unwrap();

        assert_eq!(report.epoch, 1);
        assert_eq!(report.files_sent, 1);
        assert_eq!(compute.0.borrow().epoch, 1);
        let (file, epoch) = {
            let disk = project.0.borrow();
            (
                disk.files.get(&path("notes.txt")).cloned(),
                disk.committed_epoch,
            )
        };
        assert_eq!(file.as_deref(), Some(&b"hello"[..]));
        assert_eq!(epoch, 1);
        assert_eq!(
            project_rx.recv().await,
            Some(ProjectEvent::Connected {
                compute_id: 7,
                full: true
            })
        );
        assert!(matches!(
            project_rx.recv().await,
            Some(ProjectEvent::SyncDone {
                epoch: 1,
                pushed: 1,
                ..
            })
        ));
    })
    .await;
}

#[tokio::test]
async fn a_connect_that_is_never_answered_times_out_and_is_retried() {
    local(async {
        let (compute, project) = (FakeCompute::default(), FakeProject::default());
        let (client, server) = tokio::io::duplex(1 << 16);
        let server = spawn_server(server, &project, project_config(), None);
        // Without a bound on connecting, the agent would wait forever.
        let connector = HangsFirst(false, OneStream(Some(client)));
        let (agent, commands, mut events) =
            spawn_agent(connector, &compute, Duration::from_millis(300));
        assert_eq!(first_sync(&mut events).await.epoch, 1);
        commands.send(AgentCommand::Shutdown).unwrap();
        agent.await.unwrap().unwrap();
        server.await.unwrap().unwrap();
    })
    .await;
}

/// A project server with a short step timeout (pings every 50 ms, a
/// silent peer gone after 1 s), welcoming a raw client.
async fn welcomed_raw_client() -> (transport::Ws<DuplexStream>, Server) {
    let project = FakeProject::default();
    let (client, server) = tokio::io::duplex(1 << 16);
    let config = ProjectConfig {
        step_timeout: Duration::from_millis(200),
        ..project_config()
    };
    let server = spawn_server(server, &project, config, None);
    let mut ws = transport::connect("ws://project/", client).await.unwrap();
    transport::send(&mut ws, &hello(PROTOCOL_VERSION, TOKEN))
        .await
        .unwrap();
    match transport::recv(&mut ws).await.unwrap() {
        Some(Message::Welcome { .. }) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    (ws, server)
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_dropped_after_the_idle_bound() {
    local(async {
        let (ws, server) = welcomed_raw_client().await;
        // Half-open: the client neither reads (no pongs) nor closes.
        let ended = server.await.unwrap();
        assert!(
            matches!(ended, Err(ServeError::Transport(TransportError::Idle(_)))),
            "{ended:?}"
        );
        drop(ws);
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_keeps_reading_answers_pings_and_stays_connected() {
    local(async {
        let (mut ws, server) = welcomed_raw_client().await;
        // 40 pings of 50 ms: twice the idle bound, answered as they come.
        let mut pings = 0;
        while pings < 40 {
            match ws.next().await {
                Some(Ok(Frame::Ping(_))) => pings += 1,
                Some(Ok(_)) => {}
                other => panic!("the server ended the connection: {other:?}"),
            }
        }
        assert!(!server.is_finished());
        ws.close(None).await.unwrap();
        server.await.unwrap().unwrap();
    })
    .await;
}
