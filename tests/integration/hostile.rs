//! The client against a hostile daemon (issue 8): the [`hostile_peer`] plays buildkitd and
//! drives the client's FileSync and FileSend services with crafted packet sequences. Every
//! case checks that nothing outside the context was read and nothing outside the export
//! destination was written (a sibling tree is snapshotted before and after), and that no
//! temporary file is left behind.

use std::path::PathBuf;

use pf_buildkit::buildkit::progress::QuietProgress;
use pf_buildkit::buildkit::proto::fsutil::types::Packet;
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

/// On a second FileSend stream, sends `name` as a symlink to `target` and finishes the
/// stream; the client's FIN means the swap is applied in the destination.
async fn swap_in_symlink(call: &mut DiffCopy, name: &str, target: &std::path::Path) {
    call.send(stat(packets::symlink(name, target.to_str().unwrap())))
        .await;
    call.send(stats_end()).await;
    assert!(until_fin(call).await.unwrap());
    call.send(fin()).await;
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

/// Issue 8: two concurrent FileSend streams into one destination. Stream A sends directory
/// `d` and file `d/f` and holds the data after the REQ; stream B replaces `d` with a symlink
/// to a directory outside; then A's data arrives. It must not be written through the link.
#[tokio::test]
async fn r8_concurrent_streams_cannot_redirect_a_write() {
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;

    let mut a = call.session.file_send(0).await.unwrap();
    let mut b = call.session.file_send(0).await.unwrap();
    a.send(stat(dir("d"))).await;
    a.send(stat(file("d/f", 4))).await;
    until_req(&mut a, 1).await;

    // Once B's FIN is in, `d` is the symlink.
    swap_in_symlink(&mut b, "d", &fx.outside.join("dir")).await;
    b.close_send();

    a.send(data(1, &b"EVIL"[..])).await;
    a.send(eof(1)).await;
    a.send(stats_end()).await;
    let outcome = until_fin(&mut a).await;
    assert!(
        !matches!(outcome, Ok(true)),
        "the client accepted a write through a swapped-in symlink"
    );
    fx.assert_contained();
    fail_build(build, call, "export refused").await;
}

/// Without `--secret` and `--ssh` the session announces neither service; Auth, FileSync,
/// FileSend and health are always there.
#[tokio::test]
async fn session_offers_only_what_was_asked() {
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let methods = call.session.methods.clone();
    for m in [
        "/grpc.health.v1.Health/Check",
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.filesync.v1.FileSend/DiffCopy",
        "/moby.filesync.v1.Auth/Credentials",
    ] {
        assert!(
            methods.iter().any(|x| x == m),
            "{m} missing from {methods:?}"
        );
    }
    assert!(
        !methods
            .iter()
            .any(|m| m.contains("Secrets") || m.contains("sshforward")),
        "unasked services offered: {methods:?}"
    );
    call.succeed();
    build.await.unwrap().unwrap();
}

/// A FileSend call the client must refuse: it ends with an error (never FIN), and the error
/// is one line that names `entry`.
async fn assert_refused(call: &mut DiffCopy, entry: &str) {
    match until_fin(call).await {
        Err(status) => {
            let message = status.message();
            assert!(!message.contains('\n'), "not one line: {message}");
            assert!(
                message.contains(entry),
                "the error does not name {entry:?}: {message}"
            );
        }
        Ok(fin) => panic!("the client accepted the stream (FIN: {fin})"),
    }
}

/// A hardlink entry written through a directory another stream swapped for a symlink to
/// an outside directory (which holds a file of the same name) must not replace that file.
#[tokio::test]
async fn r8_hardlink_through_a_swapped_directory() {
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let mut a = call.session.file_send(0).await.unwrap();
    let mut b = call.session.file_send(0).await.unwrap();
    a.send(stat(file("a", 9))).await;
    until_req(&mut a, 0).await;
    a.send(data(0, &b"EVIL-LINK"[..])).await;
    a.send(eof(0)).await;
    a.send(stat(dir("d"))).await;
    a.send(stat(file("d/f", 0))).await;
    // The REQ for d/f proves `a` is in place and `d` exists.
    until_req(&mut a, 2).await;

    swap_in_symlink(&mut b, "d", &fx.outside.join("dir")).await;

    a.send(stat(packets::hardlink("d/l", "a"))).await;
    a.send(stats_end()).await;
    a.send(eof(2)).await;
    assert_refused(&mut a, "d/l").await;
    fx.assert_contained();
    fail_build(build, call, "export refused").await;
}

/// A hardlink whose target another stream swapped for a symlink to an outside file must
/// not link (or write) the outside file.
#[tokio::test]
async fn r8_hardlink_to_a_swapped_target() {
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let mut a = call.session.file_send(0).await.unwrap();
    let mut b = call.session.file_send(0).await.unwrap();
    a.send(stat(file("t", 4))).await;
    until_req(&mut a, 0).await;
    a.send(data(0, &b"TTTT"[..])).await;
    a.send(eof(0)).await;
    a.send(stat(file("tz", 0))).await;
    until_req(&mut a, 1).await;

    swap_in_symlink(&mut b, "t", &fx.outside.join("marker")).await;

    a.send(stat(packets::hardlink("u", "t"))).await;
    a.send(stats_end()).await;
    a.send(eof(1)).await;
    assert_refused(&mut a, "u").await;
    fx.assert_contained();
    fail_build(build, call, "export refused").await;
}

/// Paths that are not one clean relative name each: `..`, absolute, empty, a NUL byte,
/// a component longer than any filesystem allows. Each is refused with one line naming it,
/// nothing is written outside and no temporary file is left.
#[tokio::test]
async fn r8_bad_paths_are_refused_without_litter() {
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let absolute = fx.outside.join("dir/f").to_str().unwrap().to_owned();
    let long = "x".repeat(300);
    let cases: Vec<(String, bool)> = vec![
        ("../escape".into(), false),
        ("a/../../escape".into(), false),
        (absolute, false),
        (String::new(), false),
        ("nul\0byte".into(), false),
        (long.clone(), false),
        (long.clone(), true),
    ];
    for (path, as_symlink) in cases {
        let mut call_ = call.session.file_send(0).await.unwrap();
        if as_symlink {
            call_.send(stat(packets::symlink(&path, "target"))).await;
        } else {
            call_.send(stat(file(&path, 4))).await;
            call_.send(data(0, &b"EVIL"[..])).await;
            call_.send(eof(0)).await;
        }
        call_.send(stats_end()).await;
        let shown: String = path.chars().filter(|c| *c != '\0').take(40).collect();
        let shown = if path.contains('\0') {
            "nul".to_owned()
        } else {
            shown
        };
        assert_refused(&mut call_, &shown).await;
        fx.assert_contained();
        let litter = snapshot::temp_files(&fx.dest);
        assert!(litter.is_empty(), "{path:?} left {litter:?}");
    }
    fail_build(build, call, "export refused").await;
}

/// Context fixture for FileSync: a symlink to the outside marker, a symlink to the outside
/// directory, a subdirectory.
fn hostile_context(fx: &Fixture) {
    std::os::unix::fs::symlink(fx.outside.join("marker"), fx.ctx.join("link")).unwrap();
    std::os::unix::fs::symlink(fx.outside.join("dir"), fx.ctx.join("linkdir")).unwrap();
    std::fs::create_dir(fx.ctx.join("sub")).unwrap();
    std::fs::write(fx.ctx.join("sub/in.txt"), b"in").unwrap();
}

/// No packet the client sent carries the outside marker's bytes.
fn assert_no_marker(packets: &[Packet]) {
    for p in packets {
        assert!(
            !p.data.windows(MARKER.len()).any(|w| w == MARKER),
            "the client sent bytes from outside the context: {p:?}"
        );
    }
}

/// REQs for ids never sent, and for entries that are not regular files (a symlink that
/// points outside, a directory): the client ends the call and sends no outside bytes.
#[tokio::test]
async fn r8_filesync_requests_for_unsent_ids() {
    let fx = Fixture::new();
    hostile_context(&fx);
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let mut first = call
        .session
        .file_sync(&SyncRequest::dir("context"))
        .await
        .unwrap();
    let stats = stats_of(&mut first).await;
    let id_of = |name: &str| stats.iter().position(|s| s.path == name).unwrap() as u32;
    for id in [
        id_of("link"),
        id_of("linkdir"),
        id_of("sub"),
        99_999,
        u32::MAX,
    ] {
        let mut sync = call
            .session
            .file_sync(&SyncRequest::dir("context"))
            .await
            .unwrap();
        let _ = stats_of(&mut sync).await;
        sync.send(req(id)).await;
        let (packets, status) = sync.drain().await;
        assert_no_marker(&packets);
        assert!(
            !packets
                .iter()
                .any(|p| packets::is(p, PacketType::PacketData)),
            "data sent for id {id}"
        );
        assert!(status.is_some(), "REQ {id} was not refused");
    }
    first.send(fin()).await;
    fx.assert_contained();
    call.succeed();
    let _ = build.await.unwrap();
}

/// Symlinks in the context that point outside, even when the daemon asks to follow them
/// (`followpaths`) or names them in patterns: outside bytes never reach the daemon.
#[tokio::test]
async fn r8_filesync_symlinks_pointing_outside() {
    let fx = Fixture::new();
    hostile_context(&fx);
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let requests = [
        SyncRequest::dir("context"),
        SyncRequest {
            follow_paths: vec!["link".into(), "linkdir/f".into(), "linkdir".into()],
            ..SyncRequest::dir("context")
        },
        SyncRequest {
            include_patterns: vec![
                "link".into(),
                "linkdir/f".into(),
                "../outside/marker".into(),
            ],
            follow_paths: vec!["link".into(), "linkdir/f".into()],
            ..SyncRequest::dir("context")
        },
    ];
    for request in &requests {
        let Ok(mut sync) = call.session.file_sync(request).await else {
            continue;
        };
        let mut stats = Vec::new();
        let mut all = Vec::new();
        let mut failed = false;
        loop {
            match sync.recv().await {
                Some(Ok(p)) if packets::is(&p, PacketType::PacketStat) => {
                    let end = p.stat.is_none();
                    if let Some(s) = &p.stat {
                        stats.push(s.clone());
                    }
                    all.push(p);
                    if end {
                        break;
                    }
                }
                Some(Ok(p)) => all.push(p),
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            // Ask for every entry, as a greedy daemon would.
            for id in 0..stats.len() as u32 {
                sync.send(req(id)).await;
            }
            sync.send(fin()).await;
            sync.close_send();
            let (rest, _) = sync.drain().await;
            all.extend(rest);
        }
        assert_no_marker(&all);
    }
    fx.assert_contained();
    call.succeed();
    let _ = build.await.unwrap();
}

/// 100,000 tiny STATs with no pacing, then the data of each file as soon as it is asked
/// for: the client keeps up and writes them all.
///
/// This burst may also meet the HTTP/2 DATA-frame budget that issue 8's flood fix (another
/// change) addresses; a failure here with ENHANCE_YOUR_CALM / too_many_data_frames is that
/// bug, not this test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_filesend_100k_stats_without_pacing() {
    const N: u32 = 100_000;
    let fx = Fixture::new();
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let mut send = call.session.file_send(0).await.unwrap();
    let tx = send.sender();
    let burst = tokio::spawn(async move {
        for i in 0..N {
            if tx.send(stat(file(&format!("f{i:06}"), 0))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(stats_end()).await;
    });
    let tx = send.sender();
    let mut answered = 0;
    let fin_seen = loop {
        // Once every file is asked for, the client says nothing until all are written: on a
        // loaded machine (a debug build, 100,000 creates and renames) that takes a while.
        let wait = if answered == N {
            std::time::Duration::from_secs(600)
        } else {
            crate::hostile_peer::PEER_WAIT
        };
        match send.recv_within(wait).await {
            Some(Ok(p)) if packets::is(&p, PacketType::PacketReq) => {
                tx.send(eof(p.id)).await.unwrap();
                answered += 1;
            }
            Some(Ok(p)) if packets::is(&p, PacketType::PacketFin) => break true,
            Some(Ok(_)) => {}
            other => panic!("the transfer failed after {answered} files: {other:?}"),
        }
    };
    assert!(fin_seen);
    send.send(fin()).await;
    burst.await.unwrap();
    assert_eq!(answered, N);
    let written = std::fs::read_dir(&fx.dest).unwrap().count();
    assert_eq!(written, N as usize);
    fx.assert_contained();
    call.succeed();
    build.await.unwrap().unwrap();
}

/// 100,000 REQs in one burst: the daemon asks the client's FileSync for every file of a
/// 100,000-file context at once, without reading anything back until all are sent. The
/// session stays up, every file's bytes arrive intact and each exactly once, and nothing
/// outside the context is read (the context also holds symlinks to the outside marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_filesync_100k_reqs_in_one_burst() {
    use std::collections::{HashMap, HashSet};

    use pf_buildkit::buildkit::fsutil::mode;

    const N: usize = 100_000;
    let fx = Fixture::new();
    hostile_context(&fx);
    // 100 directories of 1,000 files, each holding its own path (so a mix-up shows).
    for i in 0..N {
        let dir = fx.ctx.join(format!("many/d{:02}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let rel = format!("many/d{:02}/f{i:06}", i % 100);
        std::fs::write(fx.ctx.join(&rel), rel.as_bytes()).unwrap();
    }
    let mut peer = HostilePeer::start().await;
    let (build, call) = start_build(&mut peer, fx.options()).await;
    let mut sync = call
        .session
        .file_sync(&SyncRequest::dir("context"))
        .await
        .unwrap();
    let stats = stats_of(&mut sync).await;
    let files: Vec<u32> = stats
        .iter()
        .enumerate()
        .filter(|(_, s)| s.mode & mode::TYPE == 0)
        .map(|(id, _)| id as u32)
        .collect();
    assert_eq!(
        files.len(),
        N + 3,
        "Dockerfile, inside.txt, sub/in.txt and the N files"
    );

    // Every REQ from another task, as fast as the stream takes them, while this one reads.
    let tx = sync.sender();
    let ids = files.clone();
    let burst = tokio::spawn(async move {
        for id in ids {
            tx.send(req(id)).await.unwrap();
        }
    });
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut finished = HashSet::new();
    let mut all_data = Vec::new();
    while finished.len() < files.len() {
        match sync.recv().await {
            Some(Ok(p)) if packets::is(&p, PacketType::PacketData) => {
                assert!(
                    files.binary_search(&p.id).is_ok(),
                    "data for id {}, which was not asked for",
                    p.id
                );
                assert!(!finished.contains(&p.id), "data for {} after its end", p.id);
                if p.data.is_empty() {
                    finished.insert(p.id);
                } else {
                    got.entry(p.id).or_default().extend_from_slice(&p.data);
                }
                all_data.push(p);
            }
            other => panic!(
                "the client failed after {} files: {other:?}",
                finished.len()
            ),
        }
    }
    burst.await.unwrap();
    for &id in &files {
        let path = &stats[id as usize].path;
        let want = std::fs::read(fx.ctx.join(path)).unwrap();
        assert_eq!(
            got.get(&id).map(Vec::as_slice).unwrap_or_default(),
            want.as_slice(),
            "the bytes of {path}"
        );
    }
    assert_no_marker(&all_data);
    sync.send(fin()).await;
    assert!(until_fin(&mut sync).await.unwrap(), "the session stayed up");
    fx.assert_contained();
    call.succeed();
    build.await.unwrap().unwrap();
}

/// A daemon that sends a `type=tar` export whole, ends its stream cleanly and then fails the
/// build places nothing at the destination and leaves no temporary file; the same stream
/// followed by success places the file.
#[tokio::test]
async fn r16_an_export_the_solve_disowns_never_appears() {
    for succeed in [false, true] {
        let fx = Fixture::new();
        let tar = fx.dest.with_file_name("image.tar");
        let mut options = fx.options();
        options.outputs = vec![format!("type=tar,dest={}", tar.display()).parse().unwrap()];
        let mut peer = HostilePeer::start().await;
        let (build, call) = start_build(&mut peer, options).await;
        call.session
            .send_file(0, &[b"first half of a tar, ", b"second half"])
            .await
            .unwrap();
        assert!(
            !tar.exists(),
            "the file was placed before the Solve's verdict"
        );
        if succeed {
            call.succeed();
            build.await.unwrap().unwrap();
            assert_eq!(
                std::fs::read(&tar).unwrap(),
                b"first half of a tar, second half"
            );
        } else {
            fail_build(build, call, "export failed after the stream").await;
            assert!(!tar.exists(), "a failed build placed its tar");
        }
        fx.assert_contained();
        let litter: Vec<_> = std::fs::read_dir(tar.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(litter.is_empty(), "temporary files left: {litter:?}");
    }
}
