//! Drop is cleanup (issue 16): a build future dropped while the context is sent, while a RUN
//! step runs, while the daemon writes a local cache, and while it writes an OCI layout output
//! leaves nothing behind. After each cancellation the destinations are exactly as they were
//! (no blob, no `ingest/`, no temporary file, no exported file), no descriptor is open under
//! the test's directory, and the runtime's live tasks are back to their count before the
//! build; once the client is dropped too, to their count before it connected. For the RUN
//! step on the standalone daemon (whose steps reach the host network), the daemon's side is
//! checked as well: the step's connection back to the test closes, so the Solve was
//! cancelled, not just abandoned.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pf_buildkit::buildkit::progress::{FailureReport, ProgressSink, SolveStatus, TransferSummary};
use pf_buildkit::buildkit::{BuildOptions, Cache, Client, Endpoint, Output, TlsOptions};

use crate::hostile_peer::snapshot;
use crate::leftovers::{self, open_under, settle, tasks_back_to};
use crate::util::{self, Tier};

/// Progress that raises a flag on the first status update `matches` accepts.
struct Trigger<F> {
    hit: Arc<AtomicBool>,
    matches: F,
}

impl<F: Fn(&SolveStatus) -> bool + Send> ProgressSink for Trigger<F> {
    fn update(&mut self, status: &SolveStatus) {
        if (self.matches)(status) {
            self.hit.store(true, Ordering::Release);
        }
    }

    fn finish(&mut self, _transfer: &TransferSummary, _failure: Option<&FailureReport>) {}
}

/// Whether `dir/ingest` holds an upload in progress.
fn uploading(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("ingest")).is_ok_and(|mut e| e.next().is_some())
}

/// The phase a test cancels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A 64 MiB (sparse) file of the context is being sent.
    Context,
    /// A RUN step runs.
    Run,
    /// The daemon writes a local cache export into the client's store.
    CacheExport,
    /// The daemon writes a `type=oci,tar=false` output into the client's store.
    LayoutExport,
}

/// A listener the standalone daemon's RUN step connects to: `connected` once it did,
/// `closed` once the connection ended (the step was killed).
struct StepProbe {
    port: u16,
    connected: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl StepProbe {
    /// Accepts one connection on a plain thread (not a task: the test counts tasks) and
    /// reads it to its end.
    fn start() -> StepProbe {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connected = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let (c, d) = (connected.clone(), closed.clone());
        std::thread::spawn(move || {
            let Ok((mut socket, _)) = listener.accept() else {
                return;
            };
            c.store(true, Ordering::Release);
            let mut buf = [0u8; 64 << 10];
            while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
            d.store(true, Ordering::Release);
        });
        StepProbe {
            port,
            connected,
            closed,
        }
    }
}

async fn cancel_in(tier: Tier, phase: Phase) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let ctx = root.join("ctx");
    let out = root.join("out");
    std::fs::create_dir_all(&ctx).unwrap();
    // Destinations that hold something already: it must be exactly what is left.
    for dir in ["cache", "layout"] {
        std::fs::create_dir_all(out.join(dir)).unwrap();
        std::fs::write(out.join(dir).join("keep"), b"was here before").unwrap();
    }
    let base = util::env("PF_TEST_BASE_IMAGE");
    let nonce = format!("cancel-{}-{:?}", std::process::id(), phase).to_lowercase();
    let probe = (phase == Phase::Run && tier == Tier::Standalone).then(StepProbe::start);

    let mut options = BuildOptions::new(&ctx);
    options.registry_auth = false;
    options.no_cache = true;
    options.session_via_control = tier.session_via_control();
    if probe.is_none() {
        options
            .frontend_attrs
            .insert("force-network-mode".into(), "none".into());
    }
    let big_layer =
        format!("FROM {base}\nRUN echo {nonce} && head -c 16000000 /dev/urandom > /big\n");
    let dockerfile = match phase {
        Phase::Context => {
            let big = std::fs::File::create(ctx.join("big")).unwrap();
            big.set_len(64 << 20).unwrap();
            options.outputs.push(
                format!("type=tar,dest={}", out.join("image.tar").display())
                    .parse()
                    .unwrap(),
            );
            "FROM scratch\nCOPY . /\n".to_owned()
        }
        Phase::Run => match &probe {
            Some(probe) => format!(
                "FROM {base}\nRUN echo {nonce} && nc 127.0.0.1 {} < /dev/zero\n",
                probe.port
            ),
            None => format!("FROM {base}\nRUN echo {nonce} && sleep 120\n"),
        },
        Phase::CacheExport => {
            options
                .cache_exports
                .push(Cache::local(out.join("cache")).with_attr("mode", "max"));
            big_layer
        }
        Phase::LayoutExport => {
            options.outputs.push(Output::oci_layout(out.join("layout")));
            big_layer
        }
    };
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();

    let before_client = leftovers::alive_tasks();
    let endpoint: Endpoint = tier.addr().parse().unwrap();
    let client = Client::connect(endpoint, &TlsOptions::default())
        .await
        .unwrap();
    let before_build = leftovers::alive_tasks();
    let before = snapshot::take(&out);

