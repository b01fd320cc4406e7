//! The fleet commands against the real kube-apiserver v1.36 of the test environment (see
//! `real_kube`): the same contract as `fleet.rs` checks on the fake, now with real
//! validation, admission, RBAC, optimistic concurrency, the audit log, and port-forwards
//! through the API server to the real kubelet handler and on to the standalone buildkitd.
//! The fake keeps what a real server cannot do on cue (metrics, dying pods, 409 storms).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pf_buildkit::buildkit::{Client, Endpoint, TlsOptions};

use crate::fake_kube::Scenario;
use crate::fleet_scenarios::{annotation, now};
use crate::real_kube::RealKube;
use crate::real_kube::control_plane::ControlPlane;
use crate::util::{self, assert_one_line_failure};

fn err(o: &std::process::Output) -> String {
    util::stderr(o)
}

/// Every request the test's user made carried pf-buildkit's User-Agent, as the audit log
/// recorded it; returns the entries.
fn assert_audited_user_agent(real: &RealKube) -> Vec<crate::real_kube::AuditEntry> {
    crate::fleet_scenarios::Cluster::assert_user_agent(real);
    real.audit()
}

#[tokio::test]
async fn real_scale_up_records_builds_and_scale_down_follows_the_annotation() {
    let Some(real) = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .statefulset("arm64", 3, 3, Some("12"))
        .start_real(module_path!())
        .await
    else {
        return;
    };
    let before = now();
    let o = real.run(&["scale", "up"]).await;
    let after = now();
    assert!(o.status.success(), "{}", err(&o));
    let amd = real.statefulset("buildkit-amd64").await;
    let arm = real.statefulset("buildkit-arm64").await;
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
    // The real server took a merge patch on the scale subresource, and logged our User-Agent.
    let entries = assert_audited_user_agent(&real);
    assert!(
        entries.iter().any(|e| e.verb == "patch"
            && e.uri.starts_with(
                "/apis/apps/v1/namespaces/buildkit/statefulsets/buildkit-amd64/scale"
            )
            && e.code == 200),
        "{entries:?}"
    );

    // Just stamped: a scale-down with a timeout keeps both; without one, both go to zero.
    let o = real.run(&["suspend", "--timeout", "1800"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains(
            "amd64: Last build occurred less than 1800 seconds ago. Skipping scale down."
        ),
        "{}",
        err(&o)
    );
    assert_eq!(
        real.statefulset("buildkit-amd64").await["spec"]["replicas"],
        1
    );
    let o = real.run(&["scale", "down"]).await;
    assert!(o.status.success(), "{}", err(&o));
    for name in ["buildkit-amd64", "buildkit-arm64"] {
        assert_eq!(
            real.statefulset(name).await["spec"]["replicas"],
            0,
            "{name}"
        );
    }
    let o = real.run(&["record-build", "--arch", "arm64"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(annotation(&real.statefulset("buildkit-arm64").await).is_some_and(|s| s >= before));
}

#[tokio::test]
async fn real_scale_up_wait_follows_the_controller_and_times_out_without_one() {
    let Some(real) = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .statefulset("arm64", 1, 1, None)
        .start_real(module_path!())
        .await
    else {
        return;
    };
    // Nothing acts on the scale: the wait ends at its deadline, naming the StatefulSet.
    let started = Instant::now();
    let o = real.run(&["scale", "up", "--wait", "--timeout", "3"]).await;
    let elapsed = started.elapsed();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("timed out after 3 s waiting for an available BuildKit replica of buildkit-amd64 in namespace buildkit"),
        "{e}"
    );
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
    drop(real);

    // The test plays the StatefulSet controller: the wait sees the replica come up.
    let Some(real) = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .auto_available()
        .start_real(module_path!())
        .await
    else {
        return;
    };
    let o = real
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
    assert!(
        e.contains("amd64: scaled StatefulSet buildkit-amd64 from 0 to 1 replica"),
        "{e}"
    );
    assert!(
        e.lines()
            .any(|l| l.starts_with("amd64: 1 available replica(s) (")),
        "{e}"
    );
}

#[tokio::test]
async fn real_get_address_without_metrics_falls_back_and_rbac_refusals_name_the_permission() {
    let Some(real) = Scenario::new()
        .statefulset("amd64", 3, 2, None)
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", false)
        .pod("buildkit-amd64-1", "Running", "10.0.0.11", true)
        .pod("buildkit-amd64-2", "Pending", "", false)
        .start_real(module_path!())
        .await
    else {
        return;
    };
    // No metrics-server: the real API server answers 404 for the group; the client warns and
    // takes the first running, ready pod.
    let o = real.run(&["get-address", "--arch", "amd64"]).await;
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    assert_eq!(
        util::stdout(&o),
        "tcp://10-0-0-11.buildkit.pod.cluster.local:1234\n"
    );
    assert!(e.contains("warning") && e.contains("metrics.k8s.io"), "{e}");
    let entries = assert_audited_user_agent(&real);
    assert!(
        entries.iter().any(|e| e
            .uri
            .starts_with("/apis/metrics.k8s.io/v1beta1/namespaces/buildkit/pods")
            && e.code == 404),
        "{entries:?}"
    );
    drop(real);

    let Some(real) = Scenario::new()
        .statefulset("amd64", 1, 1, None)
        .forbid("list", "pods")
        .forbid("patch", "statefulsets")
        .start_real(module_path!())
        .await
    else {
        return;
    };
    let o = real.run(&["get-address", "--arch", "amd64"]).await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("needs verb list on pods in namespace buildkit"),
        "{e}"
    );
    let o = real.run(&["record-build", "--arch", "amd64"]).await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("needs verb patch on statefulsets in namespace buildkit"),
        "{e}"
    );
}

