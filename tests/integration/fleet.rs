//! The fleet commands against the in-process fake Kubernetes API server, whose port-forwards
//! reach the real BuildKit of the test environment: the standalone buildkitd (what the pods
//! run) when the environment has it, else the Docker Engine's, through its `/grpc` upgrade.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use pf_buildkit::buildkit::proto::control::{BuildHistoryRequest, SolveRequest, StatusRequest};
use pf_buildkit::buildkit::proto::pb::Definition;
use pf_buildkit::buildkit::{Client, Endpoint, TlsOptions};
use prost::Message;

use crate::fake_kube::{
    DialFn, EXEC_TOKEN, FakeKube, Scenario, docker_engine, tcp, unix, without_build_history,
};
use crate::fleet_scenarios::{annotation, now};
use crate::sandbox::Buildkitd;
use crate::util::{self, Tier, assert_one_line_failure};
use pf_buildkit::fleet::{
    Arch, Error as FleetError, Fleet, LeaseOptions, PodDialer, PodPrune, PortForwardError,
    TunnelOptions,
};

fn out(o: &Output) -> String {
    util::stdout(o)
}

fn err(o: &Output) -> String {
    util::stderr(o)
}

/// The port-forwards' target: the daemon of [`Tier::preferred`].
fn engine() -> crate::fake_kube::DialFn {
    pod_dial(Tier::preferred())
}

/// Port-forwards that reach `tier`'s daemon, as a pod's port 1234.
fn pod_dial(tier: Tier) -> crate::fake_kube::DialFn {
    match tier {
        Tier::Standalone => tcp(tier.addr().trim_start_matches("tcp://").to_owned()),
        Tier::Engine => docker_engine(util::docker_socket()),
    }
}

#[tokio::test]
async fn get_address_picks_the_least_cpu_summing_containers_in_nanocores() {
    let fake = Scenario::new()
        .statefulset("amd64", 4, 3, None)
        .statefulset("arm64", 1, 1, None)
        // 0.9 cores + 5m
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .cpu(
            "buildkit-amd64-0",
            &[("buildkitd", "900000000n"), ("linkerd-proxy", "5m")],
        )
        // 250m + 0.3 cores: the least in total, though not in its first container
        .pod("buildkit-amd64-1", "Running", "10.0.0.11", true)
        .cpu(
            "buildkit-amd64-1",
            &[("buildkitd", "250m"), ("linkerd-proxy", "300000000n")],
        )
        // 1 core
        .pod("buildkit-amd64-2", "Running", "10.0.0.12", true)
        .cpu(
            "buildkit-amd64-2",
            &[("buildkitd", "1"), ("linkerd-proxy", "1500u")],
        )
        // idle but not ready, or not running, or another architecture: never chosen for amd64
        .pod("buildkit-amd64-3", "Running", "10.0.0.13", false)
        .cpu("buildkit-amd64-3", &[("buildkitd", "0")])
        .pod("buildkit-amd64-4", "Pending", "", false)
        .pod("buildkit-arm64-0", "Running", "10.0.1.10", true)
        .cpu("buildkit-arm64-0", &[("buildkitd", "1n")])
        .start()
        .await;

    let o = fake.run(&["get-address", "--arch=amd64"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "tcp://10-0-0-11.buildkit.pod.cluster.local:1234\n");
    assert!(!err(&o).contains("warning"), "{}", err(&o));

    let o = fake
        .run(&[
            "get-address",
            "--arch",
            "arm64",
            "--omit-protocol",
            "--context",
            "fake",
        ])
        .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "10-0-1-10.buildkit.pod.cluster.local:1234\n");

    // The pods were listed Running-only with a field selector, metrics in one list call.
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/buildkit/pods"
                && r.query.contains("fieldSelector=status.phase%3DRunning"))
    );
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/apis/metrics.k8s.io/v1beta1/namespaces/buildkit/pods")
    );
}