    let hit = Arc::new(AtomicBool::new(false));
    let marker = nonce.clone();
    let mut progress = Trigger {
        hit: hit.clone(),
        matches: move |status: &SolveStatus| match phase {
            Phase::Context => {
                status.vertexes.iter().any(|v| {
                    v.name.contains("load build context")
                        && v.started.is_some()
                        && v.completed.is_none()
                }) || status
                    .statuses
                    .iter()
                    .any(|s| s.id.contains("transferring context"))
            }
            Phase::Run => status
                .logs
                .iter()
                .any(|l| String::from_utf8_lossy(&l.data).contains(&marker)),
            Phase::CacheExport | Phase::LayoutExport => false,
        },
    };
    let reached = || match phase {
        Phase::Context => hit.load(Ordering::Acquire),
        Phase::Run => match &probe {
            Some(probe) => probe.connected.load(Ordering::Acquire),
            None => hit.load(Ordering::Acquire),
        },
        Phase::CacheExport => uploading(&out.join("cache")),
        Phase::LayoutExport => uploading(&out.join("layout")),
    };
    {
        let build = client.build(&options, &mut progress);
        tokio::pin!(build);
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        let deadline = tokio::time::sleep(Duration::from_secs(180));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                result = &mut build => panic!("{phase:?}: the build ended before the phase: {result:?}"),
                _ = poll.tick() => if reached() { break },
                () = &mut deadline => panic!("{phase:?}: not reached within 180 s"),
            }
        }
        // Leaving the block drops the build: the cancellation under test.
    }

    settle(Duration::from_secs(30), || {
        let now = snapshot::take(&out);
        if now != before {
            let changed: Vec<&PathBuf> = now
                .keys()
                .chain(before.keys())
                .filter(|p| now.get(*p) != before.get(*p))
                .collect();
            return Err(format!("{phase:?}: the destinations changed: {changed:?}"));
        }
        let open = open_under(&root);
        if !open.is_empty() {
            return Err(format!("{phase:?}: files left open: {open:?}"));
        }
        Ok(())
    })
    .await;
    tasks_back_to(
        before_build,
        &format!("{phase:?}: after the cancelled build"),
    )
    .await;
    if let Some(probe) = probe {
        settle(Duration::from_secs(60), || {
            if probe.closed.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("the daemon still runs the cancelled RUN step".into())
            }
        })
        .await;
    }
    drop(client);
    tasks_back_to(
        before_client,
        &format!("{phase:?}: after the client was dropped"),
    )
    .await;
}

async fn cancelled_while_sending_the_context(tier: Tier) {
    cancel_in(tier, Phase::Context).await;
}

async fn cancelled_while_a_run_step_runs(tier: Tier) {
    cancel_in(tier, Phase::Run).await;
}

async fn cancelled_while_exporting_a_local_cache(tier: Tier) {
    cancel_in(tier, Phase::CacheExport).await;
}

async fn cancelled_while_exporting_an_oci_layout(tier: Tier) {
    cancel_in(tier, Phase::LayoutExport).await;
}

tier_tests!(
    async cancelled_while_sending_the_context,
    async cancelled_while_a_run_step_runs,
    async cancelled_while_exporting_a_local_cache,
    async cancelled_while_exporting_an_oci_layout,
);

/// The client-side push (what a multi-platform build does when the daemon cannot push): the
/// push of an OCI tarball is dropped once its first blob upload has begun. Once the
/// registry client is dropped too, no task of the push is alive and nothing under the
/// test's directory is open.
#[tokio::test]
async fn cancelled_while_the_client_pushes() {
    use crate::registry_proxy::{Proxy, ProxyConfig};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let ctx = root.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let base = util::env("PF_TEST_BASE_IMAGE");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN head -c 16000000 /dev/urandom > /big\n"),
    )
    .unwrap();
    let tar = root.join("image.tar");
    let tier = Tier::preferred();
    let mut options = crate::shared_store::options_for(tier, &ctx);
    options.no_cache = true;
    options
        .outputs
        .push(format!("type=oci,dest={}", tar.display()).parse().unwrap());
    let client = crate::shared_store::connect(tier).await;
    client
        .build(
            &options,
            &mut pf_buildkit::buildkit::progress::QuietProgress,
        )
        .await
        .unwrap();
    drop(client);

    let proxy = Proxy::start(ProxyConfig::default()).await;
    let before_push = leftovers::alive_tasks();
    let registry = pf_buildkit::registry::Client::new(
        pf_buildkit::registry::ClientOptions::default().with_insecure(true),
    )
    .unwrap();
    let target = pf_buildkit::registry::parse_reference(&format!(
        "{}/pf-test/cancelled-push-{}:v1",
        proxy.addr,
        std::process::id()
    ))
    .unwrap();
    {
        let push = registry.push_oci_layout(&tar, &target);
        tokio::pin!(push);
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                result = &mut push => panic!("the push ended before a blob upload began: {result:?}"),
                _ = poll.tick() => {
                    if proxy.log().iter().any(|(m, p, _)| m == "POST" && p.contains("/blobs/uploads/")) {
                        break;
                    }
                }
            }
        }
        // Leaving the block drops the push.
    }
    drop(registry);
    settle(Duration::from_secs(30), || {
        let open = open_under(&root);
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("files left open: {open:?}"))
        }
    })
    .await;
    tasks_back_to(before_push, "after the cancelled push").await;
}