#[tokio::test]
async fn real_kube_pod_endpoints_reach_buildkit_through_the_api_server_and_the_kubelet() {
    let Some(real) = Scenario::new()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .unscheduled_pod("buildkit-amd64-5")
        .start_real(module_path!())
        .await
    else {
        return;
    };
    // The `exec` context authenticates with an exec auth plugin.
    let o = real
        .run(&[
            "workers",
            "--format",
            "json",
            "--addr",
            "kube-pod://buildkit-amd64-0?namespace=buildkit&context=exec",
        ])
        .await;
    assert!(o.status.success(), "{}", err(&o));
    let workers: serde_json::Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert!(
        workers[0]["platforms"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{workers}"
    );
    // The real API server takes the SPDY upgrade (a POST: verb create), so no WebSocket is
    // asked for.
    let entries = assert_audited_user_agent(&real);
    let forwards: Vec<_> = entries
        .iter()
        .filter(|e| e.uri.contains("/portforward"))
        .collect();
    assert!(!forwards.is_empty(), "{entries:?}");
    assert!(
        forwards.iter().all(|e| e.uri
            == "/api/v1/namespaces/buildkit/pods/buildkit-amd64-0/portforward"
            && e.verb == "create"
            && e.code == 101),
        "{forwards:?}"
    );

    // The real server's refusals, each in one line.
    let o = real
        .run(&[
            "workers",
            "--addr",
            "kube-pod://buildkit-amd64-9?namespace=buildkit",
        ])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("pod \"buildkit-amd64-9\" not found in namespace buildkit"),
        "{e}"
    );
    let o = real
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-5"])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("pod buildkit-amd64-5 does not have a host assigned"),
        "{e}"
    );
    // A port the pod does not serve: the kubelet's words on the error channel.
    let o = real
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-0?port=1235"])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("port-forward to pod buildkit-amd64-0 port 1235 failed: ") && e.contains("1235"),
        "the kubelet's error text reaches the user: {e}"
    );
    drop(real);

    // RBAC without `create` on pods/portforward: an empty reason from the server, so the
    // client names the permission itself.
    let Some(real) = one_pod()
        .forbid("create", "pods/portforward")
        .start_real(module_path!())
        .await
    else {
        return;
    };
    let o = real
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-0"])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("permission denied (pods \"buildkit-amd64-0\" is forbidden)")
            && e.contains("needs verb create (and get) on pods/portforward in namespace buildkit"),
        "{e}"
    );
    let o = real.run(&["tunnel", "--arch", "amd64"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o)
            .lines()
            .last()
            .unwrap_or_default()
            .contains("on pods/portforward"),
        "{}",
        err(&o)
    );
}