#[tokio::test]
async fn get_address_without_a_metrics_api_takes_the_first_running_pod_and_warns() {
    let fake = Scenario::new()
        .statefulset("amd64", 2, 2, None)
        .pod("buildkit-amd64-1", "Running", "10.0.0.11", true)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .no_metrics_api()
        .start()
        .await;
    let o = fake.run(&["get-address", "--arch", "amd64"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "tcp://10-0-0-10.buildkit.pod.cluster.local:1234\n");
    let e = err(&o);
    assert!(
        e.contains("warning") && e.contains("metrics.k8s.io") && e.contains("buildkit-amd64-0"),
        "{e}"
    );

    // A registered but unavailable metrics API (503) is retried briefly, then the same fallback.
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .metrics_unavailable()
        .start()
        .await;
    let started = Instant::now();
    let o = fake.run(&["get-address", "--arch", "amd64"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retries must be bounded to seconds"
    );
    assert!(err(&o).contains("warning"), "{}", err(&o));
    let metric_calls = fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/apis/metrics.k8s.io"))
        .count();
    assert_eq!(metric_calls as u32, pf_buildkit::fleet::RETRY_ATTEMPTS);
}

#[tokio::test]
async fn a_metrics_api_this_account_may_not_read_is_403_and_falls_back() {
    // The real API server authorizes before it looks the group up: without rights on
    // metrics.k8s.io the absent API is 403, not 404.
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .no_metrics_api()
        .forbid("list", "pods.metrics.k8s.io")
        .start()
        .await;
    let o = fake.run(&["get-address", "--arch", "amd64"]).await;
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    assert_eq!(out(&o), "tcp://10-0-0-10.buildkit.pod.cluster.local:1234\n");
    assert!(
        e.contains("warning: the metrics API (metrics.k8s.io) may not be read by this account")
            && e.contains("needs verb list on pods.metrics.k8s.io in namespace buildkit"),
        "{e}"
    );
    let metrics: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/apis/metrics.k8s.io"))
        .collect();
    assert_eq!(metrics.len(), 1, "a 403 is not retried");
    // The same account may still list pods: only the metrics group is refused.
    assert_user_agent(&fake);
}

#[tokio::test]
async fn diagnostics_follow_the_log_level_and_carry_no_colour_off_a_terminal() {
    // A 503 from the metrics API makes kube log an ERROR event for each failed call before
    // the client warns and falls back.
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .metrics_unavailable()
        .start()
        .await;
    let mut cmd = fake.bin();
    cmd.env_remove("PF_BUILDKIT_LOG")
        .env_remove("RUST_LOG")
        .args(["get-address", "--arch", "amd64"]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    assert_eq!(e.lines().count(), 1, "only the warning, by default: {e}");
    assert!(e.starts_with("pf-buildkit: warning: "), "{e}");
    assert!(!e.contains("ERROR") && !e.contains('\x1b'), "{e}");

    // A port-forward upgrade that fails at the connection (the API server is gone): kube logs
    // an ERROR event; by default only the one-line error prints.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let config = fake.dir().join("gone-kubeconfig");
    std::fs::write(
        &config,
        std::fs::read_to_string(fake.kubeconfig())
            .unwrap()
            .replace(&fake.addr().to_string(), &gone.to_string()),
    )
    .unwrap();
    let mut cmd = fake.bin();
    cmd.env_remove("PF_BUILDKIT_LOG")
        .env_remove("RUST_LOG")
        .env("KUBECONFIG", &config)
        .args(["workers", "--addr", "kube-pod://buildkit-amd64-0"]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let e = assert_one_line_failure(&o);
    assert!(!e.contains("ERROR") && !e.contains('\x1b'), "{e}");

    // Asked for, the diagnostics print, still without colour (stderr is a pipe here).
    for var in ["PF_BUILDKIT_LOG", "RUST_LOG"] {
        let mut cmd = fake.bin();
        cmd.env_remove("PF_BUILDKIT_LOG")
            .env_remove("RUST_LOG")
            .env(var, "error")
            .args(["get-address", "--arch", "amd64"]);
        let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let e = err(&o);
        assert!(o.status.success(), "{e}");
        assert!(
            e.lines().any(|l| l.contains("ERROR") && l.contains("503")),
            "{var}=error shows kube's errors: {e}"
        );
        assert!(!e.contains('\x1b'), "no colour codes: {e:?}");
    }
}

#[tokio::test]
async fn get_address_with_no_running_pod_fails_in_one_line() {
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .pod("buildkit-amd64-0", "Pending", "", false)
        .start()
        .await;
    let o = fake.run(&["get-address", "--arch", "amd64"]).await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("no running and ready BuildKit pods for amd64"),
        "{e}"
    );
    assert!(out(&o).is_empty());
}

#[tokio::test]
async fn scale_up_from_zero_sets_one_replica_and_records_a_build() {
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .statefulset("arm64", 3, 3, Some("12"))
        .start()
        .await;
    let before = now();
    let o = fake.run(&["scale", "up"]).await;
    let after = now();
    assert!(o.status.success(), "{}", err(&o));
    let amd = fake.statefulset("buildkit-amd64");
    let arm = fake.statefulset("buildkit-arm64");
    assert_eq!(amd["spec"]["replicas"], 1);
    assert_eq!(
        arm["spec"]["replicas"], 3,
        "a higher count is never lowered"
    );
    for sts in [&amd, &arm] {
        let stamp = annotation(sts).expect("build recorded");
        assert!(
            (before..=after).contains(&stamp),
            "{stamp} not in {before}..={after}"
        );
    }
    // Through the scale subresource with a merge patch, as kubectl scale does.
    let scale_patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/scale"))
        .collect();
    assert_eq!(scale_patches.len(), 1);
    assert_eq!(
        scale_patches[0].path,
        "/apis/apps/v1/namespaces/buildkit/statefulsets/buildkit-amd64/scale"
    );
    assert_eq!(
        scale_patches[0].content_type,
        "application/merge-patch+json"
    );

    // `resume --only=arm64` records a build for arm64 alone and scales nothing.
    let o = fake.run(&["resume", "--only=arm64"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(fake.statefulset("buildkit-arm64")["spec"]["replicas"], 3);
    let o = fake.run(&["record-build", "--arch", "x86"]).await;
    assert!(util::assert_usage_error(&o).contains("invalid architecture \"x86\""));
}

#[tokio::test]
async fn scale_up_wait_times_out_with_a_clear_message() {
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .statefulset("arm64", 1, 1, None)
        .start()
        .await;
    let started = Instant::now();
    let o = fake.run(&["scale", "up", "--wait", "--timeout", "3"]).await;
    let elapsed = started.elapsed();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("pf-buildkit: timed out after 3 s waiting for an available BuildKit replica of buildkit-amd64 in namespace buildkit"),
        "{e}"
    );
    assert!(
        !e.lines().last().unwrap_or("").contains("arm64"),
        "arm64 was available: {e}"
    );
    assert!(
        e.contains("amd64: waiting"),
        "a live line per architecture: {e}"
    );
    assert!(e.contains("arm64: 1 available replica(s)"), "{e}");
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
    assert_eq!(fake.statefulset("buildkit-amd64")["spec"]["replicas"], 1);

    // With a controller that brings the replica up, the same wait succeeds.
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .auto_available()
        .start()
        .await;
    let o = fake
        .run(&[
            "scale",
            "up",
            "--only",
            "amd64",
            "--wait",
            "--timeout",
            "30",
        ])
        .await;
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    // On a pipe: plain lines, the scale-up, then the architecture ready with its time.
    assert!(
        e.contains("amd64: scaled StatefulSet buildkit-amd64 from 0 to 1 replica"),
        "{e}"
    );
    let ready = e
        .lines()
        .find(|l| l.starts_with("amd64: 1 available replica(s) ("))
        .unwrap_or_else(|| panic!("no ready line: {e}"));
    assert!(ready.ends_with("s)"), "{e}");
    // Quiet: nothing but the result (the exit code).
    let o = fake
        .run(&["scale", "up", "--only", "amd64", "--wait", "--quiet"])
        .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(err(&o), "", "--quiet printed progress");
    let o = fake
        .run(&["scale", "up", "--wait", "--timeout", "soon"])
        .await;
    let text = util::assert_usage_error(&o);
    assert!(
        text.contains("--timeout") && text.contains("\"soon\" must be a whole number of seconds"),
        "{text}"
    );
}

#[tokio::test]
async fn suspend_respects_its_timeout_and_treats_a_missing_annotation_as_idle() {
    let recent = (now() - 100).to_string();
    let fake = Scenario::new()
        .statefulset("amd64", 2, 2, Some(&recent))
        .statefulset("arm64", 1, 1, None)
        .start()
        .await;
    let o = fake.run(&["suspend", "--timeout", "1800"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let e = err(&o);
    assert_eq!(
        fake.statefulset("buildkit-amd64")["spec"]["replicas"],
        2,
        "{e}"
    );
    assert_eq!(
        fake.statefulset("buildkit-arm64")["spec"]["replicas"],
        0,
        "{e}"
    );
    assert!(
        e.contains("amd64: Last build occurred less than 1800 seconds ago. Skipping scale down."),
        "{e}"
    );
    assert!(
        e.contains("arm64: No builds recorded. Scaling down..."),
        "{e}"
    );
    assert!(out(&o).is_empty(), "nothing on stdout: {}", out(&o));

    // 100 s ago is over a 50 s timeout.
    let o = fake.run(&["scale", "down", "--timeout=50"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(fake.statefulset("buildkit-amd64")["spec"]["replicas"], 0);
    assert!(err(&o).contains("amd64: Last build occurred over 50 seconds ago. Scaling down..."));
    assert!(err(&o).contains("arm64: Already scaled down."));

    // Without a timeout, whatever was recorded: the line names the flag that was not given.
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, Some(&recent))
        .statefulset("arm64", 0, 0, None)
        .start()
        .await;
    let o = fake.run(&["scale", "down"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(fake.statefulset("buildkit-amd64")["spec"]["replicas"], 0);
    assert!(
        err(&o).contains("amd64: No --timeout given. Scaling down..."),
        "{}",
        err(&o)
    );
}

#[tokio::test]
async fn suspend_never_undoes_a_build_recorded_while_it_decides() {
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .statefulset("arm64", 0, 0, None)
        .build_recorded_during_next_scale("buildkit-amd64")
        .start()
        .await;
    let o = fake.run(&["suspend", "--timeout", "600"]).await;
    assert!(o.status.success(), "{}", err(&o));
    // The scale request carried the version it was decided on; the API server refused it
    // (409) and the fresh decision saw the new build.
    assert_eq!(
        fake.statefulset("buildkit-amd64")["spec"]["replicas"],
        1,
        "{}",
        err(&o)
    );
    assert!(
        err(&o).contains("amd64: Last build occurred less than 600 seconds ago"),
        "{}",
        err(&o)
    );
    assert_eq!(fake.conflicts(), 1, "one stale write refused with 409");
}

#[tokio::test]
async fn bad_arch_unknown_context_and_no_kubeconfig_fail_in_one_line() {
    let fake = Scenario::new().start().await;
    let o = fake.run(&["get-address", "--arch", "amd64x"]).await;
    assert!(
        util::assert_usage_error(&o)
            .contains("invalid architecture \"amd64x\": must be amd64 or arm64")
    );

    let o = fake.run(&["clear-cache", "--context", "nope"]).await;
    assert!(assert_one_line_failure(&o).contains("kubeconfig has no context \"nope\""));
    let o = fake.run(&["scale", "up", "--context", "nope"]).await;
    assert!(assert_one_line_failure(&o).contains("kubeconfig has no context \"nope\""));

    // An exec auth plugin that cannot run.
    let o = fake
        .run(&[
            "record-build",
            "--arch",
            "amd64",
            "--context",
            "broken-plugin",
        ])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("cannot create the Kubernetes client") && e.contains("exec"),
        "{e}"
    );

    // No kubeconfig (HOME has none) and no service account.
    let home = tempfile::tempdir().unwrap();
    let mut cmd = fake.bin();
    cmd.env_remove("KUBECONFIG")
        .env("HOME", home.path())
        .args(["suspend", "--timeout", "10"]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("no Kubernetes configuration: no kubeconfig")
            && e.contains("not running in a cluster"),
        "{e}"
    );
}

#[tokio::test]
async fn workers_through_a_kube_pod_endpoint_reach_the_real_buildkit() {
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        // nothing listens on this one's port
        .pod("buildkit-amd64-1", "Running", "10.0.0.11", true)
        .unscheduled_pod("buildkit-amd64-5")
        .start()
        .await;
    // The `exec` context authenticates with an exec auth plugin.
    let o = fake
        .run(&[
            "workers",
            "--format",
            "json",
            "--addr",
            "kube-pod://buildkit-amd64-0?namespace=buildkit&context=exec",
        ])
        .await;
    assert!(o.status.success(), "{}", err(&o));
    let workers: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert!(
        workers[0]["platforms"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{workers}"
    );
    let pf: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/portforward"))
        .collect();
    // SPDY first (a POST); the fake, like a proxy that does not pass SPDY, refuses it, and
    // the WebSocket follows (a GET): once, as the dialer then keeps to the WebSocket.
    assert_eq!(pf[0].method, "POST", "{pf:?}");
    let ws: Vec<_> = pf.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(pf.len(), ws.len() + 1, "one SPDY attempt: {pf:?}");
    assert!(!ws.is_empty(), "{pf:?}");
    for r in &pf {
        assert_eq!(
            r.path,
            "/api/v1/namespaces/buildkit/pods/buildkit-amd64-0/portforward"
        );
        assert_eq!(r.authorization, format!("Bearer {EXEC_TOKEN}"));
    }
    assert!(ws[0].query.contains("ports=1234"), "{}", ws[0].query);
    assert!(
        ws[0].ws_protocol.contains("v4.channel.k8s.io"),
        "{}",
        ws[0].ws_protocol
    );
    assert!(
        std::fs::read_to_string(fake.dir().join("exec-info.json"))
            .unwrap()
            .contains("ExecCredential")
    );

    // A pod that does not exist, and one whose port has nothing listening (the error channel).
    let o = fake
        .run(&[
            "workers",
            "--addr",
            "kube-pod://buildkit-amd64-9?namespace=buildkit",
        ])
        .await;
    assert!(
        assert_one_line_failure(&o)
            .contains("pod \"buildkit-amd64-9\" not found in namespace buildkit")
    );
    let o = fake
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-5"])
        .await;
    assert!(
        assert_one_line_failure(&o).contains("pod buildkit-amd64-5 does not have a host assigned")
    );
    let o = fake
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-1"])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("port-forward to pod buildkit-amd64-1 port 1234 failed: error forwarding port 1234 to pod buildkit-amd64-1"),
        "the kubelet's error text reaches the user: {e}"
    );
}

#[tokio::test]
async fn a_forbidden_portforward_names_the_missing_permission() {
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        .forbid("create", "pods/portforward")
        .start()
        .await;
    // The API server refuses the WebSocket upgrade with an empty reason (`pods "NAME" is
    // forbidden: `), so the client names the permission itself.
    let check = |e: &str| {
        assert!(
            e.starts_with("pf-buildkit: ")
                && e.contains("permission denied (pods \"buildkit-amd64-0\" is forbidden)")
                && e.contains(
                    "needs verb create (and get) on pods/portforward in namespace buildkit"
                ),
            "{e}"
        );
    };
    let o = fake
        .run(&[
            "workers",
            "--addr",
            "kube-pod://buildkit-amd64-0?namespace=buildkit",
        ])
        .await;
    check(&assert_one_line_failure(&o));
    // The tunnel reports its scale-up first, then fails before listening.
    let o = fake.run(&["tunnel", "--arch", "amd64"]).await;
    assert_eq!(o.status.code(), Some(1));
    check(err(&o).lines().last().unwrap_or_default());
    assert!(out(&o).is_empty(), "no port printed: {}", out(&o));
    assert_eq!(fake.portforwards_opened(), 0);

    // Other refusals name their permission the same way.
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .forbid("list", "pods")
        .forbid("patch", "statefulsets")
        .start()
        .await;
    let o = fake.run(&["get-address", "--arch", "amd64"]).await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("needs verb list on pods in namespace buildkit"),
        "{e}"
    );
    let o = fake.run(&["record-build", "--arch", "amd64"]).await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("needs verb patch on statefulsets in namespace buildkit"),
        "{e}"
    );
}

#[tokio::test]
async fn a_tunnel_carries_concurrent_grpc_connections_and_survives_one_dropping() {
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        .start()
        .await;
    let mut child = fake
        .bin()
        .args(["tunnel", "--arch", "amd64", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("port on stdout, got {line:?}"));
    assert!(
        annotation(&fake.statefulset("buildkit-amd64")).is_some(),
        "the tunnel records a build"
    );
    let probes = fake.portforwards_opened();

    let endpoint = || Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    // Connect one after the other, so that port-forward `probes` is a's and `probes + 1` b's.
    let a = Client::connect(endpoint(), &TlsOptions::default())
        .await
        .unwrap();
    fake.wait_until("a's port-forward", |f| f.portforwards_opened() > probes)
        .await;
    let b = Client::connect(endpoint(), &TlsOptions::default())
        .await
        .unwrap();
    fake.wait_until("b's port-forward", |f| f.portforwards_opened() > probes + 1)
        .await;
    // Both connections carry calls at the same time.
    let (wa, wb) = tokio::join!(a.workers(), b.workers());
    assert!(!wa.unwrap().is_empty());
    assert!(!wb.unwrap().is_empty());
    assert_eq!(
        fake.portforwards_opened(),
        probes + 2,
        "one port-forward per connection"
    );

    // Cut the first connection's port-forward: the other connection carries on, and the first
    // client reconnects through the tunnel over a new port-forward.
    fake.kill_portforward(probes);
    assert!(!b.workers().await.unwrap().is_empty());
    let mut recovered = false;
    for _ in 0..3 {
        if a.workers().await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the first client reconnects through the tunnel");
    // How often the client redials is tonic's business; that the reconnection went through a
    // new port-forward is the tunnel's.
    assert!(
        fake.portforwards_opened() > probes + 2,
        "the reconnection opens a new port-forward"
    );

    // Ctrl-C closes it: the process ends and nothing listens on the port any more.
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
    // Every port-forward the tunnel opened is closed with it.
    fake.wait_until("every port-forward to close", |f| {
        f.portforwards_open() == 0
    })
    .await;
}

/// An LLB op, encoded with BuildKit's field numbers (`solver/pb/ops.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct Op {
    #[prost(message, repeated, tag = "1")]
    inputs: Vec<Input>,
    #[prost(message, optional, tag = "2")]
    exec: Option<ExecOp>,
    #[prost(message, optional, tag = "3")]
    source: Option<SourceOp>,
    #[prost(message, optional, tag = "10")]
    platform: Option<Platform>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Input {
    #[prost(string, tag = "1")]
    digest: String,
    #[prost(int64, tag = "2")]
    index: i64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ExecOp {
    #[prost(message, optional, tag = "1")]
    meta: Option<Meta>,
    #[prost(message, repeated, tag = "2")]
    mounts: Vec<Mount>,
    #[prost(int32, tag = "3")]
    network: i32,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Meta {
    #[prost(string, repeated, tag = "1")]
    args: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    env: Vec<String>,
    #[prost(string, tag = "3")]
    cwd: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Mount {
    #[prost(int64, tag = "1")]
    input: i64,
    #[prost(string, tag = "3")]
    dest: String,
    #[prost(int64, tag = "4")]
    output: i64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct SourceOp {
    #[prost(string, tag = "1")]
    identifier: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Platform {
    #[prost(string, tag = "1")]
    architecture: String,
    #[prost(string, tag = "2")]
    os: String,
}

/// A build of one RUN step, `script` in the base image, under a fresh ref; returns the
/// request and the step's unique command line (the name its progress vertex carries: BuildKit
/// v0.32 reports vertices under digests of its own normalised ops, not the client's).
fn run_step_request(script: &str) -> (SolveRequest, String) {
    let platform = Platform {
        architecture: match std::env::consts::ARCH {
            "aarch64" => "arm64",
            _ => "amd64",
        }
        .into(),
        os: "linux".into(),
    };
    let source = Op {
        source: Some(SourceOp {
            identifier: format!("docker-image://{}", util::env("PF_TEST_BASE_IMAGE")),
        }),
        platform: Some(platform.clone()),
        ..Default::default()
    }
    .encode_to_vec();
    // A unique marker keeps the step out of the cache.
    let nonce = format!("{:?}", SystemTime::now());
    let exec = Op {
        inputs: vec![Input {
            digest: util::sha256_digest(&source),
            index: 0,
        }],
        exec: Some(ExecOp {
            meta: Some(Meta {
                args: vec!["/bin/sh".into(), "-c".into(), format!("{script} # {nonce}")],
                env: vec!["PATH=/usr/bin:/bin:/usr/sbin:/sbin".into()],
                cwd: "/".into(),
            }),
            mounts: vec![Mount {
                input: 0,
                dest: "/".into(),
                output: 0,
            }],
            network: 2, // NONE: the test Engine has no bridge network
        }),
        platform: Some(platform),
        ..Default::default()
    }
    .encode_to_vec();
    let command = format!("/bin/sh -c {script} # {nonce}");
    let terminal = Op {
        inputs: vec![Input {
            digest: util::sha256_digest(&exec),
            index: 0,
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let request = SolveRequest {
        r#ref: format!("pf-fleet-{}", now_nanos()),
        definition: Some(Definition {
            def: vec![source.into(), exec.into(), terminal.into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    (request, command)
}

/// Starts a build on the real BuildKit that runs `sleep` until dropped; returns once the
/// sleeping step has started (a progress event), so BuildKit holds cache records in use.
pub(crate) async fn start_busy_build(client: &Client) -> tokio::task::JoinHandle<()> {
    let (request, command) = run_step_request("sleep 300");
    let reference = request.r#ref.clone();
    let mut control = client.control();
    let solve = tokio::spawn(async move {
        // Ends (cancelling the build) when the task is aborted.
        let _ = control.solve(request).await;
    });
    let mut control = client.control();
    let mut status = control
        .status(StatusRequest { r#ref: reference })
        .await
        .expect("status stream")
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let next = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            status.next(),
        )
        .await
        .expect("the busy step did not start in time")
        .expect("status stream ended before the step started")
        .expect("status");
        if let Some(v) = next.vertexes.iter().find(|v| v.name == command) {
            assert!(v.error.is_empty(), "busy build failed: {}", v.error);
            if v.started.is_some() && v.completed.is_none() {
                return solve;
            }
        }
    }
}

/// Waits until the daemon runs no build, following its build history's events (the Engine is
/// shared with tests that build in parallel); fails after 120 s.
async fn wait_until_no_build_runs(client: &Client) {
    let mut control = client.control();
    let mut events = control
        .listen_build_history(BuildHistoryRequest {
            active_only: true,
            ..Default::default()
        })
        .await
        .expect("build history")
        .into_inner();
    // Subscribed first, so no build ending between a check and the next event is missed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.active_builds().await.unwrap() != Some(Vec::new()) {
        tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.next(),
        )
        .await
        .expect("builds still running after 120 s")
        .expect("history stream ended")
        .expect("history event");
    }
}

/// The BuildKit of a cache-clear test that must know every build running on it. On the shared
/// daemons other tests build in parallel, so one of their builds can make the pod look busy,
/// or keep it busy for minutes on a loaded machine: a private standalone buildkitd when that
/// tier is here, else the shared Engine (the tests keep their retries for that case).
struct WatchedDaemon {
    private: Option<Buildkitd>,
}

impl WatchedDaemon {
    fn start() -> WatchedDaemon {
        let private = Tier::Standalone
            .skip_reason()
            .is_none()
            .then(Buildkitd::start);
        WatchedDaemon { private }
    }

    fn name(&self) -> &'static str {
        match self.private {
            Some(_) => "private standalone buildkitd",
            None => "engine",
        }
    }

    fn addr(&self) -> String {
        match &self.private {
            Some(daemon) => daemon.addr(),
            None => Tier::Engine.addr(),
        }
    }

    fn dial(&self) -> DialFn {
        match &self.private {
            Some(daemon) => unix(daemon.socket()),
            None => pod_dial(Tier::Engine),
        }
    }
}

#[tokio::test]
async fn cache_clear_prunes_an_idle_daemon_that_holds_a_failed_builds_history() {
    let watched = WatchedDaemon::start();
    let (daemon, addr, dial) = (watched.name(), watched.addr(), watched.dial());
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", dial)
        .start()
        .await;
    let client = Client::connect(addr.parse().unwrap(), &TlsOptions::default())
        .await
        .unwrap();
    // A real failed build on the daemon behind the port-forward.
    let (request, _) = run_step_request("exit 3");
    let reference = request.r#ref.clone();
    let failed = client.control().solve(request).await;
    assert!(failed.is_err(), "{daemon}: the build must fail: {failed:?}");
    // The daemon's history keeps it, finished.
    let mut history = client
        .control()
        .listen_build_history(BuildHistoryRequest {
            r#ref: reference.clone(),
            early_exit: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let record = history
        .next()
        .await
        .expect("the failed build is in the history")
        .unwrap()
        .record
        .unwrap();
    assert_eq!(record.r#ref, reference);
    assert!(record.completed_at.is_some());
    let in_use = client
        .disk_usage()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.in_use)
        .count();
    eprintln!("{daemon}: {in_use} cache records in use after the failed build");

    // Other tests build on the same daemon: try again when one of theirs was running.
    let mut attempts = 0;
    let e = loop {
        attempts += 1;
        wait_until_no_build_runs(&client).await;
        // The prune is limited to a record that does not exist: the daemon is shared.
        let o = fake
            .run(&[
                "cache",
                "clear",
                "--filter",
                "id==pf-fleet-test-no-such-record",
            ])
            .await;
        let e = err(&o);
        assert!(o.status.success(), "{daemon}: {e}");
        if !e.contains("buildkit-amd64-0: skipped: a build is running") || attempts == 5 {
            break e;
        }
    };
    assert!(
        e.contains("buildkit-amd64-0: pruned 0 records") && e.contains("(idle, by build history)"),
        "{daemon}: {e}"
    );
    assert_user_agent(&fake);
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone(tier: Tier) {
    let fake = crate::fleet_scenarios::cache_clear_cluster()
        .dial("buildkit-amd64-0", pod_dial(tier))
        .start()
        .await;
    crate::fleet_scenarios::cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone(
        &fake, tier,
    )
    .await;
}
tier_tests!(async cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone);

/// Every request the fake saw, port-forward upgrades included, named the client.
fn assert_user_agent(fake: &FakeKube) {
    crate::fleet_scenarios::Cluster::assert_user_agent(fake);
    assert!(pf_buildkit::USER_AGENT.starts_with("pf-buildkit/"));
}

#[tokio::test]
async fn cache_clear_takes_claim_names_from_the_statefulsets_templates() {
    // A deployment whose claim template is `cache`, not Panfactum's `buildkitd`.
    let fake = Scenario::new()
        .claim_template("cache")
        .statefulset("amd64", 1, 1, None)
        .statefulset("arm64", 2, 0, None)
        .pod("buildkit-amd64-0", "Pending", "", false)
        // A pod on its way out still mounts its claim, already Terminating.
        .pod("buildkit-amd64-3", "Pending", "", false)
        .terminating_pvc("cache-buildkit-amd64-3")
        .pvc("cache-buildkit-amd64-0")
        .pvc("cache-buildkit-amd64-1")
        // arm64 wants two replicas whose pods do not exist yet: both claims are kept.
        .pvc("cache-buildkit-arm64-0")
        .pvc("cache-buildkit-arm64-1")
        .pvc("cache-buildkit-arm64-2")
        // Named like Panfactum's template, which these StatefulSets do not have.
        .pvc("buildkitd-buildkit-arm64-0")
        .start()
        .await;
    let o = fake.run(&["cache", "clear"]).await;
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    assert_eq!(
        fake.pvc_names(),
        [
            "cache-buildkit-amd64-0",
            "cache-buildkit-amd64-3",
            "cache-buildkit-arm64-0",
            "cache-buildkit-arm64-1"
        ],
        "{e}"
    );
    for line in [
        "PVC in use: cache-buildkit-amd64-0",
        "Deleted unused PVC: cache-buildkit-amd64-1",
        "PVC already being deleted (Terminating): cache-buildkit-amd64-3",
        "PVC of a wanted replica, kept: cache-buildkit-arm64-0",
        "PVC of a wanted replica, kept: cache-buildkit-arm64-1",
        "Deleted unused PVC: cache-buildkit-arm64-2",
        "Deleted unused PVC: buildkitd-buildkit-arm64-0",
    ] {
        assert!(e.lines().any(|l| l == line), "{line:?} missing: {e}");
    }
    let deletes: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        deletes,
        [
            "buildkitd-buildkit-arm64-0",
            "cache-buildkit-amd64-1",
            "cache-buildkit-arm64-2"
        ],
        "a Terminating claim is not deleted again"
    );
    assert_user_agent(&fake);
}

#[tokio::test]
async fn a_deleted_pvc_a_pod_still_mounts_stays_terminating() {
    // What the real API server does with a delete: 200 with the object, now carrying a
    // deletionTimestamp and the pvc-protection finalizer, and the claim stays while mounted.
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Pending", "", false)
        .pvc("buildkitd-buildkit-amd64-0")
        .start()
        .await;
    let pvcs: kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        kube::Api::namespaced(fleet_for(&fake).await.client().clone(), "buildkit");
    let answer = pvcs
        .delete("buildkitd-buildkit-amd64-0", &Default::default())
        .await
        .unwrap();
    let pvc = answer.left().expect("the object, not a Status");
    assert!(pvc.metadata.deletion_timestamp.is_some());
    assert_eq!(
        pvc.metadata.finalizers.as_deref(),
        Some(&["kubernetes.io/pvc-protection".to_owned()][..])
    );
    // Still there, Terminating; cache clear reports it and leaves it alone.
    assert_eq!(fake.pvc_names(), ["buildkitd-buildkit-amd64-0"]);
    let o = fake.run(&["cache", "clear"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("PVC already being deleted (Terminating): buildkitd-buildkit-amd64-0"),
        "{}",
        err(&o)
    );
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1
    );
}

#[tokio::test]
async fn cache_clear_falls_back_to_records_in_use_without_a_history_api() {
    // A real BuildKit behind a relay that answers ListenBuildHistory as a daemon without the
    // history API does (UNIMPLEMENTED): what is tested is the client's fallback.
    let watched = WatchedDaemon::start();
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", without_build_history(watched.dial()))
        .start()
        .await;
    let client = Client::connect(watched.addr().parse().unwrap(), &TlsOptions::default())
        .await
        .unwrap();
    let build = start_busy_build(&client).await;
    let o = fake
        .run(&[
            "cache",
            "clear",
            "--filter",
            "id==pf-fleet-test-no-such-record",
        ])
        .await;
    build.abort();
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("buildkit-amd64-0: skipped: a build is running (")
            && e.contains(" cache records in use; no build history API)"),
        "{e}"
    );
    assert!(!e.contains("Pruned"), "{e}");
}

#[tokio::test]
async fn cache_clear_names_the_pod_it_cannot_prune_and_fails() {
    // The pod runs, but nothing listens on its BuildKit port: the kubelet refuses the
    // port-forward on its error channel.
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .start()
        .await;

    // The library reports the pod's failure with its typed cause.
    let report = fleet_for(&fake)
        .await
        .cache_clear(&Default::default())
        .await
        .unwrap();
    let [(pod, PodPrune::Failed { error })] = report.pods.as_slice() else {
        panic!("{:?}", report.pods);
    };
    assert_eq!(pod, "buildkit-amd64-0");
    assert!(
        matches!(&**error, FleetError::Buildkit { pod, .. } if pod == "buildkit-amd64-0"),
        "{error:?}"
    );

    // The binary says which pod, why (the kubelet's words), and fails.
    let o = fake.run(&["cache", "clear"]).await;
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    let line = e
        .lines()
        .find(|l| l.starts_with("pf-buildkit: cannot prune pod buildkit-amd64-0: "))
        .unwrap_or_else(|| panic!("no line for the pod: {e}"));
    assert!(
        line.contains(
            "port-forward to pod buildkit-amd64-0 port 1234 failed: error forwarding port 1234 to pod buildkit-amd64-0"
        ),
        "{line}"
    );
    assert_eq!(
        e.lines().last(),
        Some("pf-buildkit: 1 pod(s) could not be pruned"),
        "{e}"
    );
}

#[tokio::test]
async fn the_kubelets_refusal_of_a_port_is_a_typed_cause() {
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .start()
        .await;
    let fleet = fleet_for(&fake).await;
    let err = PodDialer::new(&fleet, "buildkit-amd64-0", 1234)
        .open_checked()
        .await
        .map(drop)
        .unwrap_err();
    let source = std::error::Error::source(&err).expect("the refusal is the source");
    match source.downcast_ref::<PortForwardError>() {
        Some(PortForwardError::KubeletRefused { message }) => assert!(
            message.starts_with("error forwarding port 1234 to pod buildkit-amd64-0"),
            "{message}"
        ),
        other => panic!("{other:?}: {err:?}"),
    }
}

/// The library, connected to the fake through its kubeconfig's `fake` context.
async fn fleet_for(fake: &FakeKube) -> Fleet {
    let kubeconfig = kube::config::Kubeconfig::read_from(fake.kubeconfig()).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some("fake".into()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    Fleet::from_config(config, false, Some("fake")).unwrap()
}

fn build_stamps(fake: &FakeKube, sts: &str) -> usize {
    let path = format!("/apis/apps/v1/namespaces/buildkit/statefulsets/{sts}");
    fake.requests()
        .iter()
        .filter(|r| {
            r.method == "PATCH" && r.path == path && r.body.contains("panfactum.com/last-build")
        })
        .count()
}

#[tokio::test]
async fn a_lease_scales_up_connects_to_the_least_loaded_pod_and_keeps_recording_builds() {
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .auto_available()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .cpu("buildkit-amd64-0", &[("buildkitd", "500m")])
        .pod("buildkit-amd64-1", "Running", "10.0.0.11", true)
        .cpu("buildkit-amd64-1", &[("buildkitd", "10m")])
        .dial("buildkit-amd64-1", engine())
        .start()
        .await;
    let fleet = fleet_for(&fake).await;
    let options = LeaseOptions::default()
        .with_scale_up_wait(Duration::from_secs(30))
        .with_record_interval(Duration::from_secs(1));
    let lease = fleet.lease(Arch::Amd64, &options, &|_| {}).await.unwrap();
    assert_eq!(lease.pod().pod, "buildkit-amd64-1");
    assert_eq!(fake.statefulset("buildkit-amd64")["spec"]["replicas"], 1);
    assert!(!lease.client().workers().await.unwrap().is_empty());
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path.ends_with("/pods/buildkit-amd64-1/portforward"))
    );

    // While held, builds keep being recorded.
    let stamps = build_stamps(&fake, "buildkit-amd64");
    fake.wait_until("another build stamp", |f| {
        build_stamps(f, "buildkit-amd64") > stamps + 1
    })
    .await;
    drop(lease);
}

#[tokio::test]
async fn a_closed_tunnel_leaves_no_listener() {
    let fake = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        .start()
        .await;
    let fleet = fleet_for(&fake).await;
    // A taken port is a clear error, not a tunnel elsewhere.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let options = TunnelOptions::default().with_port(port);
    let error = fleet
        .tunnel(Arch::Amd64, &options, &|_| {})
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{error}"
    );
    drop(taken);

    let tunnel = fleet
        .tunnel(Arch::Amd64, &TunnelOptions::default(), &|_| {})
        .await
        .unwrap();
    let addr = tunnel.local_addr();
    assert!(addr.ip().is_loopback());
    let endpoint = Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let client = Client::connect(endpoint, &TlsOptions::default())
        .await
        .unwrap();
    assert!(!client.info().await.unwrap().version.is_empty());
    tunnel.close().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Its relayed connections are gone too: the port-forwards close.
    fake.wait_until("the port-forwards to close", |f| f.portforwards_open() == 0)
        .await;
}

/// The fake's port-forward frames, checked byte by byte with a plain WebSocket client (not
/// kube), so the fake itself is held to the kubelet's `v4.channel.k8s.io` behaviour.
#[tokio::test]
async fn the_fake_speaks_the_kubelet_port_forward_framing() {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    // A target that reads one message, answers "bye" and closes.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = target.accept().await.unwrap();
        let mut buf = [0u8; 5];
        socket.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        socket.write_all(b"bye").await.unwrap();
    });
    let dial: crate::fake_kube::DialFn = std::sync::Arc::new(move |_port| {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(target_addr).await?;
            Ok(Box::pin(s) as std::pin::Pin<Box<dyn crate::fake_kube::Stream>>)
        })
    });
    let fake = Scenario::new()
        .pod("bye-0", "Running", "10.0.0.10", true)
        .dial("bye-0", dial)
        .pod("refused-0", "Running", "10.0.0.11", true)
        .start()
        .await;

    let open = |pod: &str| {
        let url = format!(
            "ws://{}/api/v1/namespaces/buildkit/pods/{pod}/portforward?&ports=8080",
            fake.addr()
        );
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        headers.insert(
            "authorization",
            format!("Bearer {}", crate::fake_kube::TOKEN)
                .parse()
                .unwrap(),
        );
        let addr = fake.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async(request, tcp).await.unwrap()
        }
    };
    let binary = |m: Message| match m {
        Message::Binary(b) => b.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    };

    // 8080 = 0x1f90: announced little-endian on the data channel, then the error channel.
    let (mut ws, response) = open("bye-0").await;
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v4.channel.k8s.io"
    );
    assert_eq!(binary(ws.next().await.unwrap().unwrap()), [0, 0x90, 0x1f]);
    assert_eq!(binary(ws.next().await.unwrap().unwrap()), [1, 0x90, 0x1f]);
    // Client bytes on the error channel are ignored; data goes to the target.
    ws.send(Message::binary(b"\x01ignored".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(b"\x00hello".to_vec()))
        .await
        .unwrap();
    assert_eq!(binary(ws.next().await.unwrap().unwrap()), b"\x00bye");
    // The target closed: the port is done, so is the socket, with a normal close.
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected Close(1000), got {other:?}"),
    }

    // Nothing listens: announcements, then the error text on the error channel, then close.
    let (mut ws, _) = open("refused-0").await;
    assert_eq!(binary(ws.next().await.unwrap().unwrap()), [0, 0x90, 0x1f]);
    assert_eq!(binary(ws.next().await.unwrap().unwrap()), [1, 0x90, 0x1f]);
    let error = binary(ws.next().await.unwrap().unwrap());
    assert_eq!(error[0], 1);
    let text = String::from_utf8(error[1..].to_vec()).unwrap();
    assert!(
        text.starts_with("error forwarding port 8080 to pod refused-0"),
        "{text}"
    );
    assert!(
        matches!(ws.next().await.unwrap().unwrap(), Message::Close(Some(f)) if f.code == CloseCode::Normal)
    );
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1; returns its port and the targets it was asked for.
async fn connect_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(socket);
                let mut request = String::new();
                reader.read_line(&mut request).await.unwrap();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).await.unwrap();
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                let target = request.split_whitespace().nth(1).unwrap().to_owned();
                assert!(request.starts_with("CONNECT "), "{request}");
                log.lock().unwrap().push(target.clone());
                let mut upstream = tokio::net::TcpStream::connect(&target).await.unwrap();
                let mut client = reader.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn the_api_server_is_reached_through_https_proxy() {
    let fake = Scenario::new()
        .pod("buildkit-arm64-0", "Running", "10.0.1.10", true)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        .start()
        .await;
    let (port, seen) = connect_proxy().await;
    let proxy = format!("http://127.0.0.1:{port}");
    let run = |args: &'static [&'static str]| {
        let mut cmd = fake.bin();
        cmd.env("HTTPS_PROXY", &proxy).args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let o = run(&["get-address", "--arch", "arm64"]).await.unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "tcp://10-0-1-10.buildkit.pod.cluster.local:1234\n");
    // Port-forwards (WebSocket upgrades) go through the proxy too.
    let o = run(&["workers", "--addr", "kube-pod://buildkit-amd64-0"])
        .await
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter().all(|t| *t == fake.addr().to_string()),
        "{seen:?}"
    );
}

/// A multi-platform build whose builders are pods: each architecture's BuildKit is reached
/// through its own port-forward (to the real BuildKit), and one index is pushed.
#[tokio::test]
async fn a_multi_platform_build_runs_on_kube_pod_builders() {
    let fake = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        .pod("buildkit-arm64-0", "Running", "10.0.1.10", true)
        .dial("buildkit-arm64-0", engine())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY hello.txt /hello-${TARGETARCH}.txt\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi\n").unwrap();
    let repo = format!("pf-test/fleet-builders-{:x}", now_nanos());
    let mut cmd = fake.bin();
    cmd.current_dir(dir.path()).args([
        "build",
        "--progress",
        "plain",
        "--repo",
        &repo,
        "--tag",
        "v1",
        "--registry",
        &util::env("PF_TEST_REGISTRY"),
        "--insecure-registry",
        "--builder",
        "amd64=kube-pod://buildkit-amd64-0?namespace=buildkit",
        "--builder",
        "arm64=kube-pod://buildkit-arm64-0?namespace=buildkit&context=fake",
    ]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let digest = out(&o).trim().to_owned();
    // The index is in the registry under the printed digest.
    let registry = pf_buildkit::registry::Client::new(
        pf_buildkit::registry::ClientOptions::default().with_insecure(true),
    )
    .unwrap();
    let reference = pf_buildkit::registry::parse_reference(&format!(
        "{}/{repo}:v1",
        util::env("PF_TEST_REGISTRY")
    ))
    .unwrap();
    assert_eq!(
        registry.fetch_manifest(&reference).await.unwrap().digest,
        digest
    );
    // Each architecture went through a port-forward to its own pod.
    let requests = fake.requests();
    for pod in ["buildkit-amd64-0", "buildkit-arm64-0"] {
        assert!(
            requests
                .iter()
                .any(|r| r.path.ends_with(&format!("/pods/{pod}/portforward"))),
            "{pod}"
        );
    }
}

#[tokio::test]
async fn a_cluster_build_scales_up_builds_over_port_forwards_and_closes_them() {
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .statefulset("arm64", 0, 0, None)
        .auto_available()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .dial("buildkit-amd64-0", engine())
        .pod("buildkit-arm64-0", "Running", "10.0.1.10", true)
        .dial("buildkit-arm64-0", engine())
        .start()
        .await;
    crate::fleet_scenarios::cluster_build_scales_up_and_builds_over_port_forwards(&fake).await;
    // The process has exited; the fake sees every port-forward closed.
    fake.wait_until("port-forwards to close", |f| f.portforwards_open() == 0)
        .await;
}

#[tokio::test]
async fn a_cluster_build_without_a_cluster_says_which_field_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::create_dir(dir.path().join(".buildkit")).unwrap();
    std::fs::write(
        dir.path().join(".buildkit/buildkit.json"),
        "{\"cluster\": \"\"}",
    )
    .unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let o = util::tokio_bin()
        .current_dir(dir.path())
        .args(["build", "--repo", "pf-test/x", "--tag", "v1"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains("buildkit.json") && e.contains("\"registry\" is missing or empty"),
        "{e}"
    );

    // With a registry but an empty cluster, and no --builder or --addr, the cluster is named.
    std::fs::write(
        dir.path().join(".buildkit/buildkit.json"),
        "{\"registry\": \"127.0.0.1:1\", \"cluster\": \"\"}",
    )
    .unwrap();
    let o = util::tokio_bin()
        .current_dir(dir.path())
        .args(["build", "--repo", "pf-test/x", "--tag", "v1"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains("buildkit.json") && e.contains("\"cluster\" is missing or empty"),
        "{e}"
    );
}

#[tokio::test]
async fn a_pod_dying_mid_build_fails_in_one_line_and_pushes_no_index() {
    let fake = crate::fleet_scenarios::pod_dying_cluster()
        .dial("buildkit-amd64-0", engine())
        .start()
        .await;
    // The pod "dies": its port-forward is cut as a dying API server would.
    crate::fleet_scenarios::a_pod_dying_mid_build_fails_in_one_line_and_pushes_no_index(
        &fake,
        async || fake.kill_portforward(fake.portforwards_opened() - 1),
    )
    .await;
    fake.wait_until("port-forwards to close", |f| f.portforwards_open() == 0)
        .await;
}

#[tokio::test]
async fn scale_up_wait_on_a_terminal_draws_live_lines() {
    let fake = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .auto_available()
        .start()
        .await;
    // The same command through `script`, which gives it a pseudo-terminal.
    let inner = fake.bin();
    let mut cmd = std::process::Command::new("script");
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.args([
        "-qefc",
        &format!(
            "stty cols 100 rows 20; {} scale up --only amd64 --wait --timeout 30",
            env!("CARGO_BIN_EXE_pf-buildkit")
        ),
        "/dev/null",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text:?}");
    // The final view: the architecture ticked off with its state and elapsed time, drawn
    // in place (erase-line sequences), not as plain `arch: state (1.2s)` lines.
    assert!(text.contains("✔ amd64: 1 available replica(s)"), "{text:?}");
    assert!(text.contains("\x1b[2K"), "{text:?}");
    assert!(!text.contains("replica(s) ("), "{text:?}");
}
