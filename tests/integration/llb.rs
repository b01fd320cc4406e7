//! The LLB builder against BuildKit v0.32.2's own Go `client/llb`: the thirteen reference
//! graphs of `tests/llb-fixtures/` (copied from the shared reference, whose README explains
//! them) are built with `pf_buildkit::llb`, must marshal to the same bytes and digests op by
//! op, and must solve on every daemon tier to the same result listing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use pf_buildkit::buildkit::progress::QuietProgress;
use pf_buildkit::buildkit::session::SecretSource;
use pf_buildkit::buildkit::{BuildOptions, Client, Endpoint, TlsOptions};
use pf_buildkit::llb::{
    self, CacheSharing, MarshalOptions, Mount, NetMode, OpOptions, SecurityMode,
};

use crate::util::{self, Tier};

/// The base image reference the fixtures were made with.
const FIXTURE_IMAGE: &str = "127.0.0.1:5055/base/busybox:1.35";

const NAMES: [&str; 13] = [
    "mkfile",
    "image",
    "run",
    "run-mounts",
    "copy",
    "local",
    "local-pinned",
    "chain",
    "merge",
    "secret-ssh",
    "platform-arm64",
    "network-none",
    "named",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llb-fixtures")
}

fn fixture(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn amd64() -> llb::Platform {
    "linux/amd64".parse().unwrap()
}

/// The fixture's graph, built as its `go` expression says, on `image`. `network` replaces the
/// exec ops' default network (the Engine tier has no bridge network to give them).
fn graph(name: &str, image: &str, network: NetMode) -> llb::State {
    let base = llb::image(image);
    match name {
        "mkfile" => llb::scratch().file(llb::mkfile("/hello.txt", 0o644, "hello\n")),
        "image" => base,
        "run" => base
            .run_shlex(r#"sh -c "echo hi > /hi.txt""#)
            .network(network)
            .root(),
        "run-mounts" => {
            let st = base
                .run_shlex(r#"sh -c "date > /cache/stamp; cp /cache/stamp /out/stamp; ls /tmpfs""#)
                .mount(
                    "/cache",
                    &llb::scratch(),
                    Mount::cache("pf-llb-cache", CacheSharing::Shared),
                )
                .mount("/tmpfs", &llb::scratch(), Mount::tmpfs())
                .dir("/")
                .env("FOO", "bar")
                .network(network)
                .mount("/out", &llb::scratch(), Mount::bind())
                .build();
            st.mount_state("/out").unwrap()
        }
        "copy" => {
            llb::scratch().file(llb::copy(&base, "/bin/busybox", "/busybox").create_dest_path(true))
        }
        "local" | "local-pinned" => llb::Local::new("context")
            .shared_key_hint("ctx")
            .include(["*.txt"])
            .exclude(["secret.txt"])
            .into_state(),
        "chain" => llb::scratch().file(
            llb::mkdir("/a", 0o755)
                .then(llb::mkfile("/a/b", 0o600, "b"))
                .then(llb::rm("/a/b").allow_not_found(true)),
        ),
        "merge" => llb::merge([
            &llb::scratch().file(llb::mkfile("/x", 0o644, "x")),
            &llb::scratch().file(llb::mkfile("/y", 0o644, "y")),
        ]),
        "secret-ssh" => base
            .run_shlex("cat /run/secrets/tok")
            .secret("/run/secrets/tok", "tok")
            .ssh()
            .network(network)
            .root(),
        "platform-arm64" => llb::Image::new(image)
            .platform("linux/arm64".parse().unwrap())
            .into_state()
            .file(llb::mkfile("/p", 0o644, "arm")),
        "network-none" => base
            .run_shlex("true")
            .network(NetMode::None)
            .security(SecurityMode::Sandbox)
            .root(),
        "named" => {
            llb::scratch().file_with(llb::mkfile("/n", 0o644, "n"), OpOptions::named("make n"))
        }
        other => panic!("no graph for fixture {other}"),
    }
}

/// The Marshal options the fixture used: linux/amd64, and its own local unique id (`local`
/// drew a random one; marshalling with the same value must give the same bytes).
fn marshal_options(fx: &serde_json::Value) -> MarshalOptions {
    let unique = fx["ops"][0]["json"]["source"]["attrs"]["local.unique"]
        .as_str()
        .unwrap_or("unused");
    MarshalOptions::for_platform(amd64()).local_unique_id(unique)
}

/// Every op of every graph marshals to the fixture's bytes and digest, in the fixture's
/// order; the metadata and the whole Definition file match too.
#[test]
fn every_reference_graph_marshals_byte_for_byte() {
    let b64 = base64::engine::general_purpose::STANDARD;
    for name in NAMES {
        let fx = fixture(name);
        let def = graph(name, FIXTURE_IMAGE, NetMode::Sandbox)
            .marshal(&marshal_options(&fx))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ops: Vec<_> = def.ops().collect();
        let want = fx["ops"].as_array().unwrap();
        assert_eq!(ops.len(), want.len(), "{name}: op count");
        for (i, ((digest, bytes), want)) in ops.iter().zip(want).enumerate() {
            let want_bytes = b64.decode(want["bytes_b64"].as_str().unwrap()).unwrap();
            assert_eq!(
                b64.encode(bytes),
                b64.encode(&want_bytes),
                "{name}: op {i} ({}) bytes",
                want["kind"]
            );
            assert_eq!(digest, want["digest"].as_str().unwrap(), "{name}: op {i}");
        }
        assert_eq!(def.terminal(), fx["terminal"].as_str().unwrap(), "{name}");
        let want_file = std::fs::read(fixtures_dir().join(format!("{name}.pb"))).unwrap();
        assert_eq!(
            util::sha256_digest(&def.to_bytes()),
            util::sha256_digest(&want_file),
            "{name}: the Definition file (metadata, source map)"
        );
        // And the file reads back as the same Definition.
        assert_eq!(
            llb::Definition::from_bytes(&want_file).unwrap(),
            def,
            "{name}"
        );
    }
}

/// With another base image only what the README says may change does: the image op's
/// identifier, and the digests built on it (same length, so the other ops' bytes are the
/// fixture's with the digests substituted).
#[test]
fn another_base_image_changes_only_the_reference_and_the_digests_on_it() {
    const OTHER: &str = "registry.example:5000/team/busybox:2";
    let b64 = base64::engine::general_purpose::STANDARD;
    for name in NAMES {
        let fx = fixture(name);
        if fx.get("base_image").is_none() {
            continue;
        }
        let def = graph(name, OTHER, NetMode::Sandbox)
            .marshal(&marshal_options(&fx))
            .unwrap();
        let ops: Vec<_> = def.ops().collect();
        let want = fx["ops"].as_array().unwrap();
        // Fixture digest -> ours, op by op.
        let renamed: Vec<(String, String)> = want
            .iter()
            .zip(&ops)
            .map(|(w, (d, _))| (w["digest"].as_str().unwrap().to_owned(), d.clone()))
            .collect();
        let substitute = |mut text: String| {
            for (from, to) in &renamed {
                text = text.replace(from.as_str(), to);
            }
            text.replace(FIXTURE_IMAGE, OTHER)
        };
        // The image op: same JSON as the fixture's but for the identifier.
        let dump = |bytes: &[u8]| llb::dump_json_lines(bytes).unwrap();
        let ours = dump(&def.to_bytes());
        let theirs = dump(&std::fs::read(fixtures_dir().join(format!("{name}.pb"))).unwrap());
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (o, t) in ours.iter().zip(&theirs) {
            assert_eq!(*o, substitute(t.clone()), "{name}");
        }
        // Every later op: the fixture's bytes with the digests' hex substituted.
        for (i, (w, (_, bytes))) in want.iter().zip(&ops).enumerate().skip(1) {
            let mut expected = b64.decode(w["bytes_b64"].as_str().unwrap()).unwrap();
            for (from, to) in &renamed {
                let (from, to) = (from.as_bytes(), to.as_bytes());
                while let Some(at) = expected.windows(from.len()).position(|win| win == from) {
                    expected[at..at + to.len()].copy_from_slice(to);
                }
            }
            assert_eq!(bytes.as_ref(), expected.as_slice(), "{name}: op {i}");
        }
    }
}

/// Marshal problems are errors naming the problem, not panics or bad graphs.
#[test]
fn bad_graphs_are_refused_with_the_reason() {
    let options = MarshalOptions::for_platform(amd64());
    let err = llb::image("Not A Reference").marshal(&options).unwrap_err();
    assert!(err.to_string().contains("Not A Reference"), "{err}");
    let err = llb::scratch()
        .run_shlex("sh -c 'unterminated")
        .root()
        .marshal(&options)
        .unwrap_err();
    assert!(err.to_string().contains("single quote"), "{err}");
    let err = llb::image("busybox")
        .run(Vec::<String>::new())
        .root()
        .marshal(&options)
        .unwrap_err();
    assert_eq!(err, llb::LlbError::NoArguments);
    let err = llb::image("busybox")
        .run(["true"])
        .mount("/t", &llb::image("alpine"), Mount::tmpfs())
        .root()
        .marshal(&options)
        .unwrap_err();
    assert!(err.to_string().contains("/t"), "{err}");
    let exec = llb::image("busybox")
        .run(["true"])
        .mount(
            "/c",
            &llb::scratch(),
            Mount::cache("c", CacheSharing::Private),
        )
        .build();
    assert!(exec.mount_state("/c").is_err());
    assert!(exec.mount_state("/nope").is_err());
}

/// `pf-buildkit debug dump-llb` prints one JSON line per op, as buildctl does.
#[test]
fn dump_llb_prints_one_json_line_per_op() {
    let path = fixtures_dir().join("run-mounts.pb");
    let out = util::bin()
        .args(["debug", "dump-llb"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", util::stderr(&out));
    let stdout = util::stdout(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    let fx = fixture("run-mounts");
    assert_eq!(lines.len(), 3);
    for (line, op) in lines.iter().zip(fx["ops"].as_array().unwrap()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["Digest"], op["digest"]);
    }
    // Go's encoding/json: enums as numbers, the body under "Op", HTML characters escaped.
    assert!(lines[1].contains(r#""mountType":3"#), "{}", lines[1]);
    assert!(
        lines[1].contains(r#"date \u003e /cache/stamp"#),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].starts_with(r#"{"Op":{"inputs":[{"digest":"sha256:"#),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with(r#""OpMetadata":{"caps":{"constraints":true,"platform":true}}}"#));

    // Bad input: one line naming the problem, exit 1.
    let out = util::bin()
        .args(["debug", "dump-llb"])
        .stdin(std::fs::File::open(fixtures_dir().join("README.md")).unwrap())
        .output()
        .unwrap();
    util::assert_one_line_failure(&out);
}

/// The listing the fixtures' `solved` field describes: one line per tar entry, sorted,
/// `path<TAB>mode<TAB>type<TAB>value`.
fn tar_listing(tar: &Path) -> (usize, String) {
    use sha2::Digest as _;
    let mut archive = tar::Archive::new(std::fs::File::open(tar).unwrap());
    let mut lines = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() || path == "." {
            continue;
        }
        let mode = entry.header().mode().unwrap() & 0o7777;
        let (kind, value) = match entry.header().entry_type() {
            tar::EntryType::Directory => ("dir", "-".to_owned()),
            tar::EntryType::Symlink => (
                "symlink",
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            tar::EntryType::Link => (
                "hardlink",
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
                let hash = sha2::Sha256::digest(&content);
                ("file", hash.iter().map(|b| format!("{b:02x}")).collect())
            }
        };
        lines.push(format!("{path}\t{mode:04o}\t{kind}\t{value}"));
    }
    lines.sort();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    (lines.len(), util::sha256_digest(text.as_bytes()))
}

/// Every reference graph, rebuilt on the test registry's base image, solves on the tier
/// through `Client::build` with the session's locals, secret and SSH agent; a result that
/// does not depend on the image must list exactly as the fixture's.
fn every_reference_graph_solves(tier: Tier) {
    let _cache = tier.cache_shared();
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    for (file, text) in [
        ("a.txt", "a\n"),
        ("b.txt", "b\n"),
        ("secret.txt", "secret\n"),
        ("c.md", "c\n"),
    ] {
        std::fs::write(context.join(file), text).unwrap();
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-value\n").unwrap();
    // A stand-in agent socket: the daemon only checks that it answers.
    let socket = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
    // The Engine has no bridge network: its run steps get none (the graph differs from the
    // fixture only in the ExecOp's network field).
    let network = match tier {
        Tier::Engine => NetMode::None,
        Tier::Standalone => NetMode::Sandbox,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        Client::connect(
            tier.addr().parse::<Endpoint>().unwrap(),
            &TlsOptions::default(),
        )
        .await
        .unwrap()
    });
    // The test registry's busybox (the fixtures' image lived in another registry).
    let image = util::env("PF_TEST_BASE_IMAGE");
    let mut results = BTreeMap::new();
    for name in NAMES {
        let fx = fixture(name);
        let def = graph(name, &image, network)
            .marshal(&MarshalOptions::for_platform(amd64()))
            .unwrap();
        let tar = dir.path().join(format!("{name}.tar"));
        let mut options = BuildOptions::for_definition(def.into_pb());
        options.registry_auth = false;
        options.session_via_control = tier.session_via_control();
        options.locals = BTreeMap::from([("context".to_owned(), context.clone())]);
        options.secrets = BTreeMap::from([("tok".to_owned(), SecretSource::File(token.clone()))]);
        options.ssh = BTreeMap::from([("default".to_owned(), socket.clone())]);
        options
            .outputs
            .push(format!("type=tar,dest={}", tar.display()).parse().unwrap());
        runtime
            .block_on(client.build(&options, &mut QuietProgress))
            .unwrap_or_else(|e| panic!("{name} on {}: {e:?}", tier.name()));
        let (entries, listing) = tar_listing(&tar);
        results.insert(name, (entries, listing.clone()));
        let solved = &fx["solved"];
        if fx.get("base_image").is_none() {
            // No image in the graph: the result is the fixture's, to the byte.
            assert_eq!(
                listing,
                solved["listing_sha256"].as_str().unwrap(),
                "{name} on {}",
                tier.name()
            );
        } else if name == "run-mounts" {
            // `date` writes a new stamp on every uncached solve: one file, /out's `stamp`.
            assert_eq!(entries, 1, "{name}");
        }
    }
    // The test registry's busybox is not the fixture's, so image-based listings differ from
    // the fixtures' but keep their relations: steps that change nothing list as the image,
    // a step that adds one file lists one entry more, the copy is one file.
    let image_result = &results["image"];
    for same in ["secret-ssh", "network-none"] {
        assert_eq!(&results[same], image_result, "{same} on {}", tier.name());
    }
    for one_more in ["run", "platform-arm64"] {
        assert_eq!(results[one_more].0, image_result.0 + 1, "{one_more}");
    }
    assert_eq!(results["copy"].0, 1);
    assert_eq!(results["local"], results["local-pinned"]);
}

tier_tests!(every_reference_graph_solves);

/// `vendor-protos/buildkit/ops.proto` against the ops.proto compiled into the standalone
/// buildkitd v0.32.2 the test environment runs (Go binaries embed their protos' descriptors):
/// every message, field (name, number, type, label, oneof) and enum value of upstream's is
/// ours too, with nothing of ours missing from upstream. Skipped, saying so, without the
/// binary.
#[test]
fn ops_proto_matches_buildkit_v0_32_2() {
    use prost::Message as _;
    use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};

    let Ok(binary) = std::env::var("PF_TEST_BUILDKITD") else {
        eprintln!("ops_proto_matches_buildkit_v0_32_2: skipped: PF_TEST_BUILDKITD is not set");
        return;
    };
    let binary = std::fs::read(&binary).unwrap();
    let marker = b"\n,github.com/moby/buildkit/solver/pb/ops.proto\x12\x02pb";
    let start = binary
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("buildkitd embeds solver/pb/ops.proto");
    // The descriptor is followed by unrelated bytes: take its top-level fields while they are
    // FileDescriptorProto's (numbers 1 to 14, varint or length-delimited).
    let mut end = start;
    loop {
        let mut at = end;
        let mut varint = || {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = binary[at];
                at += 1;
                value |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            value
        };
        let key = varint();
        let (field, wire) = (key >> 3, key & 7);
        if !(1..=14).contains(&field) {
            break;
        }
        match wire {
            0 => {
                varint();
            }
            2 => {
                let len = varint();
                at += usize::try_from(len).unwrap();
            }
            _ => break,
        }
        end = at;
    }
    let upstream = FileDescriptorProto::decode(&binary[start..end]).unwrap();
    let ours = prost_types::FileDescriptorSet::decode(
        &include_bytes!(concat!(env!("OUT_DIR"), "/vendor_protos.bin"))[..],
    )
    .unwrap()
    .file
    .into_iter()
    .find(|f| f.package() == "pb")
    .unwrap();

    fn fields(m: &DescriptorProto) -> Vec<String> {
        let mut out: Vec<String> = m
            .field
            .iter()
            .map(|f| {
                let oneof = f
                    .oneof_index
                    .map(|i| m.oneof_decl[i as usize].name().to_owned())
                    .unwrap_or_default();
                format!(
                    "{}.{} = {} {:?} {:?} {} {oneof}",
                    m.name(),
                    f.name(),
                    f.number(),
                    f.label(),
                    f.r#type(),
                    f.type_name()
                )
            })
            .collect();
        for nested in &m.nested_type {
            out.extend(
                fields(nested)
                    .into_iter()
                    .map(|f| format!("{}.{f}", m.name())),
            );
        }
        out
    }
    fn values(e: &EnumDescriptorProto) -> Vec<String> {
        e.value
            .iter()
            .map(|v| format!("{}.{} = {}", e.name(), v.name(), v.number()))
            .collect()
    }
    fn shape(file: &FileDescriptorProto) -> std::collections::BTreeSet<String> {
        let messages = file.message_type.iter().flat_map(fields);
        let enums = file.enum_type.iter().flat_map(values);
        messages.chain(enums).collect()
    }
    let (upstream, ours) = (shape(&upstream), shape(&ours));
    assert!(upstream.len() > 200, "{upstream:?}");
    let missing: Vec<_> = upstream.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&upstream).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ops.proto differs from BuildKit v0.32.2's: missing {missing:#?}, not upstream's {extra:#?}"
    );
}