/// Starts `tunnel --arch amd64 --port 0` and returns the child and its port.
async fn start_tunnel(real: &RealKube) -> (std::process::Child, u16) {
    let mut child = real
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
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("port on stdout, got {line:?}"));
    (child, port)
}

/// Ctrl-C: the tunnel exits 130 and its port is closed.
async fn interrupt(child: std::process::Child, port: u16) {
    let mut child = child;
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
}

#[tokio::test]
async fn real_tunnel_carries_concurrent_connections_each_on_its_own_port_forward() {
    let Some(real) = one_pod().start_real(module_path!()).await else {
        return;
    };
    let (child, port) = start_tunnel(&real).await;
    assert!(
        annotation(&real.statefulset("buildkit-amd64").await).is_some(),
        "the tunnel records a build"
    );
    let endpoint = || Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let a = Client::connect(endpoint(), &TlsOptions::default())
        .await
        .unwrap();
    let b = Client::connect(endpoint(), &TlsOptions::default())
        .await
        .unwrap();
    let (wa, wb) = tokio::join!(a.workers(), b.workers());
    assert!(!wa.unwrap().is_empty());
    assert!(!wb.unwrap().is_empty());
    drop((a, b));
    interrupt(child, port).await;
    let forwards = real
        .audit()
        .into_iter()
        .filter(|e| e.uri.contains("/pods/buildkit-amd64-0/portforward") && e.code == 101)
        .count();
    assert!(
        forwards >= 2,
        "one port-forward per connection, got {forwards}"
    );
    assert_audited_user_agent(&real);
}

#[tokio::test]
async fn real_cluster_build_scales_up_and_builds_over_port_forwards() {
    let Some(real) = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .statefulset("arm64", 0, 0, None)
        .auto_available()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .pod("buildkit-arm64-0", "Running", "10.0.1.10", true)
        .start_real(module_path!())
        .await
    else {
        return;
    };
    crate::fleet_scenarios::cluster_build_scales_up_and_builds_over_port_forwards(&real).await;
}

/// StatefulSet `buildkit-amd64` with one replica, pod `buildkit-amd64-0` running and ready.
fn one_pod() -> Scenario {
    Scenario::new().statefulset("amd64", 1, 1, None).pod(
        "buildkit-amd64-0",
        "Running",
        "10.0.0.10",
        true,
    )
}

