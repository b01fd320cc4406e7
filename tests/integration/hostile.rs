//! The client against a hostile daemon (issue 8): the [`hostile_peer`] plays buildkitd and
//! drives the client's FileSync and FileSend services with crafted packet sequences. Every
//! case checks that nothing outside the context was read and nothing outside the export
//! destination was written (a sibling tree is snapshotted before and after), and that no
//! temporary file is left behind.

// Helpers used by the cases of the next commit.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

use pf_buildkit::buildkit::progress::QuietProgress;
use pf_buildkit::buildkit::proto::fsutil::types::packet::PacketType;
use pf_buildkit::buildkit::{BuildError, BuildOptions, BuildResult};

use crate::hostile_peer::packets::{self, data, dir, eof, file, fin, req, stat, stats_end};
use crate::hostile_peer::snapshot::{self, Snapshot};
use crate::hostile_peer::{DiffCopy, HostilePeer, SolveCall, SyncRequest};

/// Bytes that exist only outside the context and destination: they must never reach the peer.
const MARKER: &[u8] = b"OUTSIDE-MARKER-7f3a9c: never sent, never overwritten";

/// A scratch tree: `outside/` (a sibling holding the marker), `ctx/` (the build context)
/// and `dest/` (the local export's destination).
struct Fixture {
    _tmp: tempfile::TempDir,
    outside: PathBuf,
    ctx: PathBuf,
    dest: PathBuf,
    before: Snapshot,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let outside = root.join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("marker"), MARKER).unwrap();
        std::fs::write(outside.join("dir/f"), MARKER).unwrap();
        std::fs::write(outside.join("dir/l"), MARKER).unwrap();
        let ctx = root.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        std::fs::write(ctx.join("inside.txt"), b"inside").unwrap();
        let dest = root.join("dest");
        let before = snapshot::take(&outside);
        Fixture {
            _tmp: tmp,
            outside,
            ctx,
            dest,
            before,
        }
    }

    /// Build options for this context with one `local` export into `dest`.
    fn options(&self) -> BuildOptions {
        let mut options = BuildOptions::new(&self.ctx);
        options.registry_auth = false;
        options.outputs.push(
            format!("type=local,dest={}", self.dest.display())
                .parse()
                .unwrap(),
        );
        options
    }

    /// Nothing outside was touched and no temporary file is left anywhere.
    fn assert_contained(&self) {
        assert_eq!(
            snapshot::take(&self.outside),
            self.before,
            "the tree outside the destination changed"
        );
        let root = self.outside.parent().unwrap();
        let litter = snapshot::temp_files(root);
        assert!(litter.is_empty(), "temporary files left: {litter:?}");
    }
}

/// Starts `options`' build against the peer and returns the build task and its Solve.
async fn start_build(
    peer: &mut HostilePeer,
    options: BuildOptions,
) -> (
    tokio::task::JoinHandle<Result<BuildResult, BuildError>>,
    SolveCall,
) {
    let client = peer.client().await;
    let build = tokio::spawn(async move { client.build(&options, &mut QuietProgress).await });
    let call = peer.next_solve().await;
    (build, call)
}

/// Reads from a FileSend call until the client sends FIN (true) or ends the call (false).
async fn until_fin(call: &mut DiffCopy) -> Result<bool, tonic::Status> {
    loop {
        match call.recv().await {
            None => return Ok(false),
            Some(Err(status)) => return Err(status),
            Some(Ok(p)) if packets::is(&p, PacketType::PacketFin) => return Ok(true),
            Some(Ok(_)) => {}
        }
    }
}

/// Reads from a FileSend call until the client asks for `id`.
async fn until_req(call: &mut DiffCopy, id: u32) {
    loop {
        match call.recv().await {
            Some(Ok(p)) if packets::is(&p, PacketType::PacketReq) && p.id == id => return,
            Some(Ok(_)) => {}
            other => panic!("the client ended the call before asking for {id}: {other:?}"),
        }
    }
}

/// Ends the build with a failure and checks the client reported one.
async fn fail_build(
    build: tokio::task::JoinHandle<Result<BuildResult, BuildError>>,
    call: SolveCall,
    why: &str,
) {
    call.fail(why);
    let result = build.await.unwrap();
    assert!(result.is_err(), "the build should fail");
}

/// FileSync as an honest daemon does it: every entry, then the data of the one file asked
/// for. Checks the harness itself and the baseline the hostile cases depart from.
#[tokio::test]
async fn peer_reads_the_context_like_a_daemon() {
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let mut sync = call
        .session
        .file_sync(&SyncRequest::dir("context"))
        .await
        .unwrap();
    let stats = stats_of(&mut sync).await;
    let names: Vec<&str> = stats.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(names, ["Dockerfile", "inside.txt"]);
    let id = names.iter().position(|n| *n == "inside.txt").unwrap() as u32;
    sync.send(req(id)).await;
    let got = data_of(&mut sync, id).await;
    assert_eq!(got, b"inside");
    sync.send(fin()).await;
    assert!(until_fin(&mut sync).await.unwrap());
    fx.assert_contained();
    call.succeed();
    build.await.unwrap().unwrap();
}

/// Reads a FileSync call's entries up to the end-of-stats marker.
async fn stats_of(call: &mut DiffCopy) -> Vec<pf_buildkit::buildkit::fsutil::Stat> {
    let mut out = Vec::new();
    loop {
        match call.recv().await {
            Some(Ok(p)) if packets::is(&p, PacketType::PacketStat) => match p.stat {
                Some(s) => out.push(s),
                None => return out,
            },
            Some(Ok(p)) => panic!("unexpected packet before the end of stats: {p:?}"),
            other => panic!("the client ended the call during stats: {other:?}"),
        }
    }
}

/// Reads the data of file `id` up to its EOF; data of other ids fails the test.
async fn data_of(call: &mut DiffCopy, id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        match call.recv().await {
            Some(Ok(p)) if packets::is(&p, PacketType::PacketData) => {
                assert_eq!(p.id, id, "data for an id that was not asked for");
                if p.data.is_empty() {
                    return out;
                }
                out.extend_from_slice(&p.data);
            }
            other => panic!("expected data for {id}, got {other:?}"),
        }
    }
}