/// A library fleet for `real`'s kubeconfig, context `fake` (the test's user).
async fn fleet_for(real: &RealKube) -> pf_buildkit::fleet::Fleet {
    let kubeconfig = kube::config::Kubeconfig::read_from(real.kubeconfig()).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some("fake".into()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    pf_buildkit::fleet::Fleet::from_config(config, false, Some("fake")).unwrap()
}

#[tokio::test]
async fn real_cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone() {
    let Some(real) = crate::fleet_scenarios::cache_clear_cluster()
        .start_real(module_path!())
        .await
    else {
        return;
    };
    // Every pod's port 1234 reaches the standalone buildkitd.
    crate::fleet_scenarios::cache_clear_deletes_only_unmounted_pvcs_and_leaves_a_busy_pod_alone(
        &real,
        crate::util::Tier::Standalone,
    )
    .await;
    // The real server kept each deleted claim Terminating behind pvc-protection until the
    // test's stand-in for that controller released it: the client sent one delete each.
    let deletes: Vec<String> = real
        .audit()
        .into_iter()
        .filter(|e| e.verb == "delete" && e.uri.contains("/persistentvolumeclaims/"))
        .filter_map(|e| Some(e.uri.rsplit('/').next()?.split('?').next()?.to_owned()))
        .collect();
    assert_eq!(
        deletes,
        ["buildkitd-buildkit-amd64-1", "buildkitd-buildkit-arm64-1"]
    );
}

#[tokio::test]
async fn real_lease_scales_up_connects_and_keeps_recording_builds() {
    use pf_buildkit::fleet::{Arch, LeaseOptions};
    let Some(real) = Scenario::new()
        .statefulset("amd64", 0, 0, None)
        .auto_available()
        .pod("buildkit-amd64-0", "Running", "10.0.0.10", true)
        .start_real(module_path!())
        .await
    else {
        return;
    };
    let fleet = fleet_for(&real).await;
    let options = LeaseOptions::default()
        .with_scale_up_wait(Duration::from_secs(30))
        .with_record_interval(Duration::from_secs(1));
    let lease = fleet.lease(Arch::Amd64, &options, &|_| {}).await.unwrap();
    assert_eq!(lease.pod().pod, "buildkit-amd64-0");
    let sts = real.statefulset("buildkit-amd64").await;
    assert_eq!(sts["spec"]["replicas"], 1);
    let first = annotation(&sts).expect("the lease records a build");
    assert!(!lease.client().workers().await.unwrap().is_empty());
    // While held, builds keep being recorded (the stamp is in seconds).
    real.wait_until("a later build stamp", || async {
        annotation(&real.statefulset("buildkit-amd64").await).is_some_and(|s| s > first)
    })
    .await;
    drop(lease);
    let entries = assert_audited_user_agent(&real);
    assert!(
        entries
            .iter()
            .any(|e| e.uri.contains("/pods/buildkit-amd64-0/portforward") && e.code == 101),
        "{entries:?}"
    );
}

#[tokio::test]
async fn real_api_server_restarted_during_a_tunnel_fails_open_connections_and_serves_new_ones() {
    use pf_buildkit::fleet::{Arch, TunnelOptions};
    // Its own control plane: this test kills and restarts the API server.
    let Some((mut cp, real)) = private(module_path!(), one_pod()).await else {
        return;
    };
    let fleet = fleet_for(&real).await;
    let options = TunnelOptions::default().with_record_interval(Duration::from_secs(1));
    let tunnel = fleet.tunnel(Arch::Amd64, &options, &|_| {}).await.unwrap();
    let addr = format!("tcp://{}", tunnel.local_addr());
    let endpoint: Endpoint = addr.parse().unwrap();
    let open = Client::connect(endpoint.clone(), &TlsOptions::default())
        .await
        .unwrap();
    assert!(!open.workers().await.unwrap().is_empty());

    cp.kill_apiserver();
    // The open connection went through the API server: it fails, and does not hang.
    let call = tokio::time::timeout(Duration::from_secs(30), open.workers()).await;
    assert!(matches!(call, Ok(Err(_))), "{call:?}");
    // A new one fails in one line while the server is down.
    let o = real.run(&["workers", "--addr", &addr]).await;
    assert_one_line_failure(&o);

    cp.start_apiserver().await;
    let restarted = now();
    let o = real.run(&["workers", "--addr", &addr]).await;
    assert!(o.status.success(), "{}", err(&o));
    let fresh = Client::connect(endpoint, &TlsOptions::default())
        .await
        .unwrap();
    assert!(!fresh.workers().await.unwrap().is_empty());
    // The tunnel kept recording builds across the restart.
    real.wait_until("a build recorded after the restart", || async {
        annotation(&real.statefulset("buildkit-amd64").await).is_some_and(|s| s > restarted)
    })
    .await;
    tunnel.close().await;
}

/// `scenario` on a control plane of the test's own (for tests that stop its parts), or
/// `None`, with a line saying so, without the Kubernetes tier.
async fn private(test: &str, scenario: Scenario) -> Option<(ControlPlane, RealKube)> {
    if !crate::real_kube::present(test) {
        return None;
    }
    let cp = ControlPlane::start().await;
    let real = RealKube::start(scenario, &cp.server(), cp.audit_log()).await;
    Some((cp, real))
}

#[tokio::test]
async fn real_etcd_restarted_during_scale_up_wait_is_retried_within_its_deadline() {
    use tokio::io::AsyncBufReadExt;
    let Some((mut cp, real)) = private(
        module_path!(),
        Scenario::new().statefulset("amd64", 0, 0, None),
    )
    .await
    else {
        return;
    };
    let mut cmd = tokio::process::Command::from(real.bin());
    cmd.args([
        "scale",
        "up",
        "--only",
        "amd64",
        "--wait",
        "--timeout",
        "150",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Scaled, and waiting: nothing plays the controller yet.
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line.clone());
        if line.contains("scaled StatefulSet buildkit-amd64 from 0 to 1") {
            break;
        }
    }
    cp.kill_etcd();
    // The wait's looks fail or go unanswered while etcd is down, and it says it looks again.
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line.clone());
        if line.contains("looking again") {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("looking again")),
        "{seen:#?}"
    );
    cp.start_etcd().await;
    real.set_available("buildkit-amd64", 1).await;
    let stderr = tokio::spawn(async move {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line);
        }
        seen
    });
    let status = tokio::time::timeout(Duration::from_secs(150), child.wait())
        .await
        .expect("the wait ends once the replica is available")
        .unwrap();
    let seen = stderr.await.unwrap();
    assert!(status.success(), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("amd64: 1 available replica(s) (")),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn real_port_forward_permission_revoked_while_a_tunnel_runs_fails_new_connections() {
    use tokio::io::AsyncBufReadExt;
    let Some(real) = one_pod().start_real(module_path!()).await else {
        return;
    };
    let mut cmd = tokio::process::Command::from(real.bin());
    cmd.args(["tunnel", "--arch", "amd64", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = stdout
        .next_line()
        .await
        .unwrap()
        .and_then(|l| l.trim().parse().ok())
        .expect("the tunnel's port on stdout");
    let addr = format!("tcp://127.0.0.1:{port}");
    let open = Client::connect(addr.parse().unwrap(), &TlsOptions::default())
        .await
        .unwrap();
    assert!(!open.workers().await.unwrap().is_empty());

    real.regrant(&[("create", "pods/portforward")]).await;
    // A new connection needs a new port-forward, which RBAC now refuses: the client's call
    // fails in one line, and the tunnel says which permission is missing.
    let o = real.run(&["workers", "--addr", &addr]).await;
    assert_one_line_failure(&o);
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            seen.push(line.clone());
            if line
                .contains("needs verb create (and get) on pods/portforward in namespace buildkit")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(refused, Ok(true)), "{seen:#?}");
    // The port-forward opened before the change is an upgraded connection: it still works.
    assert!(!open.workers().await.unwrap().is_empty());
    drop(open);
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().await.unwrap().code(), Some(130));
}

#[tokio::test]
async fn real_pod_deleted_mid_build_fails_in_one_line_naming_the_pod() {
    use crate::real_kube::node::{self, PrivateNode};
    let Some(real) = crate::fleet_scenarios::pod_dying_cluster()
        .on_node(node::NAME)
        .start_real(module_path!())
        .await
    else {
        return;
    };
    // The pod's node is the test's own, so its container can end without touching node-1.
    let node = PrivateNode::start(&real).await;
    crate::fleet_scenarios::a_pod_dying_mid_build_fails_in_one_line_and_pushes_no_index(
        &real,
        async || {
            real.delete_pod("buildkit-amd64-0").await;
            node.end_containers();
        },
    )
    .await;
}

#[tokio::test]
async fn real_api_server_certificate_rotated_reconnects_or_names_the_ca() {
    use crate::real_kube::control_plane::Issuer;
    use pf_buildkit::fleet::{Arch, TunnelOptions};
    let Some((mut cp, real)) = private(module_path!(), one_pod()).await else {
        return;
    };
    let fleet = fleet_for(&real).await;
    let tunnel = fleet
        .tunnel(Arch::Amd64, &TunnelOptions::default(), &|_| {})
        .await
        .unwrap();
    let endpoint: Endpoint = format!("tcp://{}", tunnel.local_addr()).parse().unwrap();
    let before = Client::connect(endpoint.clone(), &TlsOptions::default())
        .await
        .unwrap();
    assert!(!before.workers().await.unwrap().is_empty());

    // A new certificate from the same CA: the running tunnel's new connections, and a new
    // process, verify it as they did the old one.
    cp.rotate_serving_certificate(Issuer::OwnCa).await;
    let after = Client::connect(endpoint.clone(), &TlsOptions::default())
        .await
        .unwrap();
    assert!(!after.workers().await.unwrap().is_empty());
    let o = real
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-0"])
        .await;
    assert!(o.status.success(), "{}", err(&o));

    // One from a CA the kubeconfig does not name: refused, and the line says why.
    cp.rotate_serving_certificate(Issuer::OtherCa).await;
    let o = real
        .run(&["workers", "--addr", "kube-pod://buildkit-amd64-0"])
        .await;
    let e = assert_one_line_failure(&o);
    assert!(
        e.contains("UnknownIssuer")
            && e.contains(
                "the API server's certificate is not signed by the certificate authority the kubeconfig gives for its cluster"
            ),
        "{e}"
    );
    tunnel.close().await;
}

/// The sandbox's control plane on its own: credentials it writes itself, its own kubelet
/// handler, free ports. It serves a port-forward to the standalone buildkitd as `pf-admin`
/// through its admin kubeconfig, and once dropped no process, port or file of it is left.
#[tokio::test]
async fn real_control_plane_of_its_own_forwards_to_buildkitd_and_leaves_nothing_when_dropped() {
    use pf_testenv::kube as plane;
    use serde_json::json;
    if !crate::real_kube::present(module_path!()) {
        return;
    }
    let parent = std::path::PathBuf::from(util::env("PF_TEST_KUBE_PRIVATE_DIR"));
    std::fs::create_dir_all(&parent).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("own-")
        .tempdir_in(&parent)
        .unwrap()
        .keep();
    let spec = plane::Spec {
        bin: util::env("PF_TEST_KUBE_BIN").into(),
        dir: dir.clone(),
        logs: dir.join("logs"),
        ports: plane::Ports::free(plane::free_port().unwrap(), plane::free_port().unwrap())
            .unwrap(),
        credentials_of: None,
        pods_reach: Some(
            util::Tier::Standalone
                .addr()
                .trim_start_matches("tcp://")
                .to_owned(),
        ),
        timeout: Duration::from_secs(120),
        die_with_parent: false,
    };
    let mut cp = tokio::task::spawn_blocking(move || plane::ControlPlane::start(spec))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let pids: Vec<u32> = cp.daemons().iter().map(|d| d.pid()).collect();
    let ports = cp.ports();
    assert_eq!(pids.len(), 3, "etcd, kubelet handler, API server");

    // A pod on node-1, Running and Ready, as its kubelet would report it.
    let cp = tokio::task::spawn_blocking(move || {
        let pods = "/api/v1/namespaces/buildkit/pods";
        cp.admin_call(
            "POST",
            pods,
            Some((
                "application/json",
                json!({
            "metadata": { "name": "buildkit-amd64-0" },
            "spec": { "nodeName": "node-1", "containers": [ { "name": "buildkitd",
                "image": "moby/buildkit", "ports": [ { "containerPort": 1234 } ] } ] } }),
            )),
        )?;
        cp.admin_call(
            "PATCH",
            &format!("{pods}/buildkit-amd64-0/status"),
            Some((
                "application/merge-patch+json",
                json!({ "status": {
                "phase": "Running", "podIP": "10.0.0.9",
                "conditions": [ { "type": "Ready", "status": "True" } ] } }),
            )),
        )?;
        Ok::<_, pf_testenv::Error>(cp)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().unwrap();
    let mut cmd = crate::fake_kube::kube_bin(&cp.admin_kubeconfig(), home.path());
    cmd.args(["workers", "--addr", "kube-pod://buildkit-amd64-0"]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(!o.stdout.is_empty(), "buildkitd listed no workers");

    drop(cp);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the plane"
        );
    }
    for port in [ports.etcd, ports.etcd_peer, ports.apiserver, ports.kubelet] {
        assert!(
            !pf_testenv::http::port_taken(port),
            "127.0.0.1:{port} still listens"
        );
    }
    assert!(!dir.exists(), "{} is left", dir.display());
}
